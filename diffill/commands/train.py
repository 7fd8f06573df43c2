"""`diffill train`: train (or resume) the small masked-diffusion FIM model on a built corpus."""

from __future__ import annotations

import argparse
import dataclasses

HELP = "train a masked-diffusion FIM model on a corpus built by `diffill corpus` (resumes from --out)"


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from diffusion_core.training.train import TrainConfig

    for f in dataclasses.fields(TrainConfig):
        if f.name == "extra":
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _bool if isinstance(f.default, bool) else type(f.default)
        p.add_argument(flag, type=kind, default=f.default, help=f"(default: {f.default})")
    p.add_argument("--export", default=None, help="also write the final model in the project's format here")
    p.add_argument(
        "--log", default=None, help="append JSON lines of metrics to this file (default: OUT/log.jsonl)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")


def run(args: argparse.Namespace) -> int:
    from diffusion_core.training.train import TrainConfig, Trainer

    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"extra"}
    cfg = TrainConfig(**{n: getattr(args, n) for n in names})
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
