"""Does the model's length estimate (diffusion_core/length.py) follow the context?

A synthetic task where the answer is known: files of 12 lines of random letters, every line of a
file the same width (2, 4, 10 or 16 characters), so the hole's length can be read off the lines
around it. The same tiny network is trained twice with the project's FIM objective, once with
mask counts drawn independently of the middle's length (``mask_counts="independent"``, what
``diffill train`` does now) and once with the count tied to it (``"coupled"``: next bucket up or a
small overshoot, how the phase 2-3 default model was trained). Then a whole line is cut out of
fresh files and the length is predicted from a 64-mask canvas.

Optionally (``--data``), the same estimate on HumanEval-Infilling single-line holes for a real
checkpoint (``--model``; default: the embedded model).

    python bench/length_prediction.py [--steps 1200] [--data ../shared/benchmarks/humaneval-infilling]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from diffusion_core.checkpoint import load_checkpoint
from diffusion_core.length import predict_lengths
from diffusion_core.sampler import Canvas
from diffusion_core.training.tokenizer_train import train_tokenizer
from diffusion_core.training.train import TrainConfig, Trainer, batch_for_step

WIDTHS = (2, 4, 10, 16)


def synthetic_file(rng: random.Random, width: int, lines: int = 12) -> str:
    return "".join("".join(rng.choice("abcdefgh") for _ in range(width)) + "\n" for _ in range(lines))


def train_and_measure(policy: str, steps: int, workdir: Path, holes: int) -> dict:
    rng = random.Random(0)
    texts = [synthetic_file(rng, rng.choice(WIDTHS)) for _ in range(400)]
    tok_path = workdir / "tokenizer.json"
    train_tokenizer(texts, vocab_size=64).save(str(tok_path))
    cfg = TrainConfig(
        tokenizer=str(tok_path),
        out=str(workdir / policy),
        hidden_size=64,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        intermediate_size=128,
        seq_len=160,
        batch_size=16,
        steps=steps,
        warmup=20,
        lr=3e-3,
        fim_rate=1.0,
        eps=0.1,
        shifted=True,
        mask_counts=policy,
    )
    trainer = Trainer(cfg, texts=texts, val_texts=texts[:4])
    t0 = time.perf_counter()
    for step in range(steps):
        trainer.train_step(batch_for_step(trainer.maker, cfg.seed, step, cfg.batch_size))
    train_s = time.perf_counter() - t0
    ck = load_checkpoint(trainer.export(workdir / f"{policy}-model"))
    test_rng = random.Random(1)
    rows = {}
    for width in WIDTHS:
        pred, true = [], []
        for _ in range(holes):
            lines = synthetic_file(test_rng, width).splitlines(keepends=True)
            prefix, middle, suffix = "".join(lines[:5]), lines[5], "".join(lines[6:])
            canvas = Canvas(ck.tokenizer.encode(prefix), ck.tokenizer.encode(suffix), 64)
            pred.append(predict_lengths(ck.model, ck.family, [canvas])[0])
            true.append(len(ck.tokenizer.encode(middle)))
        rows[width] = {
            "true_tokens": statistics.mean(true),
            "predicted_median": statistics.median(pred),
            "mae": statistics.mean(abs(p - t) for p, t in zip(pred, true)),
        }
    return {"policy": policy, "steps": steps, "train_s": round(train_s, 1), "widths": rows}


def humaneval_lengths(model: str | None, data: str, limit: int) -> dict:
    from diffusion_core.engine import Engine
    from diffusion_core.evaluation.humaneval import load_problems, spread

    engine = Engine.from_pretrained(model)
    problems = spread(load_problems(data, "single-line"), limit)
    pred, true = [], []
    for p in problems:
        pre, suf = engine.fit_context(p["prompt"], p["suffix"])
        pred.append(predict_lengths(engine.model, engine.family, [Canvas(pre, suf, 64)])[0])
        true.append(engine.count_tokens(p["canonical_solution"]))
    return {
        "model": engine.model_id,
        "trained_for_length_prediction": engine.family.predicts_length,
        "problems": len(problems),
        "true_median": statistics.median(true),
        "predicted_median": statistics.median(pred),
        "mae": round(statistics.mean(abs(a - b) for a, b in zip(pred, true)), 2),
        "within_2": sum(abs(a - b) <= 2 for a, b in zip(pred, true)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--holes", type=int, default=20, help="test holes per line width")
    ap.add_argument("--data", help="HumanEval-Infilling directory: also measure a real model there")
    ap.add_argument("--model", help="checkpoint for --data (default: the embedded model)")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench/results/length_prediction.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result: dict = {"date": time.strftime("%Y-%m-%d"), "synthetic": []}
    with tempfile.TemporaryDirectory() as tmp:
        for policy in ("independent", "coupled"):
            r = train_and_measure(policy, args.steps, Path(tmp), args.holes)
            result["synthetic"].append(r)
            print(f"{policy}: trained {r['steps']} steps in {r['train_s']} s")
            for width, row in r["widths"].items():
                print(
                    f"  lines of {width:2d} chars: true {row['true_tokens']:.1f} tokens, "
                    f"predicted median {row['predicted_median']:.1f}, mean abs error {row['mae']:.1f}"
                )
    if args.data:
        result["humaneval_single_line"] = h = humaneval_lengths(args.model, args.data, args.limit)
        print(
            f"HumanEval single-line ({h['model']}, {h['problems']} problems): true median "
            f"{h['true_median']} tokens, predicted median {h['predicted_median']}, MAE {h['mae']}, "
            f"within 2 tokens {h['within_2']}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
