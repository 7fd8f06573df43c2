"""RMSNorm fused with the residual add.

A pre-norm block does ``residual = residual + branch; normed = rmsnorm(residual)`` twice per layer.
Unfused that is three passes over the activations (add, reduce, scale) and two launches; fused it
is one read of each input and one write of each output. The arithmetic follows the model's
reference exactly: the sum is rounded to the activation dtype (it is the residual stream), the
norm is computed in fp32 and rounded, then multiplied by the weight.
"""

from __future__ import annotations

import torch

from ._common import can_launch, launches, next_pow2, tl, triton

__all__ = ["add_rmsnorm", "add_rmsnorm_reference", "rmsnorm_reference"]


def rmsnorm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm as the Qwen/LLaMA references compute it: normalised in fp32, cast back, then
    scaled. The one definition: the model's eager forward and every kernel's reference use it."""
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def add_rmsnorm_reference(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(rmsnorm(x + residual) * weight, x + residual)``; ``residual=None`` means no add."""
    new_res = x if residual is None else x + residual
    return rmsnorm_reference(new_res, weight, eps), new_res


if triton is not None:

    @triton.jit
    def _add_rmsnorm_kernel(
        X,
        R,
        W,
        Y,
        RO,
        sx,
        sr,
        sy,
        sro,
        n_rows,
        n_cols,
        eps,
        HAS_RES: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)[:, None]
        c = tl.arange(0, BLOCK)[None, :]
        ok = (row < n_rows) & (c < n_cols)
        x = tl.load(X + row * sx + c, mask=ok, other=0.0)
        if HAS_RES:
            x = (x.to(tl.float32) + tl.load(R + row * sr + c, mask=ok, other=0.0).to(tl.float32)).to(x.dtype)
            tl.store(RO + row * sro + c, x, mask=ok)
        xf = x.to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, 1) / n_cols + eps)
        normed = (xf * rstd[:, None]).to(x.dtype).to(tl.float32)
        w = tl.load(W + c, mask=c < n_cols, other=0.0).to(tl.float32)
        tl.store(Y + row * sy + c, (w * normed).to(Y.dtype.element_ty), mask=ok)

else:  # pragma: no cover
    _add_rmsnorm_kernel = None


def _rows(t: torch.Tensor) -> torch.Tensor | None:
    """A 2-D row view with unit column stride, or None when the layout does not allow one."""
    if t.stride(-1) != 1:
        return None
    try:
        return t.view(-1, t.shape[-1])
    except RuntimeError:
        return None


def add_rmsnorm(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused ``(rmsnorm(x + residual) * weight, x + residual)`` over the last dimension; falls back
    to :func:`add_rmsnorm_reference` where Triton cannot run or the layout is unsupported."""
    tensors = (x, weight) if residual is None else (x, residual, weight)
    x2 = _rows(x)
    r2 = None if residual is None else _rows(residual)
    ok = (
        x2 is not None
        and (residual is None or (r2 is not None and residual.shape == x.shape and residual.dtype == x.dtype))
        and weight.shape == (x.shape[-1],)
        and weight.is_contiguous()
        and x.dtype in (torch.float32, torch.float16, torch.bfloat16)
        and x.shape[-1] <= 16384
    )
    if not (ok and can_launch(_add_rmsnorm_kernel, *tensors)):
        return add_rmsnorm_reference(x, residual, weight, eps)
    n, cols = x2.shape
    out_dtype = torch.promote_types(weight.dtype, x.dtype)
    y = torch.empty((n, cols), device=x.device, dtype=out_dtype)
    new_res = x2 if residual is None else torch.empty_like(x2)
    if n:
        block = max(16, next_pow2(cols))
        block_r = max(1, min(16, 8192 // block))  # a few rows per program: short rows are cheap
        _add_rmsnorm_kernel[(triton.cdiv(n, block_r),)](
            x2,
            r2 if r2 is not None else x2,
            weight,
            y,
            new_res,
            x2.stride(0),
            r2.stride(0) if r2 is not None else 0,
            y.stride(0),
            new_res.stride(0),
            n,
            cols,
            eps,
            HAS_RES=residual is not None,
            BLOCK_R=block_r,
            BLOCK=block,
            num_warps=min(16, max(1, block_r * block // 512)),
        )
    launches["add_rmsnorm"] += 1
    return y.view(x.shape), (x if residual is None else new_res.view(x.shape))
