"""SwiGLU on the fused gate/up projection output: ``silu(gate) * up``.

The fused ``gate_up`` linear gives ``[N, 2I]`` (gate rows first). Unfused, torch materialises
``silu(gate)`` and then the product: two launches and an extra round trip of ``[N, I]`` through
memory. One elementwise kernel reads each half once and writes the product once, in fp32 inside.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import can_launch, launches, tl, triton

__all__ = ["swiglu", "swiglu_reference"]


def swiglu_reference(gate_up: torch.Tensor) -> torch.Tensor:
    """fp32 ``silu(gate) * up`` rounded once; gate_up: [..., 2I] -> [..., I]."""
    gate, up = gate_up.float().chunk(2, dim=-1)
    return (F.silu(gate) * up).to(gate_up.dtype)


if triton is not None:

    @triton.jit
    def _swiglu_kernel(X, Y, sx, sy, n, inter, BLOCK: tl.constexpr):
        # the [N, I] output as one flat index space: few rows (a denoising window) still fill the grid
        e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        ok = e < n * inter
        row = e // inter
        c = e % inter
        g = tl.load(X + row * sx + c, mask=ok, other=0.0).to(tl.float32)
        u = tl.load(X + row * sx + inter + c, mask=ok, other=0.0).to(tl.float32)
        y = g / (1.0 + tl.exp(-g)) * u
        tl.store(Y + row * sy + c, y.to(Y.dtype.element_ty), mask=ok)

else:  # pragma: no cover
    _swiglu_kernel = None


def swiglu(gate_up: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Fused :func:`swiglu_reference`; ``out`` (``[..., I]``, unit last stride) may be given to reuse a
    buffer. Falls back to the reference where Triton cannot run or the layout is unsupported."""
    width = gate_up.shape[-1]
    x2 = gate_up.view(-1, width) if gate_up.stride(-1) == 1 and gate_up.is_contiguous() else None
    ok = x2 is not None and width % 2 == 0 and gate_up.dtype in (torch.float32, torch.float16, torch.bfloat16)
    if not (ok and can_launch(_swiglu_kernel, gate_up)):
        ref = swiglu_reference(gate_up)
        return ref if out is None else out.copy_(ref)
    inter = width // 2
    if out is None:
        out = torch.empty((*gate_up.shape[:-1], inter), device=gate_up.device, dtype=gate_up.dtype)
    y2 = out.view(-1, inter)
    n = x2.shape[0]
    if n:
        block = 4096
        _swiglu_kernel[(triton.cdiv(n * inter, block),)](
            x2, y2, x2.stride(0), y2.stride(0), n, inter, BLOCK=block, num_warps=8
        )
    launches["swiglu"] += 1
    return out
