"""Load checkpoint directories into the engine's :class:`~diffusion_core.model.Transformer`.

Only JSON and safetensors are read: no pickle, no ``trust_remote_code``, nothing from the
directory is ever executed. Each supported *layout* maps its config keys onto
:class:`~diffusion_core.model.ModelConfig` and its tensor names onto the canonical fused names
(q/k/v concatenated into ``attn.qkv``, gate/up into ``mlp.gate_up``); each *family*
(:mod:`~diffusion_core.families`) says how the checkpoint is used for infilling. Tensors are
streamed one at a time from (possibly sharded) safetensors files with ``safe_open``, so peak host
memory stays near the size of the model plus one tensor.

Layouts: ``diffill`` (the project's own format), ``qwen2`` (Dream family, Open-dCoder), ``qwen3``
(CoDA), ``llama`` and ``llada``.

Every problem with a directory surfaces as one :class:`CheckpointError` whose message names the
file or key at fault, because users point the server at directories by hand.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import AddedToken
from tokenizers import Tokenizer as Backend

from .families import FamilyError, FamilySpec, TokenizerInfo, build_family, detect_family
from .model import ModelConfig, Transformer
from .tokenizer import Tokenizer, qwen2_style_backend, read_merges, read_vocab

__all__ = [
    "CheckpointError",
    "CheckpointInfo",
    "LoadedCheckpoint",
    "inspect_checkpoint",
    "load_checkpoint",
    "load_model",
    "load_tokenizer",
    "read_config",
    "resolve_device",
    "resolve_dtype",
    "save_pretrained",
]

DIFFILL_MODEL_TYPE = "diffill"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
ADDED_TOKENS_FILE = "added_tokens.json"


class CheckpointError(ValueError):
    """A checkpoint directory is missing something or holds something invalid."""


@dataclass
class LoadedCheckpoint:
    model: Transformer
    tokenizer: Tokenizer
    family: FamilySpec
    model_id: str
    device: torch.device
    dtype: torch.dtype


# --------------------------------------------------------------------------------- devices / dtypes
_DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None means CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None means bf16 on CUDA (fast, and what the models were trained in) and fp32 on CPU
    (CPU bf16 matmuls are slow and imprecise)."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r} (use one of {', '.join(sorted(_DTYPES))})")
    return _DTYPES[key]


# --------------------------------------------------------------------------------- JSON / config
def _read_json(path: Path, required: bool) -> dict[str, Any] | None:
    if not path.is_file():
        if required:
            raise CheckpointError(f"missing {path.name} in {path.parent}")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"invalid JSON in {path}: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def read_config(path: str | Path) -> dict[str, Any]:
    """config.json of a checkpoint directory, as a dict."""
    root = Path(path)
    if not root.exists():
        raise CheckpointError(f"checkpoint directory {root} does not exist")
    if not root.is_dir():
        raise CheckpointError(f"checkpoint path {root} is not a directory")
    cfg = _read_json(root / CONFIG_FILE, required=True)
    assert cfg is not None
    return cfg


def _typed(cfg: Mapping[str, Any], key: str, kind: type) -> Any:
    value = cfg[key]
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok:
        raise CheckpointError(
            f"invalid value for {key!r} in {CONFIG_FILE}: {value!r} (expected {kind.__name__})"
        )
    return kind(value)


def _req(cfg: Mapping[str, Any], key: str, kind: type = int) -> Any:
    if cfg.get(key) is None:
        raise CheckpointError(f"missing required key {key!r} in {CONFIG_FILE}")
    return _typed(cfg, key, kind)


def _opt(cfg: Mapping[str, Any], key: str, default: Any, kind: type = int) -> Any:
    if cfg.get(key) is None:
        return default
    return _typed(cfg, key, kind)


def _require_value(cfg: Mapping[str, Any], key: str, allowed: Iterable[Any], default: Any) -> None:
    """Reject config values that change the maths to something the engine does not implement,
    instead of silently producing wrong logits."""
    value = cfg.get(key, default)
    value = default if value is None else value
    allowed = list(allowed)
    if value not in allowed:
        raise CheckpointError(
            f"unsupported value for {key!r} in {CONFIG_FILE}: {value!r} (supported: "
            + ", ".join(repr(a) for a in allowed)
            + ")"
        )


def _make_config(**kw: Any) -> ModelConfig:
    for key in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size"):
        if kw[key] <= 0:
            raise CheckpointError(f"invalid {CONFIG_FILE}: {key} must be positive, got {kw[key]}")
    if kw.get("head_dim", 0) < 0:
        raise CheckpointError(f"invalid {CONFIG_FILE}: head_dim must be positive, got {kw['head_dim']}")
    try:
        return ModelConfig(**kw)
    except ValueError as e:
        raise CheckpointError(f"invalid {CONFIG_FILE}: {e}") from None


# --------------------------------------------------------------------------------- layouts
# A layout knows one family of config keys and tensor names. ``sources`` maps each canonical
# parameter name to the checkpoint tensors concatenated (along dim 0) to make it.
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
_LAYOUT_BY_MODEL_TYPE = {
    "diffill": "diffill",
    "dream": "qwen2",
    "qwen2": "qwen2",
    "coda": "qwen3",
    "qwen3": "qwen3",
    "llama": "llama",
    "llada": "llada",
}


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
class _TensorStore:
    """Lazy access to the tensors of model.safetensors or of an index + shards."""

    def __init__(self, root: Path, stack: ExitStack) -> None:
        self.root = root
        self._stack = stack
        self._handles: dict[str, Any] = {}
        index = root / INDEX_FILE
        single = root / WEIGHTS_FILE
        if index.is_file():
            data = _read_json(index, required=True)
            assert data is not None
            weight_map = data.get("weight_map")
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise CheckpointError(f"invalid {INDEX_FILE} in {root}: expected a 'weight_map' object")
            self.where: dict[str, str] = {str(k): v for k, v in weight_map.items()}
            for shard in sorted(set(self.where.values())):
                if Path(shard).name != shard:
                    raise CheckpointError(f"invalid shard name {shard!r} in {INDEX_FILE}")
                if not (root / shard).is_file():
                    raise CheckpointError(f"missing shard {shard} (named in {INDEX_FILE}) in {root}")
        elif single.is_file():
            self.where = {name: WEIGHTS_FILE for name in self._open(WEIGHTS_FILE).keys()}
        else:
            extra = ""
            if any(root.glob("*.bin")) or any(root.glob("*.pt")) or any(root.glob("*.pth")):
                extra = " (pickle weights such as pytorch_model.bin are never loaded: convert to safetensors)"
            raise CheckpointError(f"missing {WEIGHTS_FILE} or {INDEX_FILE} in {root}{extra}")

    def _open(self, file: str) -> Any:
        if file not in self._handles:
            try:
                self._handles[file] = self._stack.enter_context(safe_open(str(self.root / file), "pt"))
            except Exception as e:  # safetensors raises its own error types for corrupt headers
                raise CheckpointError(f"cannot read {file} in {self.root}: {e}") from None
        return self._handles[file]

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def _slice(self, name: str) -> Any:
        file = self.where[name]
        try:
            return self._open(file).get_slice(name)
        except CheckpointError:
            raise
        except Exception:
            raise CheckpointError(f"missing tensor {name!r} in {file} (listed in {INDEX_FILE})") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._slice(name).get_shape())

    def dtype(self, name: str) -> str:
        return str(self._slice(name).get_dtype())

    def get(self, name: str) -> torch.Tensor:
        file = self.where[name]
        try:
            return self._open(file).get_tensor(name)
        except Exception as e:
            raise CheckpointError(f"cannot read tensor {name!r} from {file}: {e}") from None


_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|blocks)\.(\d+)\.")


def _check_layer_count(mc: ModelConfig, store: _TensorStore) -> None:
    """The layer count of config.json against the layers the weights hold, from the tensor names
    alone: a config that says 10^9 layers is refused at once, before anything per layer (even a
    meta-device model) is built."""
    found = {int(m.group(1)) for name in store.where if (m := _LAYER_INDEX.search(name))}
    have = max(found) + 1 if found else 0
    if mc.num_layers != have:
        raise CheckpointError(
            f"{CONFIG_FILE} in {store.root} says {mc.num_layers} layers but the weights hold {have}"
        )


def _fmt(shape: Iterable[int]) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def _check_weights(store: _TensorStore, sources: Sources, expected: Mapping[str, tuple[int, ...]]) -> None:
    """Every needed tensor exists with the right shape: a bad checkpoint fails in milliseconds
    (headers only), not after minutes of reading gigabytes."""
    for canon, names in sources.items():
        want = expected[canon]
        for name in names:
            if name not in store:
                raise CheckpointError(
                    f"missing tensor {name!r} (needed for {canon}) in the weights of {store.root}"
                )
        shapes = [store.shape(n) for n in names]
        if len(names) == 1:
            if shapes[0] != want:
                raise CheckpointError(
                    f"tensor {names[0]!r} has shape {_fmt(shapes[0])}, expected {_fmt(want)}"
                )
            continue
        rows = sum(s[0] for s in shapes if s)
        if any(len(s) != len(want) or s[1:] != want[1:] for s in shapes) or rows != want[0]:
            parts = ", ".join(f"{n} {_fmt(s)}" for n, s in zip(names, shapes))
            raise CheckpointError(f"tensors {parts} do not concatenate to {canon} of shape {_fmt(want)}")


def _copy_weights(model: Transformer, store: _TensorStore, sources: Sources, dtype: torch.dtype) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for canon, names in sources.items():
            param = params[canon]
            row = 0
            for name in names:
                t = store.get(name)
                n = t.shape[0] if t.dim() else 1
                param[row : row + n].copy_(t.to(dtype))
                row += n
                del t


# --------------------------------------------------------------------------------- tokenizer
def _token_str(value: Any) -> str | None:
    """tokenizer_config.json writes special tokens as strings or as AddedToken dicts."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _added_entries(root: Path, tcfg: Mapping[str, Any] | None) -> tuple[list[tuple[int, AddedToken]], str]:
    """Added tokens with their fixed ids, from tokenizer_config.json's ``added_tokens_decoder``
    (which carries the special flags) or else added_tokens.json (control tokens: all special)."""
    decoder = (tcfg or {}).get("added_tokens_decoder")
    entries: list[tuple[int, AddedToken]] = []
    if isinstance(decoder, dict) and decoder:
        for key, spec in decoder.items():
            content = _token_str(spec)
            if content is None or not str(key).isdigit():
                raise CheckpointError(
                    f"invalid entry {key!r} in 'added_tokens_decoder' of {TOKENIZER_CONFIG_FILE}"
                )
            entries.append(
                (
                    int(key),
                    AddedToken(
                        content,
                        single_word=bool(spec.get("single_word", False)),
                        lstrip=bool(spec.get("lstrip", False)),
                        rstrip=bool(spec.get("rstrip", False)),
                        normalized=bool(spec.get("normalized", False)),
                        special=bool(spec.get("special", True)),
                    ),
                )
            )
        return sorted(entries, key=lambda e: e[0]), TOKENIZER_CONFIG_FILE
    added = _read_json(root / ADDED_TOKENS_FILE, required=False)
    if added:
        for content, tid in added.items():
            if not isinstance(tid, int):
                raise CheckpointError(f"invalid id for {content!r} in {ADDED_TOKENS_FILE}: {tid!r}")
            entries.append((tid, AddedToken(content, normalized=False, special=True)))
    return sorted(entries, key=lambda e: e[0]), ADDED_TOKENS_FILE


