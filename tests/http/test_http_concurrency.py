"""Concurrent HTTP requests are batched and each caller gets its own result; a bounded load test."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import httpx
from http_live import LiveServer

from diffusion_core.engine import Engine, InfillRequest

CASES = [
    ("import os\nimport sys\n", "\n\ndef main():\n", 8),
    ("def fibonacci(n: int) -> int:\n    if n < 2:\n        return ", "\n", 12),
    ("class Counter:\n    def __init__(self, start: int = 0) -> None:\n        self.", "\n", 6),
    ("function sum(values) {\n  let total = 0;\n  ", "\n}\n", 16),
    ("x = ", "", 4),
    ("for _ in range(n - 1):\n    a, b = ", "\nreturn b\n", 10),
    ("    print(total)\n    return ", "\n\n\nif __name__", 8),
    ("", "print('end')\n", 8),
    ('with open(path, encoding="utf-8") as handle:\n    ', "", 14),
    ("total += len(", ")\n", 5),
    ("def read_lines(path: str) -> list[str]:\n    ", "\n", 16),
    ("let total = ", ";", 3),
]


class GatedEngine:
    """The real engine, but the first batch waits until ``expect`` requests were submitted, so
    the test knows batching happened instead of hoping for it."""

    def __init__(self, engine: Engine, expect: int) -> None:
        self.engine = engine
        self.expect = expect
        self.batcher: Any = None
        self.calls: list[int] = []
        self._first = threading.Lock()
        self._opened = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def infill_batch(self, requests: Sequence[InfillRequest], cancel: Any = None) -> list:
        with self._first:
            if not self._opened:
                deadline = time.monotonic() + 30
                while self.batcher.stats().requests < self.expect and time.monotonic() < deadline:
                    time.sleep(0.005)
                self._opened = True
        self.calls.append(len(requests))
        return self.engine.infill_batch(requests, cancel)


async def fire(url: str, cases: Sequence[tuple[str, str, int]], concurrency: int) -> list[dict]:
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def one(prefix: str, suffix: str, n: int) -> dict:
            async with sem:
                r = await client.post(
                    "/v1/completions", json={"prompt": prefix, "suffix": suffix, "max_tokens": n}
                )
                assert r.status_code == 200, r.text
                return r.json()

        return await asyncio.gather(*(one(*c) for c in cases))


def test_concurrent_requests_get_their_own_results(engine: Engine) -> None:
    expected = [engine.infill(p, s, max_tokens=n).text for p, s, n in CASES]  # one at a time
    assert len(set(expected)) > len(CASES) // 2  # distinct answers, so a mix-up would show
    gated = GatedEngine(engine, expect=len(CASES))
    with LiveServer(gated, max_batch=16) as srv:
        gated.batcher = srv.batcher
        results = asyncio.run(fire(srv.url, CASES, concurrency=len(CASES)))
        stats = srv.batcher.stats()
    assert [r["choices"][0]["text"] for r in results] == expected
    assert sum(gated.calls) == len(CASES)
    # whatever the first batch caught, everything queued behind it ran as one more batch
    assert len(gated.calls) <= 2
    assert stats.completed == len(CASES) and stats.failed == 0


def test_bounded_load_on_loopback(server: LiveServer, engine: Engine) -> None:
    """16 clients, 6 requests each (plus some junk), a hard deadline: it always stops by itself."""
    expected = {(p, s, n): engine.infill(p, s, max_tokens=n).text for p, s, n in CASES}
    clients, per_client, deadline = 16, 6, time.monotonic() + 120
    before = server.batcher.stats()
    outcomes: list[tuple[bool, str]] = []

    async def client_loop(k: int, client: httpx.AsyncClient) -> None:
        for i in range(per_client):
            if time.monotonic() > deadline:
                outcomes.append((False, "deadline"))
                return
            if (k + i) % 5 == 4:  # junk in the mix must not disturb anyone
                r = await client.post("/v1/completions", content=b'{"prompt": 1}')
                outcomes.append((r.status_code == 400, f"junk -> {r.status_code}"))
                continue
            p, s, n = CASES[(k * per_client + i) % len(CASES)]
            r = await client.post("/v1/completions", json={"prompt": p, "suffix": s, "max_tokens": n})
            ok = r.status_code == 200 and r.json()["choices"][0]["text"] == expected[(p, s, n)]
            outcomes.append((ok, f"{r.status_code} {r.text[:200]}"))

    async def main() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            await asyncio.wait_for(
                asyncio.gather(*(client_loop(k, client) for k in range(clients))), timeout=180
            )

    asyncio.run(main())
    assert len(outcomes) == clients * per_client
    bad = [why for ok, why in outcomes if not ok]
    assert not bad, bad[:5]
    after = server.batcher.stats()
    served = sum(1 for _, why in outcomes if not why.startswith("junk"))
    assert after.completed - before.completed == served
    assert after.batches - before.batches < served  # concurrent load was actually batched
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
