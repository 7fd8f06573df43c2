"""Load checkpoint directories into the engine's :class:`~diffusion_core.model.Transformer`.

Only JSON and safetensors are read: no pickle, no ``trust_remote_code``, nothing from the
directory is ever executed. The jobs live in their own modules: ``checkpoint_config.py`` (file
names, config.json, :class:`CheckpointError`), ``layouts.py`` (each architecture's config keys and
tensor names), ``tensor_store.py`` (the safetensors files), ``tokenizer_files.py`` (the tokenizer)
and ``runtime.py`` (device and dtype policy); each *family* (:mod:`~diffusion_core.families`) says
how the checkpoint is used for infilling. This module plans, inspects, loads and saves.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer as Backend

from .checkpoint_config import (
    CONFIG_FILE,
    DIFFILL_MODEL_TYPE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    read_config,
)
from .families import FamilyError, FamilySpec, TokenizerInfo, build_family, detect_family
from .layouts import LAYOUTS, Layout, detect_layout
from .model import ModelConfig, Transformer
from .runtime import resolve_device, resolve_dtype
from .tensor_store import _check_layer_count, _check_weights, _copy_weights, _TensorStore
from .tokenizer import Tokenizer
from .tokenizer_files import load_tokenizer

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


@dataclass
class LoadedCheckpoint:
    model: Transformer
    tokenizer: Tokenizer
    family: FamilySpec
    model_id: str
    device: torch.device
    dtype: torch.dtype


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