def _install_added(backend: Backend, entries: list[tuple[int, AddedToken]], source: str) -> None:
    missing = [tok for tid, tok in entries if backend.token_to_id(tok.content) is None]
    present = [tok for tid, tok in entries if backend.token_to_id(tok.content) is not None]
    # re-adding a present token keeps its id and applies the special / strip flags
    backend.add_special_tokens([t for t in present if t.special])
    backend.add_tokens([t for t in present if not t.special])
    for tok in missing:
        (backend.add_special_tokens if tok.special else backend.add_tokens)([tok])
    for tid, tok in entries:
        got = backend.token_to_id(tok.content)
        if got != tid:
            raise CheckpointError(
                f"added token {tok.content!r} has id {tid} in {source} but the tokenizer gives it id {got}"
            )


def load_tokenizer(root: str | Path) -> tuple[Tokenizer, TokenizerInfo]:
    """The tokenizer of a checkpoint directory and the special tokens its config declares.

    tokenizer.json is used when present; otherwise a byte-level BPE is rebuilt from vocab.json +
    merges.txt the way the Qwen2 tokenizer builds it (the Dream family ships only those files and
    a custom tokenizer class), with the added tokens from tokenizer_config.json / added_tokens.json
    placed at their exact ids."""
    root = Path(root)
    tcfg = _read_json(root / TOKENIZER_CONFIG_FILE, required=False) or {}
    smap = _read_json(root / SPECIAL_TOKENS_FILE, required=False) or {}
    entries, source = _added_entries(root, tcfg)
    tok_path, vocab_path, merges_path = root / TOKENIZER_FILE, root / VOCAB_FILE, root / MERGES_FILE
    if tok_path.is_file():
        try:
            backend = Backend.from_file(str(tok_path))
        except Exception as e:  # tokenizers raises a bare Exception for malformed files
            raise CheckpointError(f"invalid {TOKENIZER_FILE} in {root}: {e}") from None
    elif vocab_path.is_file() and merges_path.is_file():
        try:
            vocab = read_vocab(vocab_path)
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError, TypeError) as e:
            raise CheckpointError(f"invalid {VOCAB_FILE} in {root}: {e}") from None
        try:
            merges = read_merges(merges_path)
        except (UnicodeDecodeError, ValueError) as e:
            raise CheckpointError(f"invalid {MERGES_FILE} in {root}: {e}") from None
        for tid, tok in entries:  # added tokens keep their published ids even across gaps
            vocab.setdefault(tok.content, tid)
        try:
            backend = qwen2_style_backend(vocab, merges)
        except Exception as e:
            raise CheckpointError(
                f"cannot build a tokenizer from {VOCAB_FILE} + {MERGES_FILE} in {root}: {e}"
            ) from None
    else:
        raise CheckpointError(
            f"missing tokenizer files in {root}: expected {TOKENIZER_FILE}, or {VOCAB_FILE} + {MERGES_FILE}"
        )
    _install_added(backend, entries, source)

    def declared(key: str) -> str | None:
        return _token_str(smap.get(key)) or _token_str(tcfg.get(key))

    extra = [_token_str(t) for t in (smap.get("additional_special_tokens") or [])]
    for t in (
        declared("bos_token"),
        declared("eos_token"),
        declared("pad_token"),
        declared("mask_token"),
        *extra,
    ):
        if t is not None and backend.token_to_id(t) is not None:
            backend.add_special_tokens([AddedToken(t, normalized=False, special=True)])
    bos = declared("bos_token")
    add_bos = tcfg.get("add_bos_token") is True
    bos_id = backend.token_to_id(bos) if bos else None
    if bos_id is not None and not add_bos:  # a post-processor (tokenizer.json) may add it
        with_specials = backend.encode("a", add_special_tokens=True).ids
        add_bos = bool(with_specials) and with_specials[0] == bos_id
    info = TokenizerInfo(
        bos=bos,
        eos=declared("eos_token"),
        pad=declared("pad_token"),
        mask=declared("mask_token"),
        add_bos=add_bos,
    )
    return Tokenizer(backend), info


