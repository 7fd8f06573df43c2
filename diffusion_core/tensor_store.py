"""The weights of a checkpoint: (possibly sharded) safetensors files, streamed one tensor at a time
with ``safe_open`` so peak host memory stays near the model's size plus one tensor; names and
shapes are checked before any data is read."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .checkpoint_config import CONFIG_FILE, INDEX_FILE, WEIGHTS_FILE, CheckpointError, _read_json
from .layouts import Sources
from .model import ModelConfig, Transformer


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
