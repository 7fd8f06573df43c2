"""`diffill info [DIR]`: what a checkpoint directory is, without loading its weights.

Reads config.json, the tokenizer files and the safetensors headers only, so it answers in about a
second even for a 7B checkpoint and doubles as a validator: a broken directory prints the one
CheckpointError that names the missing or invalid file or key, and exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HELP = "describe a checkpoint directory: family, parameters, dtype, special token ids"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model", nargs="?", metavar="DIR", help="checkpoint directory (default: the embedded model)"
    )
    p.add_argument("--family", help="override the detected family (dream, open-dcoder, coda, llada, diffill)")
    p.add_argument("--device", help="device the weights would load on (default: cuda when available)")
    p.add_argument("--dtype", help="dtype the weights would load as (default: bf16 on cuda, fp32 on cpu)")
    p.add_argument(
        "--base", metavar="DIR", help="Diffill-Coder's base directory (default: the converted cache)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def _fmt_tokens(entries: list[dict[str, Any]] | dict[str, Any] | None) -> str:
    if entries is None:
        return "-"
    if isinstance(entries, dict):
        entries = [entries]
    if not entries:
        return "-"
    return ", ".join(f"{e['id']} {e['token']!r}" for e in entries)


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def describe_coder(path: Path, base: str | None) -> dict:
    """Diffill-Coder: the adapter directory, the base it runs on, how it was trained."""
    from diffusion_core.checkpoint import read_config
    from diffusion_core.coder.adapter import INDEX
    from diffusion_core.coder.base import base_cache_dir, is_converted

    cfg = read_config(path)
    base_dir = Path(base) if base else base_cache_dir()
    ready = bool(base) or is_converted(base_dir)
    out: dict[str, Any] = {
        "path": str(path),
        "model_id": cfg.get("model_id", "diffill-coder"),
        "family": "diffill-coder",
        "base": {
            **(cfg.get("base") or {}),
            "directory": str(base_dir),
            "ready": ready if base else (ready or "converted from the registry wheels on first use"),
        },
        "adapter": cfg.get("adapter"),
        "adapter_bytes": sum(f.stat().st_size for f in path.glob("adapter*.safetensors")),
        "adapter_index": INDEX,
        "window": cfg.get("window"),
        "training": {k: v for k, v in (cfg.get("training") or {}).items() if k != "history"},
        "quality": "1 = the base model's own greedy answer, token for token; lower = more tokens "
        "committed per forward by the adapter (faster)",
    }
    if ready:
        out["base"].update(_tensor_summary(base_dir))
    return out


def _tensor_summary(root: Path) -> dict[str, Any]:
    """Parameter count and stored dtype from the safetensors headers (no tensor data read)."""
    from safetensors import safe_open

    count, dtypes = 0, set()
    for file in sorted(root.glob("*.safetensors")):
        with safe_open(str(file), "pt") as fh:
            for name in fh.keys():
                sl = fh.get_slice(name)
                n = 1
                for d in sl.get_shape():
                    n *= int(d)
                count += n
                dtypes.add(str(sl.get_dtype()))
    return {"parameters": count, "stored_dtype": "/".join(sorted(dtypes))}


def describe(
    path: str | Path | None,
    family: str | None,
    device: str | None,
    dtype: str | None,
    base: str | None = None,
) -> dict:
    """The summary `diffill info` prints (also handy for scripts and the HTTP server)."""
    from diffusion_core.checkpoint import inspect_checkpoint, resolve_device, resolve_dtype
    from diffusion_core.coder.load import is_coder_dir
    from diffusion_core.engine import resolve_model_path

    root = resolve_model_path(path)
    if is_coder_dir(root):
        return describe_coder(root, base)
    info = inspect_checkpoint(root, family=family)
    dev = resolve_device(device)
    summary = info.as_dict()
    summary["load_device"] = str(dev)
    summary["load_dtype"] = str(resolve_dtype(dtype, dev)).removeprefix("torch.")
    return summary


def run(args: argparse.Namespace) -> int:
    from diffusion_core.checkpoint import CheckpointError

    try:
        s = describe(args.model, args.family, args.device, args.dtype, args.base)
    except (CheckpointError, ValueError) as e:
        print(f"diffill info: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(s, indent=2, ensure_ascii=False))
        return 0
    if s["family"] == "diffill-coder":
        print(_coder_text(s))
        return 0
    sp = s["special_tokens"]
    cfg = s["config"]
    lines = [
        f"model:       {s['model_id']}  ({s['path']})",
        f"family:      {s['family']}  (layout {s['layout']}, "
        + ("shifted logits" if s["shifted_logits"] else "unshifted logits")
        + ")",
        f"length:      {s['length_policy']} (what length=auto decodes with)",
        f"parameters:  {s['parameters']:,} ({_human(s['parameters'])})",
        f"dtype:       stored {s['stored_dtype']}, loads as {s['load_dtype']} on {s['load_device']}",
        f"shape:       {cfg['num_layers']} layers, hidden {cfg['hidden_size']}, "
        f"{cfg['num_heads']} heads / {cfg['num_kv_heads']} kv heads (head dim {cfg['head_dim']}), "
        f"mlp {cfg['intermediate_size']}",
        f"vocabulary:  model {s['vocab_size']}, tokenizer {s['tokenizer_vocab_size']}",
        f"mask:        {_fmt_tokens(sp['mask'])}",
        f"eos:         {_fmt_tokens(sp['eos'])}",
        f"pad:         {_fmt_tokens(sp['pad'])}",
        f"begin:       {_fmt_tokens(sp['begin'])}",
        f"end:         {_fmt_tokens(sp['end'])}",
    ]
    if sp["expand"] is not None:
        lines.append(f"expand:      {_fmt_tokens(sp['expand'])}")
    print("\n".join(lines))
    return 0


def _coder_text(s: dict) -> str:
    b, a, t = s["base"], s["adapter"] or {}, s["training"]
    lines = [
        f"model:       {s['model_id']}  ({s['path']})",
        "family:      diffill-coder (causal FIM context, bidirectional masked window, shifted logits)",
        f"base:        {b.get('name', '?')}  ({b['directory']}; "
        + ("ready" if b["ready"] is True else str(b["ready"]))
        + ")",
        f"adapter:     LoRA rank {a.get('rank')} on {', '.join(a.get('targets', []))} + mask embedding "
        f"(id {a.get('mask_id')}), {s['adapter_bytes'] / 1e6:.1f} MB",
        f"window:      {s['window']} middle positions denoised at once",
        f"training:    {t.get('tokens_seen', 0):,} token positions, {t.get('steps', 0):,} steps",
        f"quality:     {s['quality']}",
    ]
    if "parameters" in b:
        lines.insert(
            3,
            f"parameters:  base {b['parameters']:,} ({_human(b['parameters'])}), stored {b['stored_dtype']}",
        )
    return "\n".join(lines)
