"""`diffill eval humaneval-infilling`: execution-based pass@1 of a model (or a samples file)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._model_args import add_model_arguments

HELP = "evaluate a model: `diffill eval humaneval-infilling --subset single-line --data DIR`"

DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "benchmarks" / "humaneval-infilling"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("benchmark", choices=["humaneval-infilling"])
    p.add_argument(
        "--subset",
        default="single-line",
        choices=["single-line", "random-span-light", "multi-line", "random-span"],
    )
    p.add_argument("--data", default=str(DEFAULT_DATA), help="directory holding the *.jsonl.gz files")
    add_model_arguments(p)
    p.add_argument(
        "--limit",
        type=int,
        default=0,
        help="only N problems, evenly spaced over the subset so every task is represented (0 = all)",
    )
    p.add_argument(
        "--length",
        default="fixed",
        choices=["fixed", "predict", "ensemble", "oracle"],
        help="mask-count policy: fixed --max-tokens, predicted by the model from --max-tokens masks, "
        "the sampler's length ensemble, or the true length",
    )
    p.add_argument(
        "--max-tokens", type=int, default=32, help="mask count for --length fixed / predict (default 32)"
    )
    p.add_argument("--quality", type=float, default=1.0, help="sampler quality (default 1: best)")
    p.add_argument(
        "--samples", metavar="FILE", help="score this {task_id, completion} jsonl instead of generating"
    )
    p.add_argument(
        "--control",
        choices=["empty", "canonical"],
        help="score the empty completion (harness must fail it) or the true middle (must pass)",
    )
    p.add_argument("--save-samples", metavar="FILE", help="write the generated completions here")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per program (wall clock)")
    p.add_argument("--workers", type=int, default=2, help="programs run in parallel")
    p.add_argument("--out", metavar="FILE", help="write the summary JSON here too")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")


def run(args: argparse.Namespace) -> int:
    from diffusion_core.evaluation.humaneval import (
        generate,
        load_problems,
        read_samples,
        score,
        spread,
        write_samples,
    )

    problems = load_problems(args.data, args.subset)
    if args.limit and args.limit < len(problems):
        problems = spread(problems, args.limit)
    settings: dict = {}
    info: dict[str, dict] = {}
    if args.samples:
        completions = read_samples(args.samples)
        settings["source"] = f"samples:{args.samples}"
    elif args.control:
        key = "canonical_solution"
        completions = {p["task_id"]: (p[key] if args.control == "canonical" else "") for p in problems}
        settings["source"] = f"control:{args.control}"
    else:
        import torch

        from diffusion_core.engine import Engine
        from diffusion_core.sampler import SamplingOptions

        if args.threads:
            torch.set_num_threads(args.threads)
        engine = Engine.from_pretrained(args.model, device=args.device, dtype=args.dtype)
        completions, info = generate(
            engine,
            problems,
            length=args.length,
            max_tokens=args.max_tokens,
            options=SamplingOptions(quality=args.quality),
        )
        settings.update(model=engine.model_id, length=args.length, quality=args.quality)
        if args.length in ("fixed", "predict"):
            settings["max_tokens"] = args.max_tokens
        if args.save_samples:
            write_samples(args.save_samples, completions, info)
    res = score(problems, completions, args.subset, timeout=args.timeout, workers=args.workers)
    if info:
        res.mean_latency_ms = sum(v["latency_ms"] for v in info.values()) / len(info)
        res.mean_tokens = sum(v["tokens"] for v in info.values()) / len(info)
    if args.limit:
        settings["limit"] = args.limit
    res.settings = settings
    summary = res.summary()
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    return 0
