"""Dynamic batching benchmark for `diffill serve-http`: batched vs one-at-a-time, same run.

Why: batching must raise throughput under concurrent load without making a lone request slower.
At each concurrency level (closed loop: N clients, each sends its next request when the last
one is answered) a batched server and a one-at-a-time server on the same engine alternate in
ABBA order, so the drift of a shared machine hits both. The servers are real `diffill serve-http`
processes; latency is measured by the client over HTTP on 127.0.0.1.

    python bench/http_batching.py                     # embedded model if present, else tiny
    python bench/http_batching.py --model DIR --concurrency 1 4 16 64 --rounds 2

Writes bench/results/http_batching.json and .md. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffusion_core.batcher import Batcher  # noqa: E402
from diffusion_core.engine import Engine, InfillRequest, tiny_model_dir  # noqa: E402
from diffusion_core.interface import CACHE_SCOPE_HEADER  # noqa: E402

PROMPTS = [
    ("import os\nimport sys\n\n", "\n\ndef main() -> int:\n    return 0\n"),
    ("def fibonacci(n: int) -> int:\n    if n < 2:\n        return n\n    ", "\n    return b\n"),
    ("class Counter:\n    def __init__(self, start: int = 0) -> None:\n        ", "\n\n    def increment"),
    ("function sum(values) {\n  let total = 0;\n  ", "\n  return total;\n}\n"),
    ("for name in argv[1:]:\n    if not os.path.exists(name):\n        ", "\n    total += 1\n"),
    ('with open(path, encoding="utf-8") as handle:\n    ', "\nprint(total)\n"),
]


class Server:
    """A real `diffill serve-http` process on a free loopback port (the client runs here, so the
    two never share a GIL)."""

    def __init__(self, model_dir: Path, max_batch: int, wait_ms: float, threads: int) -> None:
        self.cmd = [
            sys.executable, "-m", "diffill.cli", "serve-http", "--model", str(model_dir), "--device", "cpu",
            "--port", "0", "--max-batch", str(max_batch), "--batch-wait-ms", str(wait_ms),
            "--max-pending", "4096", "--log-level", "warning",
        ]  # fmt: skip
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if threads:
            self.env["OMP_NUM_THREADS"] = str(threads)
        self.url = ""

    def __enter__(self) -> Server:
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        m = re.search(r"listening on (http://\S+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"serve-http did not start: {line!r}")
        self.url = m.group(1)
        return self

    def stats(self) -> dict[str, int]:
        return httpx.get(self.url + "/health", timeout=30).json()

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def closed_loop(url: str, concurrency: int, total: int, max_tokens: int) -> tuple[list[float], float]:
    """Per-request latencies (ms) and the wall time (s) of ``total`` requests from N clients."""
    latencies: list[float] = []
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def worker() -> None:
            # each client is one editor: it reuses the context K/V of its own requests only
            scope = {CACHE_SCOPE_HEADER: secrets.token_hex(16)}
            for i in counter:
                prefix, suffix = PROMPTS[i % len(PROMPTS)]
                body = {"prompt": prefix, "suffix": suffix, "max_tokens": max_tokens}
                t0 = time.perf_counter()
                r = await client.post("/v1/completions", json=body, headers=scope)
                latencies.append((time.perf_counter() - t0) * 1000.0)
                r.raise_for_status()

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, time.perf_counter() - t0


def run_level(
    servers: dict[str, Server], concurrency: int, total: int, max_tokens: int, rounds: int
) -> list[dict[str, Any]]:
    """Both modes at one level, ABBA over ``rounds``; latencies and wall time pooled per mode."""
    pooled: dict[str, tuple[list[float], float]] = {m: ([], 0.0) for m in servers}
    for srv in servers.values():  # warm-up
        asyncio.run(closed_loop(srv.url, min(concurrency, 4), 8, max_tokens))
    before = {m: srv.stats() for m, srv in servers.items()}
    for r in range(rounds):
        for mode in list(servers) if r % 2 == 0 else list(reversed(servers)):
            lat, wall = asyncio.run(closed_loop(servers[mode].url, concurrency, total, max_tokens))
            pooled[mode] = (pooled[mode][0] + lat, pooled[mode][1] + wall)
    after = {m: srv.stats() for m, srv in servers.items()}
    rows = []
    for mode, (lat, wall) in pooled.items():
        lat = sorted(lat)
        batches = after[mode]["batches"] - before[mode]["batches"]
        rows.append(
            {
                "concurrency": concurrency,
                "mode": mode,
                "requests": len(lat),
                "wall_s": round(wall, 3),
                "throughput_rps": round(len(lat) / wall, 2),
                "p50_ms": round(statistics.median(lat), 1),
                "p95_ms": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 1),
                "mean_batch": round(
                    (after[mode]["requests"] - before[mode]["requests"]) / max(1, batches), 2
                ),
            }
        )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="checkpoint directory (default: embedded model, else a tiny random one)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--requests", type=int, default=2, help="requests per client per level and round")
    ap.add_argument("--min-requests", type=int, default=24, help="at least this many per level and round")
    ap.add_argument("--rounds", type=int, default=2, help="ABBA rounds per level")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--wait-ms", type=float, default=5.0)
    ap.add_argument("--batch1-pairs", type=int, default=40, help="interleaved batch-1 pairs, no HTTP")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "http_batching"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    tmp = None
    if args.model:
        model_dir, model_kind = Path(args.model), "given"
    elif (tiny_model_dir() / "config.json").is_file():
        model_dir, model_kind = tiny_model_dir(), "tiny (1.3M)"
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from model_fixtures import make_tiny_model_dir

        tmp = tempfile.TemporaryDirectory()
        model_dir = make_tiny_model_dir(Path(tmp.name) / "tiny")
        model_kind = "tiny random (no embedded model yet)"
    engine = Engine.from_pretrained(model_dir, device="cpu")
    params = engine.info()["parameters"]
    print(f"model: {engine.model_id} ({model_kind}), {params:,} parameters", flush=True)

    # batch-1 cost of the batcher itself, no HTTP: engine.infill vs Batcher.submit().result() on
    # the same request, pair by pair in alternating order (ABBA) so machine drift hits both alike,
    # each call from an empty prefix cache so neither reuses the other's context K/V
    for p, s in PROMPTS[:2]:
        engine.infill(p, s, args.max_tokens)
    direct, via_batcher = [], []

    def timed(call: Any) -> float:
        if engine.prefix_cache is not None:
            engine.prefix_cache.clear()
        t0 = time.perf_counter()
        call()
        return (time.perf_counter() - t0) * 1000.0

    with Batcher(engine, max_batch=64, wait_ms=args.wait_ms) as batcher:
        for i in range(args.batch1_pairs):
            p, s = PROMPTS[i % len(PROMPTS)]
            req = InfillRequest(p, s, args.max_tokens)
            calls = [
                (direct, lambda req=req: engine.infill(req.prefix, req.suffix, req.max_tokens)),
                (via_batcher, lambda req=req: batcher.submit(req).result()),
            ]
            for into, call in calls if i % 4 in (0, 3) else calls[::-1]:
                into.append(timed(call))
    print(
        f"batch 1, no HTTP: engine p50 {statistics.median(direct):.1f} "
        f"mean {statistics.mean(direct):.1f} ms, via batcher p50 "
        f"{statistics.median(via_batcher):.1f} mean {statistics.mean(via_batcher):.1f} ms",
        flush=True,
    )

    rows = []
    with (
        Server(model_dir, 64, args.wait_ms, args.threads) as batched,
        Server(model_dir, 1, 0.0, args.threads) as single,
    ):
        servers = {"batched": batched, "one-at-a-time": single}
        for c in args.concurrency:
            total = max(args.min_requests, c * args.requests)
            for row in run_level(servers, c, total, args.max_tokens, args.rounds):
                rows.append(row)
                print(json.dumps(row), flush=True)

    result = {
        "model_id": engine.model_id,
        "model": model_kind,
        "parameters": params,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "max_tokens": args.max_tokens,
        "batch_wait_ms": args.wait_ms,
        "rounds": args.rounds,
        "engine_direct_p50_ms": round(statistics.median(direct), 1),
        "via_batcher_p50_ms": round(statistics.median(via_batcher), 1),
        "engine_direct_mean_ms": round(statistics.mean(direct), 1),
        "via_batcher_mean_ms": round(statistics.mean(via_batcher), 1),
        "batch1_pairs": len(direct),
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(render_md(result), encoding="utf-8")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    if tmp is not None:
        tmp.cleanup()
    return 0


def render_md(r: dict[str, Any]) -> str:
    lines = [
        "# serve-http dynamic batching (CPU)",
        "",
        f"Model `{r['model_id']}` ({r['model']}, {r['parameters']:,} parameters), {r['device']}, "
        f"{r['torch_threads']} torch threads on {r['cpu_count']} CPUs (load average at the end: "
        f"{r['load_average_at_end']}), max_tokens {r['max_tokens']}, batch wait {r['batch_wait_ms']} ms. "
        f"Batch 1 without HTTP ({r['batch1_pairs']} pairs of the same request in ABBA order, each from "
        f"an empty prefix cache): `engine.infill` p50 {r['engine_direct_p50_ms']} / mean "
        f"{r.get('engine_direct_mean_ms', '?')} ms, through the batcher p50 {r['via_batcher_p50_ms']} / "
        f"mean {r.get('via_batcher_mean_ms', '?')} ms.",
        "",
        "Two `diffill serve-http` processes; closed loop over HTTP on 127.0.0.1 (N clients, each sends "
        "its next request when the last one "
        "is answered); batched (max batch 64) and one-at-a-time (max batch 1) alternate in ABBA order "
        f"over {r['rounds']} rounds at each level, latencies pooled.",
        "",
        "| concurrency | mode | requests | throughput (req/s) | p50 (ms) | p95 (ms) | mean batch |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['concurrency']} | {row['mode']} | {row['requests']} | {row['throughput_rps']} | "
            f"{row['p50_ms']} | {row['p95_ms']} | {row['mean_batch']} |"
        )
    by = {(row["concurrency"], row["mode"]): row for row in r["rows"]}
    lines.append("")
    for c in sorted({row["concurrency"] for row in r["rows"]}):
        b, o = by.get((c, "batched")), by.get((c, "one-at-a-time"))
        if b and o:
            lines.append(
                f"- concurrency {c}: throughput x{b['throughput_rps'] / o['throughput_rps']:.2f}, "
                f"p50 x{b['p50_ms'] / o['p50_ms']:.2f} (batched / one-at-a-time)"
            )
    serial = [row for row in r["rows"] if row["mode"] == "one-at-a-time"]
    batched = [row for row in r["rows"] if row["mode"] == "batched"]
    if serial and batched:  # a fair gain: against the serial server at its own best concurrency
        best_s = max(serial, key=lambda row: row["throughput_rps"])
        best_b = max(batched, key=lambda row: row["throughput_rps"])
        lines.append(
            f"- best rates: batched {best_b['throughput_rps']} req/s (concurrency {best_b['concurrency']}), "
            f"one-at-a-time {best_s['throughput_rps']} req/s (concurrency {best_s['concurrency']}): "
            f"x{best_b['throughput_rps'] / best_s['throughput_rps']:.2f}"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
