"""The bidirectional transformer shared by every supported family.

One module covers Qwen2 (QKV bias), Qwen3 (QK RMSNorm, explicit head_dim) and LLaMA/LLaDA
(no bias) shapes: they differ only in flags of :class:`ModelConfig`. Attention is always
full (bidirectional) over the valid keys: masked diffusion models read both sides of a hole.

Weights are laid out for speed at load time: Q/K/V are one fused projection and gate/up are
one fused projection, so each layer does two input GEMMs instead of five.

There is one forward. Per layer it runs two GEMMs in, two out and four ops that are fused kernels
on CUDA (``kernels/``) and the kernels' own plain references elsewhere (and whenever autograd is
on); an op whose kernel cannot take a call (an attention pattern beyond a key mask) runs its
reference there:

    add+RMSNorm -> qkv GEMM -> RoPE (+QK-norm) + K/V cache write -> attention -> o_proj GEMM
    -> add+RMSNorm -> gate_up GEMM -> SwiGLU -> down GEMM

It works in three modes, all exact:
- ``forward(ids, positions, key_mask, cache=...)``: the whole canvas; optionally writes every
  position's K/V into a :class:`~diffusion_core.kv_cache.KVCache`.
- ``forward(ids_window, positions_window, key_mask, cache=cache, start=s)``: only the window
  ``[s, s + w)`` is recomputed; its K/V overwrite the cache slice and its queries attend to the
  whole cache (prefix + middle + suffix). This is what makes DualCache decoding cheap.
- ``forward(ids, segments=[...])``: several requests' rows packed into one ``[1, T]`` call
  (Diffill-Coder's batched steps): the GEMMs, where the weights are read, run once over every
  row; each :class:`Segment`'s rows then attend over its own cache, as they would alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from diffill_kernels.attention import attention as attention_kernel
from diffill_kernels.rmsnorm import add_rmsnorm, add_rmsnorm_reference, rmsnorm_reference
from diffill_kernels.rope import rope_qkv_reference, rope_qkv_to_cache, rope_rotate
from diffill_kernels.swiglu import swiglu, swiglu_reference

from .fbgemm_weights import pack_linears, use_packed
from .kv_cache import KVCache
from .weight_only import quantize_linears, use_weight_only


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


@dataclass
class Segment:
    """One request's rows in a packed forward: which of the packed rows are its own (in position
    order), its own cache, the position the first of them takes there and its attention mask
    ``[1, 1, len(rows), T_keys]``. Rows of different segments never see each other."""

    rows: torch.Tensor  # long [t], indices into the packed rows
    cache: KVCache
    start: int
    attn_mask: torch.Tensor


def segment_groups(rows: Sequence[torch.Tensor], total: int) -> torch.Tensor:
    """Each of ``total`` packed rows' segment index, given each segment's rows: what a matmul that
    rounds its input per call (w8a8) needs to round each request's rows as if they were alone."""
    groups = torch.empty(total, dtype=torch.long, device=rows[0].device)
    for i, r in enumerate(rows):
        groups[r] = i
    return groups


