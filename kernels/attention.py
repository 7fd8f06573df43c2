"""Bidirectional grouped-query attention of a block of queries against a whole K/V cache.

Two uses, one kernel:
- denoising step: 16-129 query tokens (the recomputed window) against the cached K/V of the whole
  canvas. Few queries means few programs, so the keys are split across programs (flash-decoding
  style split-K): each program reduces one key range to a partial (unnormalised output, running max,
  running sum) and a second kernel merges the partials with a log-sum-exp rescale.
- prefill: the whole canvas attends to itself; enough programs already, so no split and the first
  kernel writes the normalised output directly.

All query heads of one KV group are processed by the same program (rows = group-heads x tokens),
so each K/V tile is read once per group instead of once per query head. Padding keys are removed
by a per-key boolean mask (the canvas is padded to the batch's longest; the cache to its bucket).
"""

from __future__ import annotations

import math

import torch

from ._common import can_launch, dot_precision, launches, mma, next_pow2, num_sms, tl, triton, upcast_dots

__all__ = ["attention", "attention_reference", "plan_splits"]


def attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Plain torch attention in fp32. q: [B, H, Tq, D]; k/v: [B, KVH, Tk, D]; key_mask: bool [B, Tk]
    (True = real key) or None. Returns [B, H, Tq, D] in q's dtype."""
    groups = q.shape[1] // k.shape[1]
    kf = k.float().repeat_interleave(groups, dim=1)
    vf = v.float().repeat_interleave(groups, dim=1)
    scores = q.float() @ kf.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return (scores.softmax(-1) @ vf).to(q.dtype)


