"""Tensor layouts: how each supported architecture names its config keys and tensors, mapped onto
:class:`~diffusion_core.model.ModelConfig` and the canonical fused names (q/k/v concatenated into
``attn.qkv``, gate/up into ``mlp.gate_up``).

Layouts: ``diffill`` (the project's own format), ``qwen2`` (Dream family, Open-dCoder), ``qwen3``
(CoDA), ``llama`` and ``llada``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .checkpoint_config import (
    CONFIG_FILE,
    CheckpointError,
    _make_config,
    _opt,
    _req,
    _require_value,
    _typed,
)
from .families import family_layouts
from .model import ModelConfig

Sources = dict[str, list[str]]
HasTensor = Callable[[str], bool]


@dataclass(frozen=True)
class Layout:
    name: str
    model_config: Callable[[Mapping[str, Any], HasTensor], ModelConfig]
    sources: Callable[[ModelConfig], Sources]


def canonical_names(mc: ModelConfig) -> list[str]:
    """Every parameter name of a Transformer built from ``mc``, in a stable order."""
    names = ["embed.weight"]
    for i in range(mc.num_layers):
        p = f"layers.{i}."
        names += [p + "attn_norm.weight", p + "attn.qkv.weight"]
        if mc.qkv_bias:
            names.append(p + "attn.qkv.bias")
        names.append(p + "attn.o_proj.weight")
        if mc.qk_norm:
            names += [p + "attn.q_norm.weight", p + "attn.k_norm.weight"]
        names += [p + "mlp_norm.weight", p + "mlp.gate_up.weight", p + "mlp.down_proj.weight"]
    names.append("norm.weight")
    if not mc.tie_embeddings:
        names.append("lm_head.weight")
    return names


# --- the project's own format
def _diffill_config(cfg: Mapping[str, Any], has: HasTensor) -> ModelConfig:
    defaults = ModelConfig(1, 1, 1, 1, 1, 1)
    return _make_config(
        vocab_size=_req(cfg, "vocab_size"),
        hidden_size=_req(cfg, "hidden_size"),
        num_layers=_req(cfg, "num_layers"),
        num_heads=_req(cfg, "num_heads"),
        num_kv_heads=_req(cfg, "num_kv_heads"),
        intermediate_size=_req(cfg, "intermediate_size"),
        head_dim=_opt(cfg, "head_dim", 0),
        rope_theta=_opt(cfg, "rope_theta", defaults.rope_theta, float),
        rms_eps=_opt(cfg, "rms_eps", defaults.rms_eps, float),
        qkv_bias=_opt(cfg, "qkv_bias", False, bool),
        qk_norm=_opt(cfg, "qk_norm", False, bool),
        tie_embeddings=_opt(cfg, "tie_embeddings", False, bool),
        max_position=_opt(cfg, "max_position", defaults.max_position),
    )


def _diffill_sources(mc: ModelConfig) -> Sources:
    return {n: [n] for n in canonical_names(mc)}


# --- Hugging Face Qwen2 / Qwen3 / Llama (and Dream, CoDA, Open-dCoder, which reuse their names)
def _rope_theta(cfg: Mapping[str, Any], default: float) -> float:
    """rope_theta, from the top level (transformers 4) or ``rope_parameters`` (transformers 5);
    any rope scaling other than the default is refused: the engine implements plain RoPE."""
    params = cfg.get("rope_parameters")
    for key in ("rope_scaling", "rope_parameters"):
        value = cfg.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise CheckpointError(f"invalid value for {key!r} in {CONFIG_FILE}: {value!r}")
        kind = value.get("rope_type", value.get("type", "default"))
        if kind not in ("default", None):
            raise CheckpointError(f"unsupported rope scaling {kind!r} ({key!r} in {CONFIG_FILE})")
    if cfg.get("rope_theta") is not None:
        return _typed(cfg, "rope_theta", float)
    if isinstance(params, dict) and params.get("rope_theta") is not None:
        return _typed(params, "rope_theta", float)
    return default


def _tied(cfg: Mapping[str, Any], key: str, has: HasTensor, head: str) -> bool:
    """Explicit config wins; when the key is absent (CoDA's config.json omits it) the weights
    decide: no separate head tensor means the head is the embedding."""
    if cfg.get(key) is not None:
        return _typed(cfg, key, bool)
    return not has(head)


def _hf_config(cfg: Mapping[str, Any], has: HasTensor, *, qkv_bias: bool, qk_norm: bool) -> ModelConfig:
    _require_value(cfg, "hidden_act", ("silu", "swish"), "silu")
    _require_value(cfg, "use_sliding_window", (False,), False)
    _require_value(cfg, "mlp_bias", (False,), False)
    heads = _req(cfg, "num_attention_heads")
    return _make_config(
        vocab_size=_req(cfg, "vocab_size"),
        hidden_size=_req(cfg, "hidden_size"),
        num_layers=_req(cfg, "num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=_opt(cfg, "num_key_value_heads", heads),
        intermediate_size=_req(cfg, "intermediate_size"),
        head_dim=_opt(cfg, "head_dim", 0),
        rope_theta=_rope_theta(cfg, 10000.0),
        rms_eps=_opt(cfg, "rms_norm_eps", 1e-6, float),
        qkv_bias=qkv_bias,
        qk_norm=qk_norm,
        tie_embeddings=_tied(cfg, "tie_word_embeddings", has, "lm_head.weight"),
        max_position=_opt(cfg, "max_position_embeddings", 32768),
    )


def _qwen2_config(cfg: Mapping[str, Any], has: HasTensor) -> ModelConfig:
    # Qwen2 (and Dream) always carry q/k/v biases and no o_proj bias.
    return _hf_config(cfg, has, qkv_bias=True, qk_norm=False)


def _qwen3_config(cfg: Mapping[str, Any], has: HasTensor) -> ModelConfig:
    _require_value(cfg, "attention_bias", (False,), False)  # would also bias o_proj
    return _hf_config(cfg, has, qkv_bias=False, qk_norm=True)


def _llama_config(cfg: Mapping[str, Any], has: HasTensor) -> ModelConfig:
    _require_value(cfg, "attention_bias", (False,), False)
    return _hf_config(cfg, has, qkv_bias=False, qk_norm=False)


def _hf_sources(mc: ModelConfig) -> Sources:
    src: Sources = {"embed.weight": ["model.embed_tokens.weight"]}
    for i in range(mc.num_layers):
        c, h = f"layers.{i}.", f"model.layers.{i}."
        a = h + "self_attn."
        src[c + "attn_norm.weight"] = [h + "input_layernorm.weight"]
        src[c + "attn.qkv.weight"] = [a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight"]
        if mc.qkv_bias:
            src[c + "attn.qkv.bias"] = [a + "q_proj.bias", a + "k_proj.bias", a + "v_proj.bias"]
        src[c + "attn.o_proj.weight"] = [a + "o_proj.weight"]
        if mc.qk_norm:
            src[c + "attn.q_norm.weight"] = [a + "q_norm.weight"]
            src[c + "attn.k_norm.weight"] = [a + "k_norm.weight"]
        src[c + "mlp_norm.weight"] = [h + "post_attention_layernorm.weight"]
        src[c + "mlp.gate_up.weight"] = [h + "mlp.gate_proj.weight", h + "mlp.up_proj.weight"]
        src[c + "mlp.down_proj.weight"] = [h + "mlp.down_proj.weight"]
    src["norm.weight"] = ["model.norm.weight"]
    if not mc.tie_embeddings:
        src["lm_head.weight"] = ["lm_head.weight"]
    return src


# --- LLaDA (OLMo-derived config keys and tensor names)
_LLADA = "model.transformer."


def _llada_config(cfg: Mapping[str, Any], has: HasTensor) -> ModelConfig:
    for key, allowed, default in (
        ("block_type", ("llama",), "llama"),
        ("activation_type", ("silu",), "silu"),
        ("layer_norm_type", ("rms",), "rms"),
        ("include_bias", (False,), False),
        ("alibi", (False,), False),
        ("rope", (True,), True),
        ("attention_layer_norm", (False,), False),
        ("input_emb_norm", (False,), False),
        ("scale_logits", (False,), False),
        ("block_group_size", (1,), 1),
        ("multi_query_attention", (False, None), None),
    ):
        _require_value(cfg, key, allowed, default)
    d = _req(cfg, "d_model")
    heads = _req(cfg, "n_heads")
    mlp = cfg.get("mlp_hidden_size")
    inter = _typed(cfg, "mlp_hidden_size", int) if mlp is not None else _req(cfg, "mlp_ratio") * d
    vocab = _opt(cfg, "embedding_size", 0) or _req(cfg, "vocab_size")
    return _make_config(
        vocab_size=vocab,
        hidden_size=d,
        num_layers=_req(cfg, "n_layers"),
        num_heads=heads,
        num_kv_heads=_opt(cfg, "n_kv_heads", heads),
        intermediate_size=inter,
        head_dim=0,
        rope_theta=_opt(cfg, "rope_theta", 10000.0, float),
        rms_eps=_opt(cfg, "rms_norm_eps", 1e-5, float),
        qkv_bias=_opt(cfg, "include_qkv_bias", False, bool),
        qk_norm=False,
        tie_embeddings=_tied(cfg, "weight_tying", has, _LLADA + "ff_out.weight"),
        max_position=_opt(cfg, "max_sequence_length", 4096),
    )


def _llada_sources(mc: ModelConfig) -> Sources:
    src: Sources = {"embed.weight": [_LLADA + "wte.weight"]}
    for i in range(mc.num_layers):
        c, b = f"layers.{i}.", f"{_LLADA}blocks.{i}."
        src[c + "attn_norm.weight"] = [b + "attn_norm.weight"]
        src[c + "attn.qkv.weight"] = [b + "q_proj.weight", b + "k_proj.weight", b + "v_proj.weight"]
        if mc.qkv_bias:
            src[c + "attn.qkv.bias"] = [b + "q_proj.bias", b + "k_proj.bias", b + "v_proj.bias"]
        src[c + "attn.o_proj.weight"] = [b + "attn_out.weight"]
        src[c + "mlp_norm.weight"] = [b + "ff_norm.weight"]
        # ff_proj is the SiLU-gated branch, up_proj the linear one
        src[c + "mlp.gate_up.weight"] = [b + "ff_proj.weight", b + "up_proj.weight"]
        src[c + "mlp.down_proj.weight"] = [b + "ff_out.weight"]
    src["norm.weight"] = [_LLADA + "ln_f.weight"]
    if not mc.tie_embeddings:
        src["lm_head.weight"] = [_LLADA + "ff_out.weight"]
    return src


LAYOUTS: dict[str, Layout] = {
    "diffill": Layout("diffill", _diffill_config, _diffill_sources),
    "qwen2": Layout("qwen2", _qwen2_config, _hf_sources),
    "qwen3": Layout("qwen3", _qwen3_config, _hf_sources),
    "llama": Layout("llama", _llama_config, _hf_sources),
    "llada": Layout("llada", _llada_config, _llada_sources),
}

# model_type (lower case) -> layout
# model_type -> layout: what the families declare (diffusion_core/families/), plus the plain
# architectures no family claims (a qwen3 or llama directory names its family in config.json)
_LAYOUT_BY_MODEL_TYPE = {"qwen3": "qwen3", "llama": "llama", **family_layouts()}


def detect_layout(cfg: Mapping[str, Any]) -> Layout:
    """The layout named by config.json's ``model_type``."""
    if cfg.get("model_type") is None:
        raise CheckpointError(f"missing required key 'model_type' in {CONFIG_FILE}")
    model_type = cfg["model_type"]
    key = _LAYOUT_BY_MODEL_TYPE.get(str(model_type).lower())
    if key is None:
        supported = ", ".join(sorted({"Dream", "CoDA", *_LAYOUT_BY_MODEL_TYPE} - {"dream", "coda"}))
        raise CheckpointError(f"unknown model_type {model_type!r} in {CONFIG_FILE} (supported: {supported})")
    return LAYOUTS[key]


# --------------------------------------------------------------------------------- tensors
