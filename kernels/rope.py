"""Rotary embedding on the fused QKV projection output, fused with the write of K/V into the cache.

The fused ``qkv`` linear gives ``[B, T, (H + 2 KVH) * D]``. Unfused, the model splits it, optionally
RMS-normalises Q and K per head (Qwen3/CoDA), rotates them, transposes Q, and copies K/V into the
cache slice: five or six passes and as many launches per layer. Here one program per (token, head)
reads its head vector once and writes it straight to its destination: Q to the attention input, K
rotated and V as is into ``cache[:, :, start + t]``. ``start`` may be a device tensor so a captured
CUDA graph can move the window without re-capture.

Layout: half-split ("rotate_half"): out[:D/2] = x1 cos - x2 sin, out[D/2:] = x2 cos + x1 sin.
"""

from __future__ import annotations

import torch

from ._common import can_launch, launches, next_pow2, tl, triton
from .rmsnorm import rmsnorm_reference

__all__ = ["rope_qkv_reference", "rope_qkv_to_cache", "rope_qkv_to_cache_reference", "rope_rotate"]


def rope_rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """fp32 rotation, rounded once; x: [..., B, N, T, D]; cos/sin: [B, T, D]."""
    xf = x.float()
    half = x.shape[-1] // 2
    rotated = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * cos.float()[:, None] + rotated * sin.float()[:, None]).to(x.dtype)


