"""Load checkpoint directories into the engine's :class:`~diffusion_core.model.Transformer`.

Only JSON and safetensors are read: no pickle, no ``trust_remote_code``, nothing from the
directory is ever executed. Each supported layout maps its config keys onto
:class:`~diffusion_core.model.ModelConfig` and its tensor names onto the canonical fused names
(q/k/v concatenated into ``attn.qkv``, gate/up into ``mlp.gate_up``). Tensors are streamed one
at a time from (possibly sharded) safetensors files with ``safe_open``, so peak host memory stays
near the size of the model plus one tensor.

Every problem with a directory surfaces as one :class:`CheckpointError` whose message names the
file or key at fault, because users point the server at directories by hand.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer as Backend

from . import families as fam
from .families import FamilySpec
from .model import ModelConfig, Transformer
from .tokenizer import Tokenizer

__all__ = [
    "CheckpointError",
    "LoadedCheckpoint",
    "load_checkpoint",
    "load_model",
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


# --------------------------------------------------------------------------------- config
def read_config(path: str | Path) -> dict[str, Any]:
    """config.json of a checkpoint directory, as a dict."""
    root = Path(path)
    if not root.exists():
        raise CheckpointError(f"checkpoint directory {root} does not exist")
    if not root.is_dir():
        raise CheckpointError(f"checkpoint path {root} is not a directory")
    cfg_path = root / CONFIG_FILE
    if not cfg_path.is_file():
        raise CheckpointError(f"missing {CONFIG_FILE} in {root}")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"invalid JSON in {cfg_path}: {e}") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_path} must hold a JSON object")
    return cfg


def _req(cfg: Mapping[str, Any], key: str, kind: type = int) -> Any:
    if key not in cfg:
        raise CheckpointError(f"missing required key {key!r} in {CONFIG_FILE}")
    return _typed(cfg, key, kind)


def _opt(cfg: Mapping[str, Any], key: str, default: Any, kind: type = int) -> Any:
    if cfg.get(key) is None:
        return default
    return _typed(cfg, key, kind)


def _typed(cfg: Mapping[str, Any], key: str, kind: type) -> Any:
    value = cfg[key]
    ok = (
        isinstance(value, bool)
        if kind is bool
        else (
            isinstance(value, (int, float)) and not isinstance(value, bool)
            if kind is float
            else isinstance(value, int) and not isinstance(value, bool)
        )
    )
    if not ok:
        raise CheckpointError(
            f"invalid value for {key!r} in {CONFIG_FILE}: {value!r} (expected {kind.__name__})"
        )
    return kind(value)


def _make_config(**kw: Any) -> ModelConfig:
    for key in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size"):
        if kw[key] <= 0:
            raise CheckpointError(f"invalid {CONFIG_FILE}: {key} must be positive, got {kw[key]}")
    try:
        return ModelConfig(**kw)
    except ValueError as e:
        raise CheckpointError(f"invalid {CONFIG_FILE}: {e}") from None


# --------------------------------------------------------------------------------- layouts
# A layout knows one family of config keys and tensor names. ``sources`` maps each canonical
# parameter name to the checkpoint tensors concatenated (along dim 0) to make it.
Sources = dict[str, list[str]]


@dataclass(frozen=True)
class Layout:
    name: str
    model_config: Callable[[Mapping[str, Any]], ModelConfig]
    sources: Callable[[ModelConfig], Sources]


def _diffill_config(cfg: Mapping[str, Any]) -> ModelConfig:
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


def _diffill_sources(mc: ModelConfig) -> Sources:
    return {n: [n] for n in canonical_names(mc)}


LAYOUTS: dict[str, Layout] = {
    "diffill": Layout("diffill", _diffill_config, _diffill_sources),
}


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
            try:
                data = json.loads(index.read_text(encoding="utf-8"))
                weight_map = data["weight_map"]
                if not isinstance(weight_map, dict):
                    raise TypeError
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                raise CheckpointError(
                    f"invalid {INDEX_FILE} in {root}: expected JSON with a 'weight_map' object"
                ) from None
            self.where: dict[str, str] = {str(k): str(v) for k, v in weight_map.items()}
            for shard in sorted(set(self.where.values())):
                if not (root / shard).is_file():
                    raise CheckpointError(f"missing shard {shard} (named in {INDEX_FILE}) in {root}")
        elif single.is_file():
            self.where = {name: WEIGHTS_FILE for name in self._open(WEIGHTS_FILE).keys()}
        else:
            extra = ""
            if any(root.glob("*.bin")) or any(root.glob("*.pt")) or any(root.glob("*.pth")):
                extra = " (pickle weights such as pytorch_model.bin are never loaded; convert to safetensors)"
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

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._open(self._file(name)).get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        file = self._file(name)
        try:
            return self._open(file).get_tensor(name)
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"cannot read tensor {name!r} from {file}: {e}") from None

    def _file(self, name: str) -> str:
        if name not in self.where:
            raise CheckpointError(f"missing tensor {name!r} in the weights of {self.root}")
        return self.where[name]


def _fmt(shape: tuple[int, ...] | torch.Size) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def _load_weights(model: Transformer, store: _TensorStore, sources: Sources, dtype: torch.dtype) -> None:
    params = dict(model.named_parameters())
    missing = [n for n in params if n not in sources]
    if missing:
        raise CheckpointError(f"internal: layout gives no source for parameter {missing[0]!r}")
    # Check every name and shape first: a bad checkpoint fails in milliseconds, not after
    # minutes of reading gigabytes.
    for canon, names in sources.items():
        expected = tuple(params[canon].shape)
        for name in names:
            if name not in store:
                raise CheckpointError(
                    f"missing tensor {name!r} (needed for {canon}) in the weights of {store.root}"
                )
        shapes = [store.shape(n) for n in names]
        rows = sum(s[0] if s else 0 for s in shapes)
        if any(len(s) != len(expected) or s[1:] != expected[1:] for s in shapes) or rows != expected[0]:
            parts = ", ".join(f"{n} {_fmt(s)}" for n, s in zip(names, shapes))
            if len(names) == 1:
                raise CheckpointError(
                    f"tensor {names[0]!r} has shape {_fmt(shapes[0])}, expected {_fmt(expected)}"
                )
            raise CheckpointError(f"tensors {parts} do not make {canon} of shape {_fmt(expected)}")
    with torch.no_grad():
        for canon, names in sources.items():
            param = params[canon]
            row = 0
            for name in names:
                t = store.get(name)
                n = t.shape[0]
                param[row : row + n].copy_(t.to(dtype))
                row += n
                del t


def load_model(
    path: str | Path,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    layout: str | None = None,
) -> Transformer:
    """Only the network of a checkpoint directory (no tokenizer, no family): for conversions and
    parity tests of plain causal-LM layouts."""
    root = Path(path)
    cfg = read_config(root)
    lay = LAYOUTS[layout] if layout else detect_layout(cfg)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    return _build_model(root, cfg, lay, dev, dt)


def _build_model(
    root: Path, cfg: Mapping[str, Any], layout: Layout, device: torch.device, dtype: torch.dtype
) -> Transformer:
    mc = layout.model_config(cfg)
    with ExitStack() as stack:
        store = _TensorStore(root, stack)
        # Build on the meta device: no time or memory spent on a random init we overwrite.
        with torch.device("meta"):
            model = Transformer(mc)
        model = model.to_empty(device=device).to(dtype)
        _load_weights(model, store, layout.sources(mc), dtype)
    model.eval()
    model.requires_grad_(False)
    return model


def detect_layout(cfg: Mapping[str, Any]) -> Layout:
    """The layout named by config.json's ``model_type``."""
    model_type = cfg.get("model_type")
    if model_type is None:
        raise CheckpointError(f"missing required key 'model_type' in {CONFIG_FILE}")
    key = str(model_type).lower()
    if key in LAYOUTS:
        return LAYOUTS[key]
    raise CheckpointError(
        f"unknown model_type {model_type!r} in {CONFIG_FILE} (supported: {', '.join(sorted(LAYOUTS))})"
    )


