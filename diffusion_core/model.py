"""The bidirectional transformer shared by every supported family.

One module covers Qwen2 (QKV bias), Qwen3 (QK RMSNorm, explicit head_dim) and LLaMA/LLaDA
(no bias) shapes: they differ only in flags of :class:`ModelConfig`. Attention is always
full (bidirectional) over the valid keys: masked diffusion models read both sides of a hole.

Weights are laid out for speed at load time: Q/K/V are one fused projection and gate/up are
one fused projection, so each layer does two input GEMMs instead of five.

The forward pass has two modes, both exact:
- ``forward(ids, positions, key_mask, cache=...)``: the whole canvas; optionally writes every
  position's K/V into a :class:`~diffusion_core.kv_cache.KVCache`.
- ``forward(ids_window, positions_window, key_mask, cache=cache, start=s)``: only the window
  ``[s, s + w)`` is recomputed; its K/V overwrite the cache slice and its queries attend to the
  whole cache (prefix + middle + suffix). This is what makes DualCache decoding cheap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .kv_cache import KVCache


@dataclass
class ModelConfig:
    """Architecture hyper-parameters, in the engine's own names (families map theirs onto these)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    head_dim: int = 0  # 0: hidden_size // num_heads
    rope_theta: float = 10000.0
    rms_eps: float = 1e-6
    qkv_bias: bool = False
    qk_norm: bool = False
    tie_embeddings: bool = False
    max_position: int = 32768

    def __post_init__(self) -> None:
        if not self.head_dim:
            self.head_dim = self.hidden_size // self.num_heads
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    def num_parameters(self) -> int:
        d, h, kv, hd, i = (
            self.hidden_size,
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            self.intermediate_size,
        )
        qkv = d * (h + 2 * kv) * hd + ((h + 2 * kv) * hd if self.qkv_bias else 0)
        per_layer = qkv + h * hd * d + 3 * d * i + 2 * d + (2 * hd if self.qk_norm else 0)
        head = 0 if self.tie_embeddings else self.vocab_size * d
        return self.vocab_size * d + self.num_layers * per_layer + d + head


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm computed in fp32 and cast back, as the Qwen/LLaMA references do."""
    dtype = x.dtype
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(dtype)


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for the half-split ("rotate_half") rotary layout; shape [B, T, head_dim]."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    )
    freqs = positions.to(torch.float32)[..., None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, T, D]; cos/sin: [B, T, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_q = cfg.num_heads * cfg.head_dim
        self.n_kv = cfg.num_kv_heads * cfg.head_dim
        self.qkv = nn.Linear(cfg.hidden_size, self.n_q + 2 * self.n_kv, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.n_q, cfg.hidden_size, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_eps)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn_mask: torch.Tensor | None,
        cache: KVCache | None,
        layer: int,
        start: int,
        causal: bool = False,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        cfg = self.cfg
        q, k, v = self.qkv(x).split([self.n_q, self.n_kv, self.n_kv], dim=-1)
        q = q.view(b, t, cfg.num_heads, cfg.head_dim).transpose(1, 2)
        k = k.view(b, t, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
        v = v.view(b, t, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
        if cfg.qk_norm:
            q = self.q_norm(q)
            k = self.k_norm(k)
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)
        if cache is not None:
            cache.write(layer, start, k, v)
            k, v = cache.read(layer)
        out = attention(q, k, v, attn_mask, causal)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.n_q))


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None,
    causal: bool = False,
) -> torch.Tensor:
    """Grouped-query attention, bidirectional unless ``causal``. q: [B, H, Tq, D]; k/v:
    [B, KVH, Tk, D]; attn_mask: bool [B, 1, 1|Tq, Tk] (True = may attend) or None."""
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.inter = cfg.intermediate_size
        self.gate_up = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).split(self.inter, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, attn_mask, cache, layer, start, causal=False):  # noqa: ANN001
        x = x + self.attn(self.attn_norm(x), cos, sin, attn_mask, cache, layer, start, causal)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    """Embedding → blocks → final norm; the LM head is applied separately (see :meth:`logits`) so
    callers compute logits only where they need them."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        # fused Triton kernels (diffusion_core/fast_path.py, inference only: they have no backward):
        # None = on for CUDA inputs when autograd is off; True/False force them on/off
        self.use_kernels: bool | None = None

    @property
    def head_weight(self) -> torch.Tensor:
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        start: int = 0,
        causal: bool = False,
    ) -> torch.Tensor:
        """Hidden states after the final norm, [B, T, hidden].

        key_mask: bool [B, T_total] marking the real (non-padding) keys of the whole canvas; with a
        cache, T_total is the cache length and ``input_ids`` covers ``[start, start + T)``.
        causal: each position attends only to itself and earlier ones (the next-token warm-up of
        training; inference is always bidirectional). Eager path only, no cache; ``key_mask`` is
        not needed then (right padding never comes before a real token), so SDPA's fused causal
        path runs instead of an explicit mask.
        """
        auto = self.use_kernels is None and input_ids.is_cuda and not torch.is_grad_enabled()
        if (self.use_kernels or auto) and not causal:
            from .fast_path import fast_forward

            return fast_forward(self, input_ids, positions, key_mask, cache, start)
        b, t = input_ids.shape
        if positions is None:
            positions = torch.arange(start, start + t, device=input_ids.device).expand(b, t)
        x = self.embed(input_ids)
        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta, x.dtype)
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        if causal:
            if cache is not None:
                raise ValueError("causal attention is for training forwards, not cached decoding")
            attn_mask = None
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, attn_mask, cache, i, start, causal)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM head in fp32 (the sampler compares probabilities, so keep them precise)."""
        return F.linear(hidden, self.head_weight).float()

    def new_cache(self, batch: int, length: int) -> KVCache:
        p = self.head_weight
        return KVCache(
            self.cfg.num_layers, batch, self.cfg.num_kv_heads, length, self.cfg.head_dim, p.dtype, p.device
        )
