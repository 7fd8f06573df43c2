"""`diffill bench`: latency of the engine against its baselines, on random-weight models.

The grid and the method are documented in :mod:`diffusion_core.evaluation.bench`; this file only
parses arguments, so `diffill --help` never imports torch.
"""

from __future__ import annotations

import argparse

HELP = "latency benchmark: p50/p95, steps, tokens/s, step time vs memory floor, baselines as ratios"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _names(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument("--quick", action="store_true", help="few repeats; on CUDA one model and one cell")
    p.add_argument("--model", help="checkpoint for the 'default' entry (default: the embedded model)")
    p.add_argument(
        "--models",
        type=_names,
        help="comma list of: default, default-shape, diffill-coder-0.5b, open-dcoder-0.5b, coda-1.7b, "
        "dream-7b",
    )
    p.add_argument("--contexts", type=_ints, help="comma list of context lengths (default 512,2048,4096)")
    p.add_argument("--middles", type=_ints, help="comma list of middle lengths (default 16,32,64,128)")
    p.add_argument(
        "--variants",
        type=_names,
        help="comma list: engine, eager, reference, ar, coder (Diffill-Coder's step; coder shapes only)",
    )
    p.add_argument("--steps-per-block", type=int, default=8, help="fixed denoising steps per block")
    p.add_argument("--block-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=0, help="timed runs per engine cell (default 10; quick 3)")
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop starting new cells after this long")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default="bench/results", help="directory for the JSON and markdown results")


def run(args: argparse.Namespace) -> int:
    from diffusion_core.evaluation.bench import main_args

    return main_args(args)
