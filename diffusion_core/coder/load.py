"""Load Diffill-Coder: the base (cache or ``--base DIR``) plus the adapter directory.

An adapter directory is recognised by ``"model_type": "diffill-coder"`` in its config.json; it
holds no base weights, only the adapter, so the same loader serves the shipped adapter and any
retrained one.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import CheckpointError, load_model, load_tokenizer, read_config, resolve_device
from ..families import FamilySpec
from ..model import Transformer
from ..runtime import cpu_numerics, fit_threads, head_format
from ..tokenizer import Tokenizer
from ..weight_only import QUANT_KINDS
from .adapter import Adapter, AdapterError, load_adapter
from .family import FIM_ORDERS, coder_family
from .window_policy import WindowChoice, choose_window

__all__ = [
    "CODER_MODEL_TYPE",
    "LoadedCoder",
    "coder_weights_dir",
    "is_coder_dir",
    "load_coder",
    "resolve_base",
]

CODER_MODEL_TYPE = "diffill-coder"
log = logging.getLogger(__name__)
# what an adapter records of the base it was trained on (and a --base directory must match)
SHAPE_KEYS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size")


def coder_weights_dir() -> Path:
    """The adapter that ships inside the package (the default model)."""
    return Path(__file__).resolve().parent / "weights"


def is_coder_dir(path: str | Path) -> bool:
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text(encoding="utf-8")).get("model_type") == CODER_MODEL_TYPE
    except (OSError, ValueError, AttributeError):
        return False


@dataclass
class LoadedCoder:
    model: Transformer
    adapter: Adapter
    tokenizer: Tokenizer
    family: FamilySpec
    model_id: str
    device: torch.device
    dtype: torch.dtype
    window: WindowChoice  # the draft window the sampler uses here, and why
    base_dir: Path
    adapter_dir: Path
    config: dict[str, Any]
    weights: str = "plain"  # CPU weight format (runtime.WEIGHT_FORMATS): plain, int8, int4, fp16 or w8a8
    weights_bytes: int = 0  # what the quantized (int8, int4) or packed (fp16, w8a8) copies add


def coder_numerics(
    dtype: str | torch.dtype | None, device: torch.device, weights: str | None
) -> tuple[torch.dtype, str]:
    """bf16 and plain weights on CUDA; on the CPU the dtype and weight format measured fastest
    for a typical request (runtime.cpu_numerics), what the caller fixed kept."""
    from ..checkpoint import resolve_dtype

    fixed = None if dtype is None else resolve_dtype(dtype, device)
    if device.type != "cpu":
        return (fixed or resolve_dtype(None, device)), "plain"
    try:
        return cpu_numerics(fixed, weights)
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def resolve_base(base: str | Path | None, progress: bool = True) -> Path:
    """The base directory: the user's upstream directory when given (or ``$DIFFILL_BASE``), else
    the converted cache (built on first use)."""
    base = base or os.environ.get("DIFFILL_BASE") or None
    if base is None:
        from .base import ensure_base

        return ensure_base(progress)
    root = Path(base)
    cfg = read_config(root)
    if str(cfg.get("model_type", "")).lower() != "qwen2":
        raise CheckpointError(
            f"base {root}: model_type {cfg.get('model_type')!r} is not qwen2 (Qwen2.5-Coder)"
        )
    return root


def base_shape(model: Transformer) -> dict[str, int]:
    return {k: getattr(model.cfg, k) for k in SHAPE_KEYS}


def load_coder(
    adapter_dir: str | Path,
    base: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    progress: bool = True,
    weights: str | None = None,
) -> LoadedCoder:
    """The base with the adapter on top. ``weights``, the CPU's weight format: ``plain``,
    ``int8`` or ``int4`` (weight-only, for few-row calls: diffusion_core/weight_only.py), ``fp16`` (weights
    packed for fbgemm, every call, fp32 activations) or ``w8a8`` (packed for fbgemm: every call
    with fp32 activations, the few-row calls with bf16: fbgemm_weights.py); None = as
    ``$DIFFILL_WEIGHTS`` says (default: with the dtype, the fastest measured on this CPU).
    Ignored off the CPU."""
    adapter_dir = Path(adapter_dir)
    cfg = read_config(adapter_dir)
    dev = resolve_device(device)
    if dev.type == "cpu":
        fit_threads()  # before measuring anything
    dt, fmt = coder_numerics(dtype, dev, weights)
    base_dir = resolve_base(base, progress)
    model = load_model(base_dir, device=dev, dtype=dt, layout="qwen2")
    want = (cfg.get("base") or {}).get("shape")
    if isinstance(want, dict) and want != base_shape(model):
        raise CheckpointError(
            f"the adapter in {adapter_dir} was trained on a base of shape {want}, but {base_dir} has "
            f"{base_shape(model)} (Diffill-Coder needs a Qwen2.5-Coder-0.5B or -0.5B-Instruct base)"
        )
    added = model.quantize(fmt) if fmt in QUANT_KINDS else model.pack(fmt) if fmt != "plain" else 0
    if (head := head_format(fmt, dt)) is not None:  # an int4 model's LM head keeps 8 bits
        added += model.pack(head, head_only=True)
    tok, _ = load_tokenizer(base_dir)
    try:
        # fp32 factors on the CPU (thin matmuls run faster than in bf16 there); the model's dtype on GPUs
        adapter = load_adapter(adapter_dir, model.cfg, dev, torch.float32 if dev.type == "cpu" else dt)
    except AdapterError as e:
        raise CheckpointError(str(e)) from None
    order = cfg.get("fim_order", "psm")
    if order not in FIM_ORDERS:
        raise CheckpointError(
            f"invalid value for 'fim_order' in {adapter_dir / 'config.json'}: {order!r} "
            f"(use {' or '.join(FIM_ORDERS)})"
        )
    try:
        family = coder_family(tok, adapter.mask_id, model.cfg.vocab_size, order)
    except ValueError as e:
        raise CheckpointError(f"{base_dir}: {e}") from None
    window = cfg.get("window", 16)
    if not isinstance(window, int) or window < 1:
        raise CheckpointError(f"invalid value for 'window' in {adapter_dir / 'config.json'}: {window!r}")
    try:
        choice = choose_window(model, adapter, window, dev)  # measured on this machine
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    log.info("draft window %d (configured %d): %s", choice.window, window, choice.reason)
    log.info("%s weights, %s activations, prompt order %s", fmt, str(dt).removeprefix("torch."), order)
    return LoadedCoder(
        model=model,
        adapter=adapter,
        tokenizer=tok,
        family=family,
        model_id=str(cfg.get("model_id") or CODER_MODEL_TYPE),
        device=dev,
        dtype=dt,
        window=choice,
        base_dir=base_dir,
        adapter_dir=adapter_dir,
        config=cfg,
        weights=fmt,
        weights_bytes=added,
    )
