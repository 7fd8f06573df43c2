"""`diffill train`: train (or resume) a model on a corpus built by `diffill corpus`.

Two kinds of run share the command:
- ``--coder``: Diffill-Coder's adapter on top of the pretrained base (the default model);
  resumes from ``--out`` (state.safetensors), else continues the shipped adapter, and exports
  the adapter (bf16 safetensors shards) to ``--export`` as it goes;
- otherwise: the small masked-diffusion model trained from scratch (the tiny test model).
"""

from __future__ import annotations

import argparse
import dataclasses

HELP = "train Diffill-Coder's adapter (--coder) or a small diffusion model from scratch (resumes from --out)"


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _configs() -> tuple[type, type]:
    from diffusion_core.coder.training import CoderTrainConfig
    from diffusion_core.training.train import TrainConfig

    return TrainConfig, CoderTrainConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--coder", action="store_true", help="train Diffill-Coder's adapter (the default model)")
    p.add_argument("--base", metavar="DIR", help="with --coder: an upstream Qwen2.5-Coder-0.5B directory")
    seen: dict[str, object] = {}
    for cls in _configs():
        for f in dataclasses.fields(cls):
            if f.name == "extra" or f.name in seen:
                continue
            seen[f.name] = f.default
            flag = "--" + f.name.replace("_", "-")
            kind = _bool if isinstance(f.default, bool) else type(f.default)
            p.add_argument(flag, type=kind, default=None, help=f"(default: {f.default})")
    p.add_argument(
        "--export",
        default=None,
        help="also write the trained model here (--coder: the adapter, default diffusion_core/coder/weights)",
    )
    p.add_argument(
        "--log", default=None, help="append JSON lines of metrics to this file (default: OUT/log.jsonl)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")


def _config(cls: type, args: argparse.Namespace, other: type):  # noqa: ANN202
    from . import CommandError

    mine = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    theirs = {f.name for f in dataclasses.fields(other)} - mine
    wrong = sorted(n for n in theirs if getattr(args, n, None) is not None)
    if wrong:
        kind = "--coder runs" if cls.__name__.startswith("Coder") else "runs without --coder"
        raise CommandError(f"{', '.join('--' + w.replace('_', '-') for w in wrong)} do not apply to {kind}")
    return cls(**{n: getattr(args, n) for n in mine if getattr(args, n, None) is not None})


def run(args: argparse.Namespace) -> int:
    TrainConfig, CoderTrainConfig = _configs()
    if args.coder:
        return _run_coder(_config(CoderTrainConfig, args, TrainConfig), args)
    from diffusion_core.training.train import Trainer

    cfg = _config(TrainConfig, args, CoderTrainConfig)
    trainer = Trainer(cfg)
    if trainer.try_resume():
        print(f"resumed from {trainer.state_path} at step {trainer.step}")
    n = trainer.model.cfg.num_parameters()
    print(f"model: {n / 1e6:.2f}M parameters on {trainer.device}; {len(trainer.maker.texts)} training files")
    trainer.run(log_file=args.log or f"{cfg.out}/log.jsonl", progress=not args.no_progress)
    if args.export:
        trainer.export(args.export)
        print(f"exported to {args.export}")
    return 0


def _run_coder(cfg, args: argparse.Namespace) -> int:  # noqa: ANN001
    from pathlib import Path

    import torch

    from diffusion_core.checkpoint import load_model, load_tokenizer
    from diffusion_core.coder.base import BASE_NAME, BASE_SHA256
    from diffusion_core.coder.family import END_TOKEN
    from diffusion_core.coder.load import (
        CODER_MODEL_TYPE,
        base_shape,
        coder_weights_dir,
        is_coder_dir,
        resolve_base,
    )
    from diffusion_core.coder.training import CoderTrainer, pick_dtype
    from diffusion_core.training.corpus import read_texts

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    base_dir = resolve_base(args.base)
    dtype = pick_dtype(cfg.dtype)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(base_dir, device=device, dtype=dtype, layout="qwen2")
    tok, _ = load_tokenizer(base_dir)
    texts = read_texts(cfg.data, "train", max_bytes=int(cfg.train_mb * 1e6))
    val = read_texts(cfg.data, "validation", max_bytes=4_000_000)
    trainer = CoderTrainer(cfg, model, tok, tok.token_to_id(END_TOKEN), texts, val)
    export = Path(args.export) if args.export else coder_weights_dir()
    if trainer.try_resume():
        print(f"resumed from {cfg.out} at step {trainer.step}")
    else:
        start = cfg.init_from or (str(export) if is_coder_dir(export) else "")
        if start:
            trainer.init_from(start)
            print(f"continuing the adapter in {start} ({trainer.tokens_seen:,} tokens seen so far)")
    n = sum(p.numel() for p in trainer.adapter.parameters())
    print(
        f"adapter: {n / 1e6:.2f}M parameters on {BASE_NAME} ({device}, {str(dtype)[6:]}); "
        f"{len(texts)} training files, {len(val)} validation files"
    )
    config = {
        "model_type": CODER_MODEL_TYPE,
        "model_id": "diffill-coder",
        "base": {"name": BASE_NAME, "gguf_sha256": BASE_SHA256, "shape": base_shape(model)},
        "window": cfg.window,
        "fim_order": cfg.fim_order,
    }
    trainer.run(export, config, progress=not args.no_progress)
    print(f"adapter written to {export}")
    return 0
