"""A checkpoint directory's file names, its config.json, and the one error every problem with it
raises (:class:`CheckpointError`, whose message names the file or key at fault, because users
point the server at directories by hand)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .model import ModelConfig

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