# --------------------------------------------------------------------------------- tokenizer
def load_tokenizer(root: Path, cfg: Mapping[str, Any] | None = None) -> Tokenizer:
    """tokenizer.json from ``root``."""
    tok_path = root / TOKENIZER_FILE
    if not tok_path.is_file():
        raise CheckpointError(f"missing tokenizer files in {root}: expected {TOKENIZER_FILE}")
    try:
        return Tokenizer(Backend.from_file(str(tok_path)))
    except Exception as e:  # tokenizers raises a bare Exception for malformed files
        raise CheckpointError(f"invalid {TOKENIZER_FILE} in {root}: {e}") from None


# --------------------------------------------------------------------------------- entry points
def load_checkpoint(
    path: str | Path,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    family: str | None = None,
) -> LoadedCheckpoint:
    """Load model, tokenizer and family conventions from a checkpoint directory.

    ``family`` overrides detection from config.json (for checkpoints whose config does not say
    what they are, e.g. a plain ``qwen2`` config of a diffusion fine-tune)."""
    root = Path(path)
    cfg = read_config(root)
    layout = detect_layout(cfg)
    tokenizer = load_tokenizer(root, cfg)
    spec = _diffill_family(cfg, tokenizer) if family in (None, "diffill") else None
    if spec is None:
        raise CheckpointError(f"unknown family {family!r}")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    model = _build_model(root, cfg, layout, dev, dt)
    if spec.mask_id >= model.cfg.vocab_size:
        raise CheckpointError(
            f"mask token id {spec.mask_id} is outside the model's vocabulary ({model.cfg.vocab_size})"
        )
    model_id = str(cfg.get("model_id") or root.resolve().name)
    return LoadedCheckpoint(
        model=model, tokenizer=tokenizer, family=spec, model_id=model_id, device=dev, dtype=dt
    )