# --------------------------------------------------------------------------------- inspection
@dataclass
class CheckpointInfo:
    """Everything about a checkpoint directory that can be known without reading tensor data."""

    path: Path
    model_id: str
    layout: str
    config: ModelConfig
    family: FamilySpec
    tokenizer: Tokenizer
    parameters: int
    stored_dtype: str
    raw_config: dict[str, Any] = field(repr=False, default_factory=dict)  # config.json as read

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (used by ``diffill info``)."""
        f, tok = self.family, self.tokenizer

        def named(ids: Iterable[int]) -> list[dict[str, Any]]:
            return [{"id": i, "token": tok.id_to_token(i)} for i in ids]

        return {
            "path": str(self.path),
            "model_id": self.model_id,
            "family": f.name,
            "layout": self.layout,
            "shifted_logits": f.shifted,
            "length_policy": f.native_length,
            "parameters": self.parameters,
            "stored_dtype": self.stored_dtype,
            "vocab_size": self.config.vocab_size,
            "tokenizer_vocab_size": tok.vocab_size,
            "special_tokens": {
                "mask": named([f.mask_id])[0],
                "eos": named(f.eos_ids),
                "pad": named([f.pad_id])[0],
                "begin": named(f.begin_ids),
                "end": named(f.end_ids),
                "expand": named([f.expand_id])[0] if f.expand_id is not None else None,
            },
            "config": self.config.to_dict(),
        }


def _resolve_family(
    cfg: Mapping[str, Any], tok: Tokenizer, info: TokenizerInfo, family: str | None
) -> FamilySpec:
    name = family or detect_family(cfg)
    if name is None:
        raise CheckpointError(
            f"cannot tell which diffusion family model_type {cfg.get('model_type')!r} in {CONFIG_FILE} "
            "belongs to (a plain causal LM is not a diffusion model); pass family= or add "
            "'diffill_family' to config.json (dream, open-dcoder, coda, llada or diffill)"
        )
    try:
        return build_family(name, cfg, tok, info)
    except FamilyError as e:
        raise CheckpointError(str(e)) from None


def _model_id(root: Path, cfg: Mapping[str, Any]) -> str:
    value = cfg.get("model_id")
    return str(value) if isinstance(value, str) and value else root.resolve().name


def _plan(root: Path, family: str | None, stack: ExitStack) -> tuple[CheckpointInfo, _TensorStore, Layout]:
    cfg = read_config(root)
    layout = detect_layout(cfg)
    store = _TensorStore(root, stack)
    mc = layout.model_config(cfg, store.__contains__)
    _check_layer_count(mc, store)
    tok, info = load_tokenizer(root)
    spec = _resolve_family(cfg, tok, info, family)
    for what, tid in (("mask", spec.mask_id), ("pad", spec.pad_id), *(("eos", i) for i in spec.eos_ids)):
        if not 0 <= tid < mc.vocab_size:
            raise CheckpointError(
                f"{what} token id {tid} is outside the model's vocabulary ({mc.vocab_size})"
            )
    with torch.device("meta"):
        meta = Transformer(mc)
    expected = {n: tuple(p.shape) for n, p in meta.named_parameters()}
    sources = layout.sources(mc)
    if set(sources) != set(expected):
        raise CheckpointError(f"internal: layout {layout.name} does not cover every parameter")
    _check_weights(store, sources, expected)
    stored = store.dtype(sources["embed.weight"][0])
    result = CheckpointInfo(
        path=root,
        model_id=_model_id(root, cfg),
        layout=layout.name,
        config=mc,
        family=spec,
        tokenizer=tok,
        parameters=sum(p.numel() for p in meta.parameters()),
        stored_dtype=stored,
        raw_config=dict(cfg),
    )
    return result, store, layout


def inspect_checkpoint(path: str | Path, family: str | None = None) -> CheckpointInfo:
    """Validate a checkpoint directory (config, tokenizer, family, every tensor's name and shape)
    without reading tensor data, and describe it."""
    with ExitStack() as stack:
        return _plan(Path(path), family, stack)[0]


# --------------------------------------------------------------------------------- entry points
def load_checkpoint(
    path: str | Path,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    family: str | None = None,
) -> LoadedCheckpoint:
    """Load model, tokenizer and family conventions from a checkpoint directory.

    ``family`` overrides detection from config.json (for checkpoints whose config does not say
    what they are, e.g. a plain ``qwen3`` or ``llama`` config of a diffusion fine-tune)."""
    root = Path(path)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    with ExitStack() as stack:
        info, store, layout = _plan(root, family, stack)
        model = _materialise(info.config, dev, dt)
        _copy_weights(model, store, layout.sources(info.config), dt)
    return LoadedCheckpoint(
        model=model,
        tokenizer=info.tokenizer,
        family=info.family,
        model_id=info.model_id,
        device=dev,
        dtype=dt,
    )


def load_model(
    path: str | Path,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    layout: str | None = None,
) -> Transformer:
    """Only the network of a checkpoint directory (no tokenizer, no family): for conversions and
    for parity tests of plain causal-LM layouts."""
    root = Path(path)
    cfg = read_config(root)
    lay = LAYOUTS[layout] if layout else detect_layout(cfg)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    with ExitStack() as stack:
        store = _TensorStore(root, stack)
        mc = lay.model_config(cfg, store.__contains__)
        _check_layer_count(mc, store)
        model = _materialise(mc, dev, dt)
        expected = {n: tuple(p.shape) for n, p in model.named_parameters()}
        sources = lay.sources(mc)
        _check_weights(store, sources, expected)
        _copy_weights(model, store, sources, dt)
    return model


def _materialise(mc: ModelConfig, device: torch.device, dtype: torch.dtype) -> Transformer:
    # Built on the meta device and cast there, then allocated once in the target dtype: no random
    # init that is overwritten, and no transient fp32 copy (a 7B model would need 28 GB for it).
    with torch.device("meta"):
        model = Transformer(mc)
    model = model.to(dtype).to_empty(device=device)
    model.eval()
    model.requires_grad_(False)
    return model


def save_pretrained(
    model: Transformer,
    tokenizer_backend: Backend | Tokenizer,
    family: FamilySpec,
    out_dir: str | Path,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` in the project's own format: config.json (``model_type: "diffill"``, the
    ModelConfig keys and the family's token ids and strings), model.safetensors, tokenizer.json.

    ``extra`` keys are merged into config.json (e.g. ``model_id`` or training provenance)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backend = tokenizer_backend.backend if isinstance(tokenizer_backend, Tokenizer) else tokenizer_backend

    def text(i: int | None) -> str | None:
        return None if i is None else backend.id_to_token(i)

    cfg: dict[str, Any] = {"model_type": DIFFILL_MODEL_TYPE, "architectures": ["DiffillTransformer"]}
    cfg.update(model.cfg.to_dict())
    cfg.update(
        {
            "family": family.name,
            "shifted": family.shifted,
            "mask_token": text(family.mask_id),
            "mask_token_id": family.mask_id,
            "eos_tokens": [text(i) for i in family.eos_ids],
            "eos_token_ids": list(family.eos_ids),
            "pad_token": text(family.pad_id),
            "pad_token_id": family.pad_id,
            "begin_tokens": [text(i) for i in family.begin_ids],
            "begin_token_ids": list(family.begin_ids),
            "end_tokens": [text(i) for i in family.end_ids],
            "end_token_ids": list(family.end_ids),
            "expand_token_id": family.expand_id,
            "length_prediction": family.predicts_length,
        }
    )
    if extra:
        cfg.update(extra)
    (out / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    backend.save(str(out / TOKENIZER_FILE))
    return out
