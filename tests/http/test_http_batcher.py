"""diffusion_core.batcher: grouping, routing, cancellation and error isolation (no HTTP involved)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from diffusion_core.batcher import Batcher, BatcherClosed, Cancelled, Overloaded
from diffusion_core.engine import Completion, Engine, InfillRequest, SamplingOptions

T = 30  # generous guard timeouts: they only fire when something is broken


class FakeEngine:
    """Echoes each prefix; can hold a batch until released and polls ``cancel`` while held."""

    default_options = SamplingOptions()

    def __init__(self, hold: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.release = threading.Event()
        self.entered = threading.Event()
        self.saw_cancel = threading.Event()
        if not hold:
            self.release.set()

    def infill_batch(self, requests: Sequence[InfillRequest], cancel: Any = None) -> list[Completion]:
        self.calls.append([r.prefix for r in requests])
        self.entered.set()
        while not self.release.wait(0.002):
            if cancel is not None and cancel():
                self.saw_cancel.set()
                raise Cancelled()
        if any(r.prefix == "poison" for r in requests):
            raise ValueError("poisoned request")
        return [Completion(f"<{r.prefix}>", 1, 1, 0.0, "eos") for r in requests]


def wait_pending(b: Batcher, n: int) -> None:
    deadline = time.monotonic() + T
    while b.stats().pending < n:
        assert time.monotonic() < deadline, "requests never queued"
        time.sleep(0.001)


def test_lone_request_runs_alone_without_waiting_for_company() -> None:
    eng = FakeEngine()
    with Batcher(eng, wait_ms=600_000) as b:  # a lone request must not sit out this budget
        assert b.submit(InfillRequest("a", "")).result(timeout=T).text == "<a>"
        assert b.submit(InfillRequest("b", "")).result(timeout=T).text == "<b>"
    assert eng.calls == [["a"], ["b"]]


def test_requests_queued_behind_a_running_batch_share_the_next_one() -> None:
    eng = FakeEngine(hold=True)
    with Batcher(eng, max_batch=8, wait_ms=1) as b:
        first = b.submit(InfillRequest("first", ""))
        assert eng.entered.wait(T)
        rest = [b.submit(InfillRequest(f"r{i}", "")) for i in range(5)]
        eng.release.set()
        assert first.result(timeout=T).text == "<first>"
        assert [f.result(timeout=T).text for f in rest] == [f"<r{i}>" for i in range(5)]
    assert eng.calls == [["first"], [f"r{i}" for i in range(5)]]
    assert b.stats().batch_sizes == {1: 1, 5: 1}


def test_background_requests_wait_for_foreground_work_and_never_share_its_batch() -> None:
    """A speculative prefetch queued first must not delay a real request queued after it: the
    real one runs next, alone, and the prefetch after it (the language server's prefetches)."""
    eng = FakeEngine(hold=True)
    with Batcher(eng, wait_ms=0) as b:
        running = b.submit(InfillRequest("running", ""))
        assert eng.entered.wait(T)
        later = b.submit(InfillRequest("prefetch", ""), background=True)
        real = b.submit(InfillRequest("real", ""))
        wait_pending(b, 2)
        eng.release.set()
        texts = [f.result(timeout=T).text for f in (running, real, later)]
    assert texts == ["<running>", "<real>", "<prefetch>"]
    assert eng.calls == [["running"], ["real"], ["prefetch"]]


def test_max_batch_and_option_groups() -> None:
    eng = FakeEngine(hold=True)
    sampled = SamplingOptions(temperature=0.7, seed=1)
    with Batcher(eng, max_batch=3, wait_ms=0) as b:
        block = b.submit(InfillRequest("block", ""))
        assert eng.entered.wait(T)
        futs = [b.submit(InfillRequest(f"g{i}", "")) for i in range(4)]
        futs += [b.submit(InfillRequest(f"s{i}", "", options=sampled)) for i in range(2)]
        futs.append(b.submit(InfillRequest("g4", "", options=SamplingOptions())))  # equal to the default
        eng.release.set()
        block.result(timeout=T)
        assert [f.result(timeout=T).text for f in futs] == [
            "<g0>",
            "<g1>",
            "<g2>",
            "<g3>",
            "<s0>",
            "<s1>",
            "<g4>",
        ]
    assert eng.calls[1:] == [["g0", "g1", "g2"], ["g3", "g4"], ["s0", "s1"]]


def test_cancelled_before_running_never_reaches_the_engine() -> None:
    eng = FakeEngine(hold=True)
    flag = threading.Event()
    with Batcher(eng, wait_ms=0) as b:
        block = b.submit(InfillRequest("block", ""))
        assert eng.entered.wait(T)
        by_future = b.submit(InfillRequest("by-future", ""))
        by_check = b.submit(InfillRequest("by-check", ""), cancel=flag.is_set)
        kept = b.submit(InfillRequest("kept", ""))
        assert by_future.cancel()
        flag.set()
        eng.release.set()
        block.result(timeout=T)
        assert kept.result(timeout=T).text == "<kept>"
        with pytest.raises(Cancelled):
            by_check.result(timeout=T)
    assert by_future.cancelled()
    assert eng.calls == [["block"], ["kept"]]
    assert b.stats().cancelled == 2


def test_running_batch_stops_when_every_member_is_cancelled() -> None:
    eng = FakeEngine(hold=True)
    with Batcher(eng, wait_ms=0) as b:
        block = b.submit(InfillRequest("block", ""))
        assert eng.entered.wait(T)
        eng.entered.clear()
        a, c = threading.Event(), threading.Event()
        fa = b.submit(InfillRequest("a", ""), cancel=a.is_set)
        fc = b.submit(InfillRequest("c", ""), cancel=c.is_set)
        block.cancel()  # the held first batch is cancelled through its Future
        assert eng.saw_cancel.wait(T)
        assert eng.entered.wait(T)  # now running [a, c]
        eng.saw_cancel.clear()
        a.set()
        with pytest.raises(Cancelled):  # answered while the batch is still running for c
            fa.result(timeout=T)
        assert not eng.saw_cancel.is_set() and not fc.done()
        c.set()
        assert eng.saw_cancel.wait(T)
        for f in (fa, fc):
            with pytest.raises(Cancelled):
                f.result(timeout=T)
    assert eng.calls == [["block"], ["a", "c"]]


def test_partly_cancelled_batch_delivers_to_the_others() -> None:
    eng = FakeEngine(hold=True)
    with Batcher(eng, wait_ms=0) as b:
        block = b.submit(InfillRequest("block", ""))
        assert eng.entered.wait(T)
        gone = threading.Event()
        f1 = b.submit(InfillRequest("stays", ""))
        f2 = b.submit(InfillRequest("leaves", ""), cancel=gone.is_set)
        eng.release.set()  # the next batch runs straight through; "leaves" cancels meanwhile
        gone.set()
        block.result(timeout=T)
        assert f1.result(timeout=T).text == "<stays>"
        with pytest.raises(Cancelled):
            f2.result(timeout=T)


def test_asyncio_cancellation_reaches_the_engine() -> None:
    eng = FakeEngine(hold=True)

    async def main(b: Batcher) -> None:
        task = asyncio.ensure_future(asyncio.wrap_future(b.submit(InfillRequest("x", ""))))
        await asyncio.to_thread(eng.entered.wait, T)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with Batcher(eng, wait_ms=0) as b:
        asyncio.run(main(b))
        assert eng.saw_cancel.wait(T)


def test_one_bad_request_fails_alone() -> None:
    eng = FakeEngine(hold=True)
    with Batcher(eng, wait_ms=0) as b:
        block = b.submit(InfillRequest("block", ""))
        assert eng.entered.wait(T)
        futs = [b.submit(InfillRequest(p, "")) for p in ("a", "poison", "b")]
        eng.release.set()
        block.result(timeout=T)
        assert futs[0].result(timeout=T).text == "<a>"
        with pytest.raises(ValueError, match="poisoned"):
            futs[1].result(timeout=T)
        assert futs[2].result(timeout=T).text == "<b>"
        assert b.alive
        assert b.submit(InfillRequest("after", "")).result(timeout=T).text == "<after>"


def test_worker_survives_a_broken_engine() -> None:
    class Broken(FakeEngine):
        def infill_batch(self, requests: Sequence[InfillRequest], cancel: Any = None) -> list[Completion]:
            return []  # wrong number of results

    with Batcher(Broken(), wait_ms=0) as b:
        with pytest.raises(RuntimeError, match="0 results for 1"):
            b.submit(InfillRequest("a", "")).result(timeout=T)
        assert b.alive


def test_overload_close_and_validation() -> None:
    eng = FakeEngine(hold=True)
    b = Batcher(eng, wait_ms=0, max_pending=2)
    running = b.submit(InfillRequest("run", ""))
    assert eng.entered.wait(T)
    waiting = [b.submit(InfillRequest("w1", "")), b.submit(InfillRequest("w2", ""))]
    with pytest.raises(Overloaded):
        b.submit(InfillRequest("w3", ""))
    with pytest.raises(ValueError):
        b.submit(InfillRequest("neg", "", max_tokens=-1))
    closer = threading.Thread(target=b.close)
    closer.start()
    for f in waiting:
        with pytest.raises(BatcherClosed):
            f.result(timeout=T)
    eng.release.set()  # the running batch still finishes
    assert running.result(timeout=T).text == "<run>"
    closer.join(T)
    assert not b.alive
    with pytest.raises(BatcherClosed):
        b.submit(InfillRequest("late", ""))


def test_real_engine_results_are_routed_to_their_callers(engine: Engine) -> None:
    prompts = [(f"def f{i}(x):\n    return x " + "+ 1 " * i, "\n") for i in range(10)]
    expected = [engine.infill(p, s, max_tokens=8).text for p, s in prompts]
    with Batcher(engine, max_batch=4, wait_ms=2) as b, ThreadPoolExecutor(10) as pool:
        futs = list(pool.map(lambda ps: b.submit(InfillRequest(ps[0], ps[1], 8)), prompts))
        got = [f.result(timeout=120) for f in futs]
        stats = b.stats()
    assert [c.text for c in got] == expected
    assert all(c.latency_ms > 0 for c in got)
    assert stats.completed == 10 and stats.max_batch_seen <= 4
