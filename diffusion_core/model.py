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
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from diffill_kernels.rmsnorm import rmsnorm_reference

from .int8 import quantize_linears, use_int8
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


class RowAdapter(Protocol):
    """A low-rank adapter applied to the rows of a forward from ``rows_from`` on (Diffill-Coder's
    masked block, ``diffusion_core/coder/adapter.py``): the rows before it run the untouched
    base, so one forward can extend the causal context and denoise the block together."""

    mask_id: int

    def delta(self, layer: int, name: str, x: torch.Tensor) -> torch.Tensor:
        """The adapter's addition to linear ``name`` ("qkv", "o_proj", "gate_up", "down_proj")."""
        ...

    def embed_masks(self, ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``x`` with the mask token's rows replaced by the adapter's mask embedding."""
        ...


@dataclass
class Adapted:
    """Which adapter a forward applies and to which rows (``rows_from`` to the end)."""

    adapter: RowAdapter
    rows_from: int = 0


def _linear(lin: nn.Linear, x: torch.Tensor, ad: Adapted | None, layer: int, name: str) -> torch.Tensor:
    q = use_int8(lin, x)  # a few rows, weights quantized (diffusion_core/int8.py): the int8 kernel
    y = lin(x) if q is None else q.matmul(x) if lin.bias is None else q.matmul(x) + lin.bias
    if ad is None or ad.rows_from >= x.shape[1]:
        return y
    s = ad.rows_from
    delta = ad.adapter.delta(layer, name, x[:, s:]).to(y.dtype)
    if not torch.is_grad_enabled():  # inference: add in place, no copy of the base rows
        y[:, s:] += delta
        return y
    if s == 0:
        return y + delta
    return torch.cat([y[:, :s], y[:, s:] + delta], dim=1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rmsnorm_reference(x, self.weight, self.eps)  # the kernels' reference: one definition


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
        ad: Adapted | None = None,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        cfg = self.cfg
        q, k, v = _linear(self.qkv, x, ad, layer, "qkv").split([self.n_q, self.n_kv, self.n_kv], dim=-1)
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
        return _linear(self.o_proj, out.transpose(1, 2).reshape(b, t, self.n_q), ad, layer, "o_proj")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None,
    causal: bool = False,
) -> torch.Tensor:
    """Grouped-query attention, bidirectional unless ``causal``. q: [B, H, Tq, D]; k/v:
    [B, KVH, Tk, D]; attn_mask: bool [B, 1, 1|Tq, Tk] (True = may attend) or None."""
    # enable_gqa: query heads share their K/V head without a repeated copy (3x faster backward
    # on the CPU for the adapter's training windows)
    gqa = q.shape[1] != k.shape[1]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal, enable_gqa=gqa)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.inter = cfg.intermediate_size
        self.gate_up = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, layer: int = 0, ad: Adapted | None = None) -> torch.Tensor:
        gate, up = _linear(self.gate_up, x, ad, layer, "gate_up").split(self.inter, dim=-1)
        return _linear(self.down_proj, F.silu(gate) * up, ad, layer, "down_proj")


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, attn_mask, cache, layer, start, causal=False, ad=None):  # noqa: ANN001
        x = x + self.attn(self.attn_norm(x), cos, sin, attn_mask, cache, layer, start, causal, ad)
        return x + self.mlp(self.mlp_norm(x), layer, ad)


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
        attn_mask: torch.Tensor | None = None,
        adapted: Adapted | None = None,
    ) -> torch.Tensor:
        """Hidden states after the final norm, [B, T, hidden].

        key_mask: bool [B, T_total] marking the real (non-padding) keys of the whole canvas; with a
        cache, T_total is the cache length and ``input_ids`` covers ``[start, start + T)``.
        causal: each position attends only to itself and earlier ones (the next-token warm-up of
        training; inference is always bidirectional). Eager path only, no cache; ``key_mask`` is
        not needed then (right padding never comes before a real token), so SDPA's fused causal
        path runs instead of an explicit mask.
        attn_mask: bool [B, 1, T, T_keys] (True = may attend), for attention patterns a key mask
        cannot say (Diffill-Coder's causal context with a bidirectional block); replaces key_mask.
        adapted: an adapter applied to the rows from ``adapted.rows_from`` on (eager path).
        """
        auto = self.use_kernels is None and input_ids.is_cuda and not torch.is_grad_enabled()
        plain = not causal and attn_mask is None and adapted is None
        if (self.use_kernels or auto) and plain:
            from .fast_path import fast_forward

            return fast_forward(self, input_ids, positions, key_mask, cache, start)
        b, t = input_ids.shape
        if positions is None:
            positions = torch.arange(start, start + t, device=input_ids.device).expand(b, t)
        x = self.embed(input_ids)
        if adapted is not None:
            x = adapted.adapter.embed_masks(input_ids, x)
        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta, x.dtype)
        if attn_mask is None and key_mask is not None:
            attn_mask = key_mask[:, None, None, :]
        if causal:
            if cache is not None:
                raise ValueError("causal=True is for whole-sequence forwards; pass attn_mask with a cache")
            attn_mask = None
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, attn_mask, cache, i, start, causal, adapted)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM head in fp32 (the sampler compares probabilities, so keep them precise)."""
        q = None if self.lm_head is None else use_int8(self.lm_head, hidden)
        return (F.linear(hidden, self.head_weight) if q is None else q.matmul(hidden)).float()

    def quantize_int8(self) -> int:
        """Weight-only int8 for few-row calls on every block linear and an untied LM head (the
        embedding stays exact); returns the bytes added. See diffusion_core/int8.py."""
        linears = [m for blk in self.layers for m in blk.modules() if isinstance(m, nn.Linear)]
        if self.lm_head is not None:
            linears.append(self.lm_head)
        return quantize_linears(linears)

    def new_cache(self, batch: int, length: int) -> KVCache:
        p = self.head_weight
        return KVCache(
            self.cfg.num_layers, batch, self.cfg.num_kv_heads, length, self.cfg.head_dim, p.dtype, p.device
        )