def rope_qkv_reference(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    q_norm_weight: torch.Tensor | None = None,
    k_norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused projection split into heads, QK-normed (Qwen3) and rotated: Q and K rotated,
    V as it is, each [B, heads, T, D]. No buffers are written, so autograd runs through it (the
    model's training forward uses it)."""
    b, t, _ = qkv.shape
    d = cos.shape[-1]
    q, k, v = qkv.split([num_heads * d, num_kv_heads * d, num_kv_heads * d], dim=-1)
    q = q.reshape(b, t, num_heads, d).transpose(1, 2)
    k = k.reshape(b, t, num_kv_heads, d).transpose(1, 2)
    v = v.reshape(b, t, num_kv_heads, d).transpose(1, 2)
    if q_norm_weight is not None:
        q = rmsnorm_reference(q, q_norm_weight, eps)
    if k_norm_weight is not None:
        k = rmsnorm_reference(k, k_norm_weight, eps)
    return rope_rotate(q, cos, sin), rope_rotate(k, cos, sin), v


def rope_qkv_to_cache_reference(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    start: int | torch.Tensor,
    q_norm_weight: torch.Tensor | None = None,
    k_norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    q_out: torch.Tensor | None = None,
    write_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain torch version. qkv: [B, T, (H + 2 KVH) * D]; cos/sin: [B, T, D]; k_cache/v_cache:
    [B, KVH, L, D] (written at ``[start, start + T)``); write_mask: bool [B, L] or None, the cache
    positions that may be written (others keep their K/V, see ``KVCache.write_mask``). Returns Q
    rotated, [B, H, T, D]."""
    t = qkv.shape[1]
    q, k, v = rope_qkv_reference(qkv, cos, sin, num_heads, num_kv_heads, q_norm_weight, k_norm_weight, eps)
    s = int(start)
    if write_mask is not None:
        keep = ~write_mask[:, None, s : s + t, None]
        k = torch.where(keep, k_cache[:, :, s : s + t], k)
        v = torch.where(keep, v_cache[:, :, s : s + t], v)
    k_cache[:, :, s : s + t] = k
    v_cache[:, :, s : s + t] = v
    if q_out is None:
        return q
    q_out.copy_(q)
    return q_out


if triton is not None:

    @triton.jit
    def _rope_qkv_kernel(
        QKV,
        COS,
        SIN,
        QW,
        KW,
        QO,
        KC,
        VC,
        START,
        WM,
        s_xb,
        s_xt,
        s_cb,
        s_ct,
        s_sb,
        s_st,
        s_qb,
        s_qh,
        s_qt,
        s_qd,
        s_kb,
        s_kh,
        s_kt,
        s_kd,
        s_vb,
        s_vh,
        s_vt,
        s_vd,
        s_wb,
        s_wt,
        seq,
        n_heads,
        n_kv_heads,
        head_dim,
        start_val,
        eps,
        START_FROM_PTR: tl.constexpr,
        QK_NORM: tl.constexpr,
        HAS_WM: tl.constexpr,
        BLOCK_T: tl.constexpr,
        BLOCK_H: tl.constexpr,
    ):
        # one program: BLOCK_T tokens of one head (of Q, K or V) of one sequence
        b = tl.program_id(0)
        t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
        j = tl.program_id(2)
        half = head_dim // 2
        i = tl.arange(0, BLOCK_H)
        ok = (t < seq)[:, None] & (i < half)[None, :]
        if START_FROM_PTR:
            pos = tl.load(START) + t
        else:
            pos = start_val + t
        w_ok = ok
        if HAS_WM:
            allowed = tl.load(WM + b * s_wb + pos * s_wt, mask=t < seq, other=0) != 0
            w_ok = ok & allowed[:, None]
        src = QKV + b * s_xb + t[:, None] * s_xt + j * head_dim + i[None, :]
        x1 = tl.load(src, mask=ok, other=0.0)
        x2 = tl.load(src + half, mask=ok, other=0.0)
        if j >= n_heads + n_kv_heads:  # V: copy into the cache
            dst = VC + b * s_vb + (j - n_heads - n_kv_heads) * s_vh + pos[:, None] * s_vt
            tl.store(dst + i[None, :] * s_vd, x1, mask=w_ok)
            tl.store(dst + (half + i)[None, :] * s_vd, x2, mask=w_ok)
        else:
            f1 = x1.to(tl.float32)
            f2 = x2.to(tl.float32)
            if QK_NORM:
                if j < n_heads:
                    w1 = tl.load(QW + i, mask=i < half, other=0.0).to(tl.float32)
                    w2 = tl.load(QW + half + i, mask=i < half, other=0.0).to(tl.float32)
                else:
                    w1 = tl.load(KW + i, mask=i < half, other=0.0).to(tl.float32)
                    w2 = tl.load(KW + half + i, mask=i < half, other=0.0).to(tl.float32)
                rstd = 1.0 / tl.sqrt((tl.sum(f1 * f1, 1) + tl.sum(f2 * f2, 1)) / head_dim + eps)
                # same roundings as the reference: normalise, round, scale, round
                f1 = (f1 * rstd[:, None]).to(x1.dtype).to(tl.float32)
                f2 = (f2 * rstd[:, None]).to(x1.dtype).to(tl.float32)
                f1 = (w1[None, :] * f1).to(x1.dtype).to(tl.float32)
                f2 = (w2[None, :] * f2).to(x1.dtype).to(tl.float32)
            c_base = COS + b * s_cb + t[:, None] * s_ct + i[None, :]
            s_base = SIN + b * s_sb + t[:, None] * s_st + i[None, :]
            c1 = tl.load(c_base, mask=ok, other=0.0).to(tl.float32)
            c2 = tl.load(c_base + half, mask=ok, other=0.0).to(tl.float32)
            n1 = tl.load(s_base, mask=ok, other=0.0).to(tl.float32)
            n2 = tl.load(s_base + half, mask=ok, other=0.0).to(tl.float32)
            o1 = f1 * c1 - f2 * n1
            o2 = f2 * c2 + f1 * n2
            if j < n_heads:
                dst = QO + b * s_qb + j * s_qh + t[:, None] * s_qt
                tl.store(dst + i[None, :] * s_qd, o1.to(QO.dtype.element_ty), mask=ok)
                tl.store(dst + (half + i)[None, :] * s_qd, o2.to(QO.dtype.element_ty), mask=ok)
            else:
                dst = KC + b * s_kb + (j - n_heads) * s_kh + pos[:, None] * s_kt
                tl.store(dst + i[None, :] * s_kd, o1.to(KC.dtype.element_ty), mask=w_ok)
                tl.store(dst + (half + i)[None, :] * s_kd, o2.to(KC.dtype.element_ty), mask=w_ok)

else:  # pragma: no cover
    _rope_qkv_kernel = None


def rope_qkv_to_cache(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    start: int | torch.Tensor,
    q_norm_weight: torch.Tensor | None = None,
    k_norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    q_out: torch.Tensor | None = None,
    write_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fused version of :func:`rope_qkv_to_cache_reference` (same arguments). An int ``start`` is
    bounds-checked here; a tensor ``start`` (int32/int64, one element, on the device) is trusted,
    which is what CUDA-graph replay needs."""
    b, t, width = qkv.shape
    d = cos.shape[-1]
    length = k_cache.shape[2]
    if isinstance(start, int) and (start < 0 or start + t > length):
        raise IndexError(f"cache write [{start}, {start + t}) outside [0, {length})")
    norm = q_norm_weight is not None
    ok = (
        qkv.stride(-1) == 1
        and width == (num_heads + 2 * num_kv_heads) * d
        and d % 2 == 0
        and cos.shape == sin.shape
        and cos.shape[-2] == t
        and cos.stride(-1) == 1
        and sin.stride(-1) == 1
        and k_cache.dtype == v_cache.dtype == qkv.dtype
        and (k_norm_weight is not None) == norm
        and (not norm or (q_norm_weight.is_contiguous() and k_norm_weight.is_contiguous()))
        and (not isinstance(start, torch.Tensor) or start.numel() == 1)
        and qkv.dtype in (torch.float32, torch.float16, torch.bfloat16)
        and (write_mask is None or (write_mask.dtype == torch.bool and write_mask.shape == (b, length)))
    )
    tensors = [qkv, cos, sin, k_cache, v_cache] + ([start] if isinstance(start, torch.Tensor) else [])
    tensors += [write_mask] if write_mask is not None else []
    if not (ok and can_launch(_rope_qkv_kernel, *tensors)):
        return rope_qkv_to_cache_reference(
            qkv,
            cos,
            sin,
            num_heads,
            num_kv_heads,
            k_cache,
            v_cache,
            start,
            q_norm_weight,
            k_norm_weight,
            eps,
            q_out,
            write_mask,
        )
    if q_out is None:
        q_out = torch.empty((b, num_heads, t, d), device=qkv.device, dtype=qkv.dtype)
    cos = cos.expand(b, t, d)
    sin = sin.expand(b, t, d)
    from_ptr = isinstance(start, torch.Tensor)
    wm = write_mask.view(torch.uint8) if write_mask is not None else qkv
    wm_strides = (wm.stride(0), wm.stride(1)) if write_mask is not None else (0, 0)
    if b * t:
        block_t = min(64, max(16, next_pow2(t)))
        _rope_qkv_kernel[(b, triton.cdiv(t, block_t), num_heads + 2 * num_kv_heads)](
            qkv,
            cos,
            sin,
            q_norm_weight if norm else qkv,
            k_norm_weight if norm else qkv,
            q_out,
            k_cache,
            v_cache,
            start if from_ptr else qkv,
            wm,
            qkv.stride(0),
            qkv.stride(1),
            cos.stride(0),
            cos.stride(1),
            sin.stride(0),
            sin.stride(1),
            *q_out.stride(),
            *k_cache.stride(),
            *v_cache.stride(),
            *wm_strides,
            t,
            num_heads,
            num_kv_heads,
            d,
            0 if from_ptr else int(start),
            eps,
            START_FROM_PTR=from_ptr,
            QK_NORM=norm,
            HAS_WM=write_mask is not None,
            BLOCK_T=block_t,
            BLOCK_H=max(16, next_pow2(d // 2)),
            num_warps=4,
        )
    launches["rope_qkv_to_cache"] += 1
    return q_out