def _linear(lin: nn.Linear, x: torch.Tensor, p: _Pass, layer: int, name: str) -> torch.Tensor:
    # weights quantized for a few rows (weight_only.py) or packed for fbgemm (fbgemm_weights.py)
    q = use_weight_only(lin, x) or use_packed(lin, x, p.groups)
    ad = p.adapted
    y = lin(x) if q is None else q.matmul(x, p.groups)
    if q is not None and lin.bias is not None:
        y = y + lin.bias
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
    """Holds a norm's weight; the forward applies it through ``add_rmsnorm`` (fused with the
    residual add) or its reference."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rmsnorm_reference(x, self.weight, self.eps)  # the kernels' reference: one definition


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for the half-split ("rotate_half") rotary layout; shape [B, T, head_dim]."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    )
    freqs = positions.to(torch.float32)[..., None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rope_shift(k: torch.Tensor, delta: int, theta: float) -> torch.Tensor:
    """Keys rotated for positions p, rotated instead for p + ``delta`` (any shape [..., head_dim]).
    Rotations compose, so cached keys can move ``delta`` positions without recomputing them."""
    cos, sin = rope_cos_sin(torch.tensor([[delta]], device=k.device), k.shape[-1], theta)
    return rope_rotate(k, cos, sin)


@dataclass
class _Pass:
    """What every layer of one forward shares."""

    cos: torch.Tensor | None  # fp32 [B, T, head_dim], computed once for all layers (None: packed)
    sin: torch.Tensor | None
    key_mask: torch.Tensor | None  # bool [B, T_keys]: the attention kernel's mask
    attn_mask: torch.Tensor | None  # bool [B, 1, 1|T, T_keys]: SDPA's (the key mask, or a pattern)
    causal: bool
    pattern: bool  # causal or a caller's attn_mask: more than a key mask says (no kernel for it)
    cache: KVCache | None
    start: int | torch.Tensor
    adapted: Adapted | None
    kernels: bool  # fused kernels (each falls back to its reference where it cannot run) or references
    scratch: tuple[torch.Tensor, torch.Tensor] | None = None  # kernels, no cache: K/V all layers reuse
    segments: list[tuple[torch.Tensor, _Pass]] | None = None  # packed forward: each segment's rows, pass
    groups: torch.Tensor | None = None  # packed forward: each row's segment (w8a8 quantizes each alone)


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

    def forward(self, x: torch.Tensor, layer: int, p: _Pass) -> torch.Tensor:
        qkv = _linear(self.qkv, x, p, layer, "qkv")
        if p.segments is None:
            out = self._attend(qkv, layer, p)
        else:  # packed rows: each segment attends over its own cache, as it would alone
            out = qkv.new_empty((*qkv.shape[:2], self.n_q))
            for rows, sp in p.segments:
                out[:, rows] = self._attend(qkv[:, rows], layer, sp)
        return _linear(self.o_proj, out, p, layer, "o_proj")

    def _attend(self, qkv: torch.Tensor, layer: int, p: _Pass) -> torch.Tensor:
        """RoPE, the K/V write and attention for the rows of ``qkv``: [B, T, H * D] out."""
        cfg = self.cfg
        t = qkv.shape[1]
        norms = (self.q_norm.weight, self.k_norm.weight) if cfg.qk_norm else (None, None)
        heads = (cfg.num_heads, cfg.num_kv_heads)
        if p.kernels:  # RoPE (+QK-norm) and the K/V write in one kernel, straight into the cache
            if p.cache is None:  # keys are this call's own tokens: the forward's scratch K/V
                (k, v), start, write_mask = p.scratch, 0, None
            else:
                k, v, start = p.cache.k[layer], p.cache.v[layer], p.start
                write_mask = p.cache.write_mask if t < p.cache.length else None
            q = rope_qkv_to_cache(
                qkv, p.cos, p.sin, *heads, k, v, start, *norms, cfg.rms_eps, write_mask=write_mask
            )
        else:
            q, k, v = rope_qkv_reference(qkv, p.cos, p.sin, *heads, *norms, cfg.rms_eps)
            if p.cache is not None:
                p.cache.write(layer, int(p.start), k, v)
                k, v = p.cache.read(layer)
        return attention(q, k, v, p)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: _Pass) -> torch.Tensor:
    """Grouped-query attention, bidirectional unless ``p.causal``; q: [B, H, Tq, D], k/v: [B, KVH,
    Tk, D]; returns [B, Tq, H * D], the layout ``o_proj`` reads. The kernel takes a key mask only;
    attention patterns (causal, Diffill-Coder's causal context with a bidirectional window) and the
    reference path run torch's SDPA."""
    b, h, t, d = q.shape
    if p.attn_mask is not None and p.attn_mask.shape[-1] < k.shape[2]:  # keys past the mask are not read
        k, v = k[:, :, : p.attn_mask.shape[-1]], v[:, :, : p.attn_mask.shape[-1]]
    if p.kernels and not p.pattern:
        out = q.new_empty((b, t, h, d))
        attention_kernel(q, k, v, p.key_mask, out=out.transpose(1, 2))
        return out.view(b, t, h * d)
    # enable_gqa: query heads share their K/V head without a repeated copy (3x faster backward
    # on the CPU for the adapter's training windows)
    gqa = h != k.shape[1]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=p.attn_mask, is_causal=p.causal, enable_gqa=gqa)
    return out.transpose(1, 2).reshape(b, t, h * d)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_up = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, layer: int, p: _Pass) -> torch.Tensor:
        gate_up = _linear(self.gate_up, x, p, layer, "gate_up")
        act = swiglu(gate_up) if p.kernels else swiglu_reference(gate_up)
        return _linear(self.down_proj, act, p, layer, "down_proj")


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_eps)
        self.mlp = MLP(cfg)

    def forward(
        self, normed: torch.Tensor, residual: torch.Tensor, next_norm: RMSNorm, layer: int, p: _Pass
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-norm block on ``normed`` = attn_norm(residual); returns the next layer's input
        normalised by ``next_norm`` (the following block's attn_norm, or the final norm) and the
        residual stream: each residual add is fused with the norm after it."""
        norm = add_rmsnorm if p.kernels else add_rmsnorm_reference
        h = self.attn(normed, layer, p)
        normed, residual = norm(h, residual, self.mlp_norm.weight, self.mlp_norm.eps)
        h = self.mlp(normed, layer, p)
        return norm(h, residual, next_norm.weight, next_norm.eps)


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
        # the fused Triton kernels of kernels/ (inference only: they have no backward): None = on
        # for CUDA inputs; True/False force them on/off (the benchmark's "kernels off" baseline)
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
        start: int | torch.Tensor = 0,
        causal: bool = False,
        attn_mask: torch.Tensor | None = None,
        adapted: Adapted | None = None,
        segments: Sequence[Segment] | None = None,
    ) -> torch.Tensor:
        """Hidden states after the final norm, [B, T, hidden]. The one forward: each op runs its
        fused kernel (CUDA, or forced by ``use_kernels``; never with autograd on) or the kernel's
        plain reference, so training, the CPU and the GPU compute the same function.

        key_mask: bool [B, T_total] marking the real (non-padding) keys of the whole canvas; with a
        cache, T_total is the cache length and ``input_ids`` covers ``[start, start + T)``.
        ``start`` may be a one-element device tensor (CUDA-graph replay, kernels only); the caller
        then guarantees the window fits the cache.
        causal: each position attends only to itself and earlier ones (the next-token warm-up of
        training; inference is always bidirectional). No cache; ``key_mask`` is not needed then
        (right padding never comes before a real token), so SDPA's fused causal path runs.
        attn_mask: bool [B, 1, T, T_keys] (True = may attend), for attention patterns a key mask
        cannot say (Diffill-Coder's causal context with a bidirectional block); replaces key_mask.
        With a cache, T_keys may be shorter than the cache: keys past it are not read at all.
        adapted: an adapter applied to the rows from ``adapted.rows_from`` on.
        segments: ``input_ids`` [1, T] packs several requests' rows (each :class:`Segment` names
        its rows, cache, start and mask; the call's own cache/start/attn_mask are unused). The
        weights are read once for all of them: what batching buys where a step is bound by
        reading weights.
        """
        if segments is not None:
            return self._packed(input_ids, segments, adapted)
        if causal and cache is not None:
            raise ValueError("causal=True is for whole-sequence forwards; pass attn_mask with a cache")
        on = input_ids.is_cuda if self.use_kernels is None else self.use_kernels
        kernels = bool(on) and not torch.is_grad_enabled()
        b, t = input_ids.shape
        if positions is None:
            s0 = start if isinstance(start, int) else 0
            positions = torch.arange(s0, s0 + t, device=input_ids.device).expand(b, t)
            if not isinstance(start, int):
                positions = positions + start.reshape(1, 1)
        x = self.embed(input_ids)
        if adapted is not None:
            x = adapted.adapter.embed_masks(input_ids, x)
        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta)
        pattern = causal or attn_mask is not None
        if causal:
            key_mask = attn_mask = None
        elif attn_mask is None and key_mask is not None:
            attn_mask = key_mask[:, None, None, :]
        p = _Pass(cos, sin, key_mask, attn_mask, causal, pattern, cache, start, adapted, kernels)
        if kernels and cache is None:
            k = x.new_empty((b, self.cfg.num_kv_heads, t, self.cfg.head_dim))
            p.scratch = (k, torch.empty_like(k))
        return self._blocks(x, p)

    def _packed(
        self, input_ids: torch.Tensor, segments: Sequence[Segment], adapted: Adapted | None
    ) -> torch.Tensor:
        """The packed forward: one pass per segment (its positions, cache, mask) for attention;
        everything else over all rows at once."""
        if input_ids.shape[0] != 1:
            raise ValueError("a packed forward takes its rows as one sequence: input_ids [1, T]")
        on = input_ids.is_cuda if self.use_kernels is None else self.use_kernels
        kernels = bool(on) and not torch.is_grad_enabled()
        parts = []
        for seg in segments:
            t = seg.rows.numel()
            pos = torch.arange(seg.start, seg.start + t, device=input_ids.device)[None]
            cos, sin = rope_cos_sin(pos, self.cfg.head_dim, self.cfg.rope_theta)
            sp = _Pass(cos, sin, None, seg.attn_mask, False, True, seg.cache, seg.start, None, kernels)
            parts.append((seg.rows, sp))
        x = self.embed(input_ids)
        if adapted is not None:
            x = adapted.adapter.embed_masks(input_ids, x)
        p = _Pass(None, None, None, None, False, True, None, 0, adapted, kernels, segments=parts)
        p.groups = segment_groups([seg.rows for seg in segments], input_ids.shape[1])
        return self._blocks(x, p)

    def _blocks(self, x: torch.Tensor, p: _Pass) -> torch.Tensor:
        norms = [blk.attn_norm for blk in self.layers] + [self.norm]
        norm = add_rmsnorm if p.kernels else add_rmsnorm_reference
        normed, residual = norm(x, None, norms[0].weight, norms[0].eps)
        for i, layer in enumerate(self.layers):
            normed, residual = layer(normed, residual, norms[i + 1], i, p)
        return normed

    def logits(self, hidden: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """LM head in fp32 (the sampler compares probabilities, so keep them precise). ``groups``:
        each row's request where one call holds several (see :func:`segment_groups`)."""
        head = self.embed if self.lm_head is None else self.lm_head  # tied: packing covers the embedding
        q = use_weight_only(head, hidden) or use_packed(head, hidden, groups)
        return (F.linear(hidden, self.head_weight) if q is None else q.matmul(hidden, groups)).float()

    def quantize(self, kind: str) -> int:
        """Weight-only ``kind`` for few-row calls on every block linear, and in int8 an untied LM
        head (a tied one is the embedding, which stays exact; an int4 head costs quality, so int4
        leaves the head to :meth:`pack`); returns the bytes added. See diffusion_core/weight_only.py."""
        linears = [m for blk in self.layers for m in blk.modules() if isinstance(m, nn.Linear)]
        if self.lm_head is not None and kind == "int8":
            linears.append(self.lm_head)
        return quantize_linears(linears, kind)

    def pack(self, kind: str, head_only: bool = False) -> int:
        """Weights packed for fbgemm (``kind``: fp16 or w8a8) for the inference matmuls on the
        CPU (every call in fp32; w8a8 with bf16: the few-row calls) of every block linear (unless
        ``head_only``) and the LM head (tied: the embedding); returns the bytes added. See
        diffusion_core/fbgemm_weights.py."""
        head = self.embed if self.lm_head is None else self.lm_head
        if head_only:
            return pack_linears([head], kind)
        linears = [m for blk in self.layers for m in blk.modules() if isinstance(m, nn.Linear)]
        return pack_linears([*linears, head], kind)

    def shift_keys(self, k: torch.Tensor, delta: int) -> torch.Tensor:
        """Cached keys moved ``delta`` positions (:func:`rope_shift` with this model's theta)."""
        return rope_shift(k, delta, self.cfg.rope_theta)

    def new_cache(self, batch: int, length: int) -> KVCache:
        p = self.head_weight
        return KVCache(
            self.cfg.num_layers, batch, self.cfg.num_kv_heads, length, self.cfg.head_dim, p.dtype, p.device
        )


def random_transformer(
    cfg: ModelConfig,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Transformer:
    """A seeded random model (tests, and ``diffill bench``'s model shapes that have no weights
    here) whose activations and logits stay O(1) at any width: fan-in scaled weights, norms near
    1. Parameters are made on ``device`` in ``dtype`` directly (a 7B shape in fp32 on the host
    would need 30 GB and minutes of init); the same seed gives the same weights."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Transformer(ModelConfig(**cfg.to_dict()))
    finally:
        torch.set_default_dtype(old)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, device=device)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.02 * noise)
            else:
                p.copy_(noise * p.shape[-1] ** -0.5)
    return model
