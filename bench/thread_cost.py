"""What a second torch thread costs the model: the same requests, sent from a worker thread as
the servers send them, with the compute thread (loading and every forward on one thread,
diffusion_core/compute_thread.py) and without it (the worker runs the forward itself, after the
model was loaded and measured on another thread, as the servers did before).

    python bench/thread_cost.py [--model DIR] [--pairs 2] [--out bench/results/thread_cost.json]

Once two threads have run OpenMP regions, every op is slower in all of them for the life of the
process, so each way runs in its own process; the processes alternate (ABAB) and the table
pools them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

REQUESTS = [
    ("def fibonacci(n: int) -> int:\n    if n < 2:\n        return n\n    ", "\n    return b\n"),
    ("class Counter:\n    def __init__(self, start: int = 0) -> None:\n        ", "\n\n    def increment"),
    ("for name in argv[1:]:\n    if not os.path.exists(name):\n        ", "\n    total += 1\n"),
]
WAYS = ("compute thread", "caller's thread")


def child(model: str | None, way: str, batches: list[int], repeats: int) -> dict:
    from diffusion_core.engine import Engine, InfillRequest

    engine = Engine.from_pretrained(model)  # loads (and measures) on the compute thread
    run = engine.infill_batch if way == WAYS[0] else (lambda reqs: engine._infill_batch(reqs, None))
    out: dict[str, list[float]] = {str(b): [] for b in batches}

    def work() -> None:  # a worker thread, as the language server's queue and the HTTP batcher
        for b in batches:
            run([InfillRequest(*REQUESTS[0], 32, cache_scope=None)] * b)  # warm-up
        for k in range(repeats):
            for b in batches:
                picks = [REQUESTS[(k + i) % len(REQUESTS)] for i in range(b)]
                reqs = [InfillRequest(p, s, 32, cache_scope=None) for p, s in picks]
                t0 = time.perf_counter()
                run(reqs)
                out[str(b)].append((time.perf_counter() - t0) * 1000.0)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    return {"cpu_weights": engine.about.get("cpu_weights"), "ms": out}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "thread_cost.json"))
    ap.add_argument("--child", choices=WAYS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.model, args.child, args.batch, args.repeats)))
        return 0
    from diffusion_core.runtime import cpu_name

    pooled: dict[str, dict[str, list[float]]] = {w: {str(b): [] for b in args.batch} for w in WAYS}
    weights = {}
    for i in range(2 * args.pairs):
        way = WAYS[i % 2] if (i // 2) % 2 == 0 else WAYS[1 - i % 2]  # ABBA
        cmd = [sys.executable, __file__, "--child", way, "--repeats", str(args.repeats), "--batch"]
        cmd += [str(b) for b in args.batch] + (["--model", args.model] if args.model else [])
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        res = json.loads(done.stdout.splitlines()[-1])
        weights[way] = res["cpu_weights"]
        for b, ms in res["ms"].items():
            pooled[way][b] += ms
        said = ", ".join(f"batch {b} p50 {statistics.median(v):.0f} ms" for b, v in res["ms"].items())
        print(f"{way}: {said}")
    rows = [
        {"way": w, "batch": int(b), "mean_ms": round(statistics.fmean(v), 1),
         "p50_ms": round(statistics.median(v), 1), "n": len(v)}
        for w, per in pooled.items() for b, v in per.items()
    ]  # fmt: skip
    for b in args.batch:
        a, c = (statistics.median(pooled[w][str(b)]) for w in WAYS)
        print(f"batch {b}: compute thread p50 {a:.0f} ms, caller's thread {c:.0f} ms: x{c / a:.2f}")
    info = {"machine": cpu_name(), "date": date.today().isoformat(), "cpu_weights": weights, "rows": rows}
    Path(args.out).write_text(json.dumps(info, indent=1) + "\n")
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
