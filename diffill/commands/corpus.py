"""`diffill corpus`: build the permissively licensed training corpus from this machine's packages."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "build a license-filtered, deduplicated, HumanEval-decontaminated code corpus from local packages"

# ../shared next to the checkout (read in place; never copied into the repository)
DEFAULT_HUMANEVAL = Path(__file__).resolve().parents[3] / "shared" / "benchmarks" / "humaneval-infilling"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="data/corpus", help="output directory for shards and stats.json")
    p.add_argument(
        "--wheels",
        nargs="*",
        default=["/opt/pypi", "/opt/pypi-more", "/opt/wheels"],
        help="directories searched for *.whl files",
    )
    p.add_argument(
        "--npm",
        nargs="*",
        default=["/usr/lib/node_modules", "/usr/local/lib/node_modules"],
        help="roots searched for node_modules packages",
    )
    p.add_argument(
        "--humaneval",
        default=str(DEFAULT_HUMANEVAL),
        help="directory with HumanEval-Infilling *.jsonl.gz used for decontamination",
    )
    p.add_argument(
        "--no-decontaminate", action="store_true", help="skip the HumanEval check (not for training)"
    )
    p.add_argument("--max-mb", type=float, default=300.0, help="stop after this many MB of kept source")
    p.add_argument("--max-package-mb", type=float, default=8.0, help="cap per package")
    p.add_argument("--val-fraction", type=float, default=0.03, help="fraction of packages held out")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from diffusion_core.training.corpus import Decontaminator, build_corpus, default_sources

    deco = None if args.no_decontaminate else Decontaminator.from_humaneval(args.humaneval)
    wheel_dirs = [Path(d) for d in args.wheels if Path(d).is_dir()]
    npm_roots = [Path(d) for d in args.npm if Path(d).is_dir()]
    stats = build_corpus(
        default_sources(wheel_dirs, npm_roots),
        args.out,
        deco,
        max_bytes=int(args.max_mb * 1e6),
        max_package_bytes=int(args.max_package_mb * 1e6),
        val_fraction=args.val_fraction,
        seed=args.seed,
    )
    summary = {k: v for k, v in stats.to_dict().items() if k != "package_licenses"}
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.out}/stats.json")
    return 0
