"""How close approximate DualCache decoding is to the exact no-cache sampler, and what it saves.

For each HumanEval-Infilling task, decode the hole with (a) the plain reference sampler (full
forward every step) and (b) the engine's batched sampler with DualCache and no mid-block
refresh, greedy, same options otherwise. Reports the token agreement rate (positions where both
chose the same token, over the longer output, on tasks where either output is
non-empty), the exact-match rate of the completions, and the
wall-clock ratio of (a) to (b) measured in this process.

    python bench/cache_agreement.py --data ../shared/benchmarks/humaneval-infilling --limit 100
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import torch

from diffusion_core.engine import Engine
from diffusion_core.sampler import Canvas, SamplingOptions, reference_sample, sample_batch


def load_tasks(data: Path, subset: str, limit: int) -> list[dict]:
    name = {
        "single-line": "HumanEval-SingleLineInfilling.jsonl.gz",
        "random-span-light": "HumanEval-RandomSpanInfillingLight.jsonl.gz",
    }[subset]
    with gzip.open(data / name, "rt", encoding="utf-8") as f:
        tasks = [json.loads(line) for line in f]
    step = max(1, len(tasks) // limit) if limit else 1
    return tasks[::step][:limit] if limit else tasks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--subset", default="single-line", choices=["single-line", "random-span-light"])
    ap.add_argument("--model")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--quality", type=float, default=0.5)
    ap.add_argument("--out", type=Path, default=Path("bench/results/cache_agreement.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    engine = Engine.from_pretrained(args.model)
    tasks = load_tasks(args.data, args.subset, args.limit)
    exact_opts = SamplingOptions(quality=args.quality, cache="none")
    dual_opts = SamplingOptions(quality=args.quality, cache="dual", refresh_every=0)
    same_tok = total_tok = same_text = both_empty = 0
    t_ref = t_dual = 0.0
    steps_ref = steps_dual = 0
    for task in tasks:
        p, s = engine.fit_context(task["prompt"], task["suffix"])
        canvas = Canvas(p, s, args.max_tokens)
        t0 = time.perf_counter()
        ref = reference_sample(engine.model, engine.family, canvas, exact_opts)
        t1 = time.perf_counter()
        dual = sample_batch(engine.model, engine.family, [canvas], dual_opts)[0]
        t2 = time.perf_counter()
        t_ref += t1 - t0
        t_dual += t2 - t1
        steps_ref += ref.steps
        steps_dual += dual.steps
        same_text += ref.tokens == dual.tokens
        if not ref.tokens and not dual.tokens:
            both_empty += 1
            continue
        same_tok += sum(a == b for a, b in zip(ref.tokens, dual.tokens))
        total_tok += max(len(ref.tokens), len(dual.tokens))
    result = {
        "model": engine.model_id,
        "subset": args.subset,
        "tasks": len(tasks),
        "max_tokens": args.max_tokens,
        "quality": args.quality,
        "token_agreement": same_tok / max(total_tok, 1),  # over tasks where either output is non-empty
        "both_empty": both_empty,
        "exact_match": same_text / max(len(tasks), 1),
        "reference_seconds": t_ref,
        "dualcache_seconds": t_dual,
        "speedup_vs_reference": t_ref / max(t_dual, 1e-9),
        "mean_steps_reference": steps_ref / max(len(tasks), 1),
        "mean_steps_dualcache": steps_dual / max(len(tasks), 1),
        "device": str(engine.device),
        "threads": torch.get_num_threads(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for k, v in result.items():
        print(f"{k:24s} {v:.4f}" if isinstance(v, float) else f"{k:24s} {v}")


if __name__ == "__main__":
    main()
