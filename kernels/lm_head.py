"""LM-head epilogue: per-position decision statistics without materialising logits or softmax.

A denoising step needs, for each position still masked, only: the most likely token, its
probability (the confidence the sampler thresholds), the entropy, and the top-1 minus top-2
probability margin. Computing ``[N, V]`` logits (V ~ 152k) and a softmax writes and re-reads
~0.6 MB per position; here each program multiplies a tile of the hidden states by a tile of the
vocabulary and folds it into running statistics (online log-sum-exp), so the only large read is
the head weight itself, once per step. The vocabulary is split across programs (the few rows
alone would not fill the GPU) and a small second kernel merges the per-split partials.

Statistics are exact in fp32 (logits accumulate in fp32; the model's unfused ``logits()`` in bf16
rounds them to bf16 first, so this is the more precise of the two).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._common import can_launch, dot_precision, launches, mma, next_pow2, num_sms, tl, triton, upcast_dots

__all__ = ["TokenStats", "lm_head_stats", "lm_head_stats_reference", "stats_from_logits"]


class TokenStats(NamedTuple):
    token: torch.Tensor  # int64 [N]: argmax (first index on ties)
    prob: torch.Tensor  # fp32 [N]: softmax probability of ``token``
    entropy: torch.Tensor  # fp32 [N]: softmax entropy in nats
    margin: torch.Tensor  # fp32 [N]: top-1 minus top-2 probability


def stats_from_logits(logits: torch.Tensor) -> TokenStats:
    """The same statistics from full fp32 logits ``[N, V]`` (the torch path)."""
    logits = logits.float()
    logp = logits.log_softmax(-1)
    p = logp.exp()
    top = p.topk(min(2, p.shape[-1]), dim=-1)
    second = top.values[:, 1] if p.shape[-1] > 1 else torch.zeros_like(top.values[:, 0])
    entropy = -(p * logp).nan_to_num().sum(-1)
    return TokenStats(logits.argmax(-1), top.values[:, 0], entropy, top.values[:, 0] - second)


def lm_head_stats_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    rows: torch.Tensor | None = None,
    logit_bias: torch.Tensor | None = None,
) -> TokenStats:
    """hidden: [..., d] (flattened to rows); weight: [V, d]; rows: int indices of the flattened rows
    to score (the masked positions) or None for all; logit_bias: fp32 [V] added to every row (use
    -inf to ban tokens such as the mask). Logits in fp32."""
    h = hidden.reshape(-1, hidden.shape[-1])
    if rows is not None:
        h = h[rows]
    logits = h.float() @ weight.float().t()
    return stats_from_logits(logits if logit_bias is None else logits + logit_bias.float())


if triton is not None:

    @triton.jit
    def _lm_head_partial_kernel(
        H,
        W,
        ROWS,
        BIAS,
        PM,
        PS,
        PT,
        PI,
        P2,
        s_h,
        s_w,
        n,
        vocab,
        dim,
        vocab_per_split,
        HAS_ROWS: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_V: tl.constexpr,
        BLOCK_K: tl.constexpr,
        DOT_PREC: tl.constexpr,
        UPCAST: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_v = tl.program_id(1)
        r = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        r_ok = r < n
        if HAS_ROWS:
            src = tl.load(ROWS + r, mask=r_ok, other=0).to(tl.int64)
        else:
            src = r.to(tl.int64)
        kk = tl.arange(0, BLOCK_K)
        vv = tl.arange(0, BLOCK_V)
        m = tl.full([BLOCK_M], -1.0e30, tl.float32)  # running max logit (= top-1 logit)
        s = tl.zeros([BLOCK_M], tl.float32)  # sum exp(l - m)
        t = tl.zeros([BLOCK_M], tl.float32)  # sum exp(l - m) * l
        idx = tl.zeros([BLOCK_M], tl.int32)
        top2 = tl.full([BLOCK_M], -1.0e30, tl.float32)
        v_lo = pid_v * vocab_per_split
        v_hi = tl.minimum(v_lo + vocab_per_split, vocab)
        for v0 in range(v_lo, v_hi, BLOCK_V):
            v = v0 + vv
            v_ok = v < v_hi
            acc = tl.zeros([BLOCK_M, BLOCK_V], tl.float32)
            for k0 in range(0, dim, BLOCK_K):
                k = k0 + kk
                k_ok = k < dim
                h_ptrs = H + src[:, None] * s_h + k[None, :]
                h = tl.load(h_ptrs, mask=r_ok[:, None] & k_ok[None, :], other=0.0)
                w_ptrs = W + v[None, :].to(tl.int64) * s_w + k[:, None]
                w = tl.load(w_ptrs, mask=v_ok[None, :] & k_ok[:, None], other=0.0)
                acc += mma(h, w, UPCAST, DOT_PREC)
            if HAS_BIAS:
                acc += tl.load(BIAS + v, mask=v_ok, other=0.0)[None, :]
            logits = tl.where(v_ok[None, :], acc, float("-inf"))
            tile_max = tl.max(logits, 1)
            tile_arg = tl.argmax(logits, 1, tie_break_left=True)
            tile_2 = tl.max(tl.where(vv[None, :] == tile_arg[:, None], float("-inf"), logits), 1)
            top2 = tl.maximum(tl.minimum(m, tile_max), tl.maximum(top2, tile_2))
            idx = tl.where(tile_max > m, v0 + tile_arg, idx)
            m_new = tl.maximum(m, tile_max)
            alpha = tl.exp(m - m_new)
            p = tl.exp(logits - m_new[:, None])
            s = s * alpha + tl.sum(p, 1)
            t = t * alpha + tl.sum(p * tl.where(p > 0, logits, 0.0), 1)
            m = m_new
        out = pid_v * n + r
        tl.store(PM + out, m, mask=r_ok)
        tl.store(PS + out, s, mask=r_ok)
        tl.store(PT + out, t, mask=r_ok)
        tl.store(PI + out, idx, mask=r_ok)
        tl.store(P2 + out, top2, mask=r_ok)

    @triton.jit
    def _lm_head_combine_kernel(
        PM,
        PS,
        PT,
        PI,
        P2,
        TOK,
        PROB,
        ENT,
        MARGIN,
        n,
        n_splits,
        BLOCK_R: tl.constexpr,
        BLOCK_S: tl.constexpr,
    ):
        r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        r_ok = r < n
        sp = tl.arange(0, BLOCK_S)
        ok = r_ok[:, None] & (sp[None, :] < n_splits)
        off = sp[None, :] * n + r[:, None]
        m = tl.load(PM + off, mask=ok, other=-1.0e30)
        m_max = tl.max(m, 1)
        best = tl.argmax(m, 1, tie_break_left=True)
        w = tl.where(ok, tl.exp(m - m_max[:, None]), 0.0)
        s = tl.sum(w * tl.load(PS + off, mask=ok, other=0.0), 1)
        t = tl.sum(w * tl.load(PT + off, mask=ok, other=0.0), 1)
        s = tl.where(r_ok, s, 1.0)
        is_best = sp[None, :] == best[:, None]
        tok = tl.sum(tl.where(is_best, tl.load(PI + off, mask=ok, other=0), 0), 1)
        others = tl.max(tl.where(is_best, -1.0e30, m), 1)
        top2 = tl.maximum(others, tl.max(tl.load(P2 + off, mask=ok, other=-1.0e30), 1))
        lse = m_max + tl.log(s)
        tl.store(TOK + r, tok.to(tl.int64), mask=r_ok)
        tl.store(PROB + r, 1.0 / s, mask=r_ok)  # exp(top1 - lse), and top1 is the running max
        tl.store(ENT + r, lse - t / s, mask=r_ok)
        tl.store(MARGIN + r, 1.0 / s - tl.exp(top2 - lse), mask=r_ok)

else:  # pragma: no cover
    _lm_head_partial_kernel = None
    _lm_head_combine_kernel = None


def lm_head_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    rows: torch.Tensor | None = None,
    logit_bias: torch.Tensor | None = None,
    vocab_per_split: int | None = None,
) -> TokenStats:
    """Fused :func:`lm_head_stats_reference` (same arguments). Falls back to full logits in torch where
    Triton cannot run or the layout is unsupported."""
    d = hidden.shape[-1]
    h = hidden.reshape(-1, d) if hidden.stride(-1) == 1 else None
    ok = (
        h is not None
        and weight.dim() == 2
        and weight.shape[1] == d
        and weight.stride(-1) == 1
        and weight.dtype == hidden.dtype
        and hidden.dtype in (torch.float32, torch.float16, torch.bfloat16)
        and (rows is None or (rows.dim() == 1 and rows.dtype in (torch.int32, torch.int64)))
        and (
            logit_bias is None or (logit_bias.shape == weight.shape[:1] and logit_bias.dtype == torch.float32)
        )
    )
    tensors = [hidden, weight] + [t for t in (rows, logit_bias) if t is not None]
    if not (ok and can_launch(_lm_head_partial_kernel, *tensors)):
        return lm_head_stats_reference(hidden, weight, rows, logit_bias)
    n = h.shape[0] if rows is None else rows.shape[0]
    vocab = weight.shape[0]
    dev = hidden.device
    if rows is not None:
        rows = rows.contiguous()
    if logit_bias is not None:
        logit_bias = logit_bias.contiguous()
    block_m = min(64, max(16, next_pow2(n)))
    block_v, block_k = 128, 64
    m_blocks = triton.cdiv(max(n, 1), block_m)
    if vocab_per_split is None:
        splits = max(1, min(triton.cdiv(vocab, block_v), (2 * num_sms(dev)) // m_blocks))
        vocab_per_split = triton.cdiv(vocab, splits)
    vocab_per_split = triton.cdiv(vocab_per_split, block_v) * block_v
    splits = triton.cdiv(vocab, vocab_per_split)
    f32 = dict(device=dev, dtype=torch.float32)
    pm, ps, pt, p2 = (torch.empty((splits, n), **f32) for _ in range(4))
    pi = torch.empty((splits, n), device=dev, dtype=torch.int32)
    out = TokenStats(
        torch.empty(n, device=dev, dtype=torch.int64),
        torch.empty(n, **f32),
        torch.empty(n, **f32),
        torch.empty(n, **f32),
    )
    if n:
        _lm_head_partial_kernel[(m_blocks, splits)](
            h,
            weight,
            h if rows is None else rows,
            h if logit_bias is None else logit_bias,
            pm,
            ps,
            pt,
            pi,
            p2,
            h.stride(0),
            weight.stride(0),
            n,
            vocab,
            d,
            vocab_per_split,
            HAS_ROWS=rows is not None,
            HAS_BIAS=logit_bias is not None,
            BLOCK_M=block_m,
            BLOCK_V=block_v,
            BLOCK_K=block_k,
            DOT_PREC=dot_precision(hidden.dtype),
            UPCAST=upcast_dots(_lm_head_partial_kernel, hidden.dtype),
            num_warps=4 if block_m <= 32 else 8,
        )
        block_r = 16
        _lm_head_combine_kernel[(triton.cdiv(n, block_r),)](
            pm, ps, pt, pi, p2, *out, n, splits, BLOCK_R=block_r, BLOCK_S=max(2, next_pow2(splits))
        )
    launches["lm_head_stats"] += 1
    return out
