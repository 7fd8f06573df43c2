"""`diffill models`: the hub models in the Hugging Face cache and which family each is."""

from __future__ import annotations

import argparse
import json

HELP = "list the models in the Hugging Face cache with their family (or why Diffill cannot load them)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from diffusion_core import hub
    from diffusion_core.checkpoint import CheckpointError, inspect_checkpoint

    rows = []
    for m in hub.cached_models():
        try:
            family = inspect_checkpoint(m.path).family.name
        except (CheckpointError, OSError) as e:
            family = f"not loadable: {e}"
        rows.append(
            {
                "model": m.repo,
                "revisions": m.revisions,
                "family": family,
                "size_mb": round(m.size_bytes / 1e6, 1),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print(
            f"no models in the Hugging Face cache ({hub.cache_dir()}); fetch one with `diffill pull ORG/NAME`"
        )
        return 0
    for r in rows:
        print(f"{r['model']}  [{', '.join(r['revisions'])}]  {r['size_mb']} MB  {r['family']}")
    return 0
