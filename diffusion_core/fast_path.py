"""The transformer forward on the fused kernels of ``kernels/``.

Same contract and same parameters as :meth:`Transformer.forward` (it reads the model's canonical
weights directly, so checkpoints and the reference path need nothing new); per layer it runs two
GEMMs in, two GEMMs out and four fused kernels:

    add+RMSNorm -> qkv GEMM -> RoPE (+QK-norm) + K/V cache write -> attention -> o_proj GEMM
    -> add+RMSNorm -> gate_up GEMM -> SwiGLU -> down GEMM

Each kernel falls back to its torch reference where Triton cannot run, so this path is correct
anywhere; it is only *fast* on CUDA. The switch is ``Transformer.use_kernels``: None (default) uses
it for CUDA inputs, True/False force it on/off (the benchmark's "kernels off" baseline).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffill_kernels.attention import attention
from diffill_kernels.lm_head import TokenStats, lm_head_stats
from diffill_kernels.rmsnorm import add_rmsnorm
from diffill_kernels.rope import rope_qkv_to_cache
from diffill_kernels.swiglu import swiglu

from .kv_cache import KVCache
from .model import rope_cos_sin

__all__ = ["fast_forward", "token_stats"]


def fast_forward(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    positions: torch.Tensor | None = None,
    key_mask: torch.Tensor | None = None,
    cache: KVCache | None = None,
    start: int | torch.Tensor = 0,
) -> torch.Tensor:
    """:meth:`Transformer.forward` on the fused kernels. ``start`` may be a one-element device
    tensor (CUDA-graph replay); then the caller guarantees the window fits the cache."""
    cfg = model.cfg
    b, t = input_ids.shape
    h, kvh, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    if positions is None:
        s0 = start if isinstance(start, int) else 0
        positions = torch.arange(s0, s0 + t, device=input_ids.device).expand(b, t)
        if not isinstance(start, int):
            positions = positions + start.reshape(1, 1)
    x = model.embed(input_ids)
    cos, sin = rope_cos_sin(positions, d, cfg.rope_theta, torch.float32)  # fp32, once for all layers

    write_mask = None
    if cache is None:  # keys are this call's own tokens: one scratch K/V reused by every layer
        k_buf = torch.empty((b, kvh, t, d), device=x.device, dtype=x.dtype)
        v_buf = torch.empty_like(k_buf)
        start = 0
    elif cache.write_mask is not None and t < cache.length:
        write_mask = cache.write_mask
    q = torch.empty((b, h, t, d), device=x.device, dtype=x.dtype)
    attn_out = torch.empty((b, t, h, d), device=x.device, dtype=x.dtype)

    layers = model.layers
    normed, residual = add_rmsnorm(x, None, layers[0].attn_norm.weight, cfg.rms_eps)
    for i, layer in enumerate(layers):
        attn, mlp = layer.attn, layer.mlp
        qkv = F.linear(normed, attn.qkv.weight, attn.qkv.bias)
        kc, vc = (k_buf, v_buf) if cache is None else (cache.k[i], cache.v[i])
        rope_qkv_to_cache(
            qkv, cos, sin, h, kvh, kc, vc, start,
            attn.q_norm.weight if cfg.qk_norm else None,
            attn.k_norm.weight if cfg.qk_norm else None,
            cfg.rms_eps, q_out=q, write_mask=write_mask,
        )  # fmt: skip
        attention(q, kc, vc, key_mask, out=attn_out.transpose(1, 2))
        o = F.linear(attn_out.view(b, t, h * d), attn.o_proj.weight)
        normed, residual = add_rmsnorm(o, residual, layer.mlp_norm.weight, cfg.rms_eps)
        m = F.linear(swiglu(F.linear(normed, mlp.gate_up.weight)), mlp.down_proj.weight)
        next_norm = layers[i + 1].attn_norm.weight if i + 1 < len(layers) else model.norm.weight
        normed, residual = add_rmsnorm(m, residual, next_norm, cfg.rms_eps)
    return normed


def token_stats(
    model: torch.nn.Module,
    hidden: torch.Tensor,
    rows: torch.Tensor | None = None,
    logit_bias: torch.Tensor | None = None,
) -> TokenStats:
    """Greedy decision statistics (argmax, its probability, entropy, top-2 margin) for the chosen
    rows of ``hidden`` without materialising the logits; ``logit_bias`` fp32 [V] (-inf bans a token).
    Matches ``stats_from_logits(model.logits(hidden[rows]) + bias)`` up to the bf16 rounding that
    ``model.logits`` applies and this does not."""
    return lm_head_stats(hidden, model.head_weight, rows, logit_bias)