def _diffill_family(cfg: Mapping[str, Any], tok: Tokenizer) -> FamilySpec:
    def one(key: str, required: bool) -> int | None:
        id_key, tok_key = f"{key}_token_id", f"{key}_token"
        if cfg.get(id_key) is not None:
            return _typed(cfg, id_key, int)
        if cfg.get(tok_key) is not None:
            tid = tok.token_to_id(str(cfg[tok_key]))
            if tid is None:
                raise CheckpointError(
                    f"{key} token {cfg[tok_key]!r} (from {tok_key!r} in {CONFIG_FILE}) "
                    "is not in the tokenizer"
                )
            return tid
        if required:
            raise CheckpointError(f"missing {key} token: config.json needs {id_key!r} or {tok_key!r}")
        return None

    def many(key: str) -> tuple[int, ...]:
        id_key, tok_key = f"{key}_token_ids", f"{key}_tokens"
        if cfg.get(id_key) is not None:
            value = cfg[id_key]
            if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
                raise CheckpointError(
                    f"invalid value for {id_key!r} in {CONFIG_FILE}: expected a list of ids"
                )
            return tuple(value)
        out = []
        for t in cfg.get(tok_key) or []:
            tid = tok.token_to_id(str(t))
            if tid is None:
                raise CheckpointError(
                    f"{key} token {t!r} (from {tok_key!r} in {CONFIG_FILE}) is not in the tokenizer"
                )
            out.append(tid)
        return tuple(out)

    mask = one("mask", True)
    eos = many("eos") or (one("eos", True),)
    pad = one("pad", False)
    assert mask is not None and all(i is not None for i in eos)
    return fam.make_spec(
        name=str(cfg.get("family") or "diffill"),
        shifted=_opt(cfg, "shifted", False, bool),
        mask_id=mask,
        eos_ids=tuple(eos),
        pad_id=pad if pad is not None else eos[0],
        begin_ids=many("begin"),
        end_ids=many("end"),
        expand_id=one("expand", False),
        tokenizer=tok,
    )


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
        }
    )
    if extra:
        cfg.update(extra)
    (out / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    backend.save(str(out / TOKENIZER_FILE))
    return out