if triton is not None:

    @triton.jit
    def _attn_split_kernel(
        Q,
        K,
        V,
        KM,
        Out,
        PO,
        PM,
        PL,
        sqb,
        sqh,
        sqt,
        sqd,
        skb,
        skh,
        skt,
        skd,
        svb,
        svh,
        svt,
        svd,
        smb,
        smt,
        sob,
        soh,
        sot,
        sod,
        n_heads,
        n_kv_heads,
        tq,
        tk,
        head_dim,
        keys_per_split,
        scale_log2,
        GROUPS: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
        HAS_MASK: tl.constexpr,
        SPLIT: tl.constexpr,
        DOT_PREC: tl.constexpr,
        UPCAST: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        pid_s = tl.program_id(2)
        b = pid_bh // n_kv_heads
        kvh = pid_bh % n_kv_heads

        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < GROUPS * tq
        h = kvh * GROUPS + rows // tq
        t = rows % tq
        d = tl.arange(0, BLOCK_D)
        d_ok = d < head_dim

        q_ptrs = Q + b * sqb + h[:, None] * sqh + t[:, None] * sqt + d[None, :] * sqd
        q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)

        k_lo = pid_s * keys_per_split
        k_hi = tl.minimum(k_lo + keys_per_split, tk)
        m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        k_base = K + b * skb + kvh * skh
        v_base = V + b * svb + kvh * svh
        for n0 in range(k_lo, k_hi, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            n_ok = n < k_hi
            kt = tl.load(
                k_base + n[None, :] * skt + d[:, None] * skd, mask=n_ok[None, :] & d_ok[:, None], other=0.0
            )
            s = mma(q, kt, UPCAST, DOT_PREC) * scale_log2
            valid = n_ok
            if HAS_MASK:
                km = tl.load(KM + b * smb + n * smt, mask=n_ok, other=0)
                valid = valid & (km != 0)
            s = tl.where(valid[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            vt = tl.load(
                v_base + n[:, None] * svt + d[None, :] * svd, mask=n_ok[:, None] & d_ok[None, :], other=0.0
            )
            acc = acc * alpha[:, None] + mma(p.to(vt.dtype), vt, UPCAST, DOT_PREC)
            m_i = m_new

        if SPLIT:
            # partials: [splits, B * H * tq] (+ head_dim for the output), row = (b * H + h) * tq + t
            r = (b * n_heads + h) * tq + t
            n_rows = tl.num_programs(1) * GROUPS * tq
            base = pid_s * n_rows + r
            tl.store(PM + base, m_i, mask=row_ok)
            tl.store(PL + base, l_i, mask=row_ok)
            tl.store(PO + base[:, None] * head_dim + d[None, :], acc, mask=row_ok[:, None] & d_ok[None, :])
        else:
            out = acc / l_i[:, None]
            o_ptrs = Out + b * sob + h[:, None] * soh + t[:, None] * sot + d[None, :] * sod
            tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])

    @triton.jit
    def _attn_combine_kernel(
        PO,
        PM,
        PL,
        Out,
        sob,
        soh,
        sot,
        sod,
        n_rows,
        n_heads,
        tq,
        head_dim,
        n_splits,
        BLOCK_R: tl.constexpr,
        BLOCK_S: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        r_ok = r < n_rows
        s = tl.arange(0, BLOCK_S)
        d = tl.arange(0, BLOCK_D)
        rs = s[None, :] * n_rows + r[:, None]  # [R, S]
        rs_ok = r_ok[:, None] & (s[None, :] < n_splits)
        m = tl.load(PM + rs, mask=rs_ok, other=-1.0e30)
        m_max = tl.max(m, 1)
        w = tl.exp2(m - m_max[:, None])
        w = tl.where(rs_ok, w, 0.0)
        l_sum = tl.sum(w * tl.load(PL + rs, mask=rs_ok, other=0.0), 1)
        part = tl.load(
            PO + rs[:, :, None] * head_dim + d[None, None, :],
            mask=rs_ok[:, :, None] & (d < head_dim)[None, None, :],
            other=0.0,
        )
        l_sum = tl.where(r_ok, l_sum, 1.0)  # rows past the end: keep the arithmetic finite
        out = tl.sum(w[:, :, None] * part, 1) / l_sum[:, None]
        b = r // (n_heads * tq)
        h = (r // tq) % n_heads
        t = r % tq
        o_ptrs = Out + (b * sob + h * soh + t * sot)[:, None] + d[None, :] * sod
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=r_ok[:, None] & (d < head_dim)[None, :])

else:  # pragma: no cover
    _attn_split_kernel = None
    _attn_combine_kernel = None


def _block_m(rows: int) -> int:
    return min(64, max(16, next_pow2(rows)))


def plan_splits(
    batch: int,
    kv_heads: int,
    rows: int,
    tk: int,
    device: torch.device,
    block_n: int = 64,
    min_keys: int = 256,
    sms: int | None = None,
) -> int:
    """Keys per split: split only while the grid is smaller than ~2 waves of the GPU and each split
    keeps at least ``min_keys`` keys (below that the combine costs more than it saves)."""
    programs = triton.cdiv(rows, _block_m(rows)) * batch * kv_heads
    want = max(1, (2 * (sms or num_sms(device))) // programs)
    splits = max(1, min(want, tk // min_keys, 64))
    keys = triton.cdiv(triton.cdiv(tk, splits), block_n) * block_n
    return keys


def _supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None) -> bool:
    b, h, _, d = q.shape
    return (
        q.dim() == 4
        and k.shape == v.shape
        and k.shape[0] == b
        and k.shape[-1] == d
        and h % k.shape[1] == 0
        and 16 <= d <= 256
        and q.dtype in (torch.float32, torch.float16, torch.bfloat16)
        and k.dtype == q.dtype == v.dtype
        and (key_mask is None or (key_mask.dtype == torch.bool and key_mask.shape == (b, k.shape[2])))
        and k.shape[2] > 0
    )


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    keys_per_split: int | None = None,
) -> torch.Tensor:
    """Bidirectional GQA attention; shapes as :func:`attention_reference`. Any strides are accepted
    (q straight from a projection view, k/v a layer of the cache), and ``out`` may be a strided view
    (e.g. ``[B, Tq, H, D]`` transposed) so the result lands where ``o_proj`` reads it. Falls back to
    the reference when Triton cannot run here or the shape is unsupported."""
    tensors = (q, k, v) if key_mask is None else (q, k, v, key_mask)
    if not (can_launch(_attn_split_kernel, *tensors) and _supported(q, k, v, key_mask)):
        ref = attention_reference(q, k, v, key_mask)
        if out is None:
            return ref
        out.copy_(ref)
        return out
    b, h, tq, d = q.shape
    kvh, tk = k.shape[1], k.shape[2]
    groups = h // kvh
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    rows = groups * tq
    block_m, block_n, block_d = _block_m(rows), 64, max(16, next_pow2(d))
    if keys_per_split is None:
        keys_per_split = plan_splits(b, kvh, rows, tk, q.device, block_n)
    keys_per_split = max(block_n, triton.cdiv(keys_per_split, block_n) * block_n)
    splits = triton.cdiv(tk, keys_per_split)
    split = splits > 1
    km = key_mask.view(torch.uint8) if key_mask is not None else q  # dummy pointer when unmasked
    smb, smt = (km.stride(0), km.stride(1)) if key_mask is not None else (0, 0)
    if split:
        n_rows = b * h * tq
        po = torch.empty((splits, n_rows, d), device=q.device, dtype=torch.float32)
        pm = torch.empty((splits, n_rows), device=q.device, dtype=torch.float32)
        pl = torch.empty((splits, n_rows), device=q.device, dtype=torch.float32)
    else:
        po = pm = pl = out  # unused
    grid = (triton.cdiv(rows, block_m), b * kvh, splits)
    _attn_split_kernel[grid](
        q,
        k,
        v,
        km,
        out,
        po,
        pm,
        pl,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        smb,
        smt,
        *out.stride(),
        h,
        kvh,
        tq,
        tk,
        d,
        keys_per_split,
        (1.0 / math.sqrt(d)) * 1.4426950408889634,
        GROUPS=groups,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        HAS_MASK=key_mask is not None,
        SPLIT=split,
        DOT_PREC=dot_precision(q.dtype),
        UPCAST=upcast_dots(_attn_split_kernel, q.dtype),
        num_warps=4 if block_d <= 64 else 8,
    )
    if split:
        block_r = 16
        _attn_combine_kernel[(triton.cdiv(n_rows, block_r),)](
            po,
            pm,
            pl,
            out,
            *out.stride(),
            n_rows,
            h,
            tq,
            d,
            splits,
            BLOCK_R=block_r,
            BLOCK_S=max(2, next_pow2(splits)),
            BLOCK_D=block_d,
            num_warps=4,
        )
    launches["attention"] += 1
    return out
