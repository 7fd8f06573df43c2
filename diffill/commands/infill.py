"""`diffill infill --input IN.jsonl --output OUT.jsonl`: batch infilling in the HumanEval-Infilling
sample format (`task_id`, `prompt`, `suffix` in; `task_id`, `completion` out)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._model_args import add_model_arguments, add_sampling_arguments, load_engine, sampling_options

HELP = "fill the hole of every record of a JSONL file (task_id, prompt, suffix)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", type=Path, required=True)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--batch", type=int, default=1, help="records per batched engine call")
    add_model_arguments(p)
    add_sampling_arguments(p)


def read_records(path: Path) -> list[dict]:
    """Records of a JSONL file; a bad line is reported with its number instead of a traceback."""
    records = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: invalid JSON ({e.msg})") from None
            missing = [k for k in ("task_id", "prompt", "suffix") if not isinstance(rec.get(k), str)]
            if missing:
                raise ValueError(f"{path}:{n}: missing or non-string field(s): {', '.join(missing)}")
            records.append(rec)
    return records


def run(args: argparse.Namespace) -> int:
    from diffusion_core.engine import InfillRequest

    try:
        records = read_records(args.input)
    except (OSError, ValueError) as e:
        print(f"diffill infill: {e}", file=sys.stderr)
        return 2
    engine = load_engine(args)
    opts = sampling_options(args)
    with args.output.open("w", encoding="utf-8") as out:
        for i in range(0, len(records), max(1, args.batch)):
            chunk = records[i : i + max(1, args.batch)]
            reqs = [InfillRequest(r["prompt"], r["suffix"], args.max_tokens, opts) for r in chunk]
            for rec, c in zip(chunk, engine.infill_batch(reqs)):
                out.write(json.dumps({"task_id": rec["task_id"], "completion": c.text}) + "\n")
            out.flush()
    print(f"wrote {len(records)} completions to {args.output}", file=sys.stderr)
    return 0
