"""Worker, scheduler, cache and completer against an in-process fake engine (no torch, no timing)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest
from lsprotocol import types

from diffusion_core.batcher import Batcher
from diffusion_core.interface import Cancelled, Completion, InfillRequest
from lsp_server.cache import CompletionCache, Shown, TypedThrough
from lsp_server.completer import Completer
from lsp_server.documents import DocumentStore
from lsp_server.scheduler import Scheduler
from lsp_server.settings import Settings
from lsp_server.stats import Stats
from lsp_server.worker import EngineWorker, LoadFailed, NotReady, Ticket


class FakeBackend:
    """Engine stand-in: records calls; a call can be held open (polling cancel) until released."""

    model_id = "fake"

    def __init__(self, answer: str = "value = 1") -> None:
        self.answer = answer
        self.calls: list[list[InfillRequest]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.started = threading.Event()
        self.closed = False

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def infill_batch(self, jobs: Sequence[InfillRequest], cancel=None) -> list[Completion]:
        self.calls.append(list(jobs))
        self.started.set()
        while not self.hold.wait(0.005):  # one "denoising step" per poll
            if cancel is not None and cancel():
                raise Cancelled("cancelled")
        if cancel is not None and cancel():
            raise Cancelled("cancelled")
        return [Completion(self.answer, 3, 1, 0.0, "eos") for _ in jobs]

    def close(self) -> None:
        self.closed = True


def job(prefix: str = "x = ") -> object:
    return lambda backend: InfillRequest(prefix=prefix, suffix="")


async def ready_worker(fake: FakeBackend) -> EngineWorker:
    w = EngineWorker(Stats(), factory=lambda *a: fake, queue=Batcher)
    w.start()
    assert await w.load(None, None, None) == "fake"
    return w


async def wait_until(pred, limit: float = 10.0) -> None:
    for _ in range(int(limit / 0.005)):
        if pred():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never became true")


def test_requests_that_wait_while_the_engine_is_busy_run_as_one_batch():
    async def main() -> None:
        fake = FakeBackend()
        w = await ready_worker(fake)
        fake.hold.clear()
        first = asyncio.ensure_future(w.infill(job("a"), Ticket()))
        await wait_until(fake.started.is_set)
        others = [asyncio.ensure_future(w.infill(job(p), Ticket())) for p in ("b", "c", "d")]
        await wait_until(lambda: w.batcher.stats().pending == 3)
        fake.hold.set()
        assert await asyncio.gather(first, *others) == ["value = 1"] * 4
        assert [len(c) for c in fake.calls] == [1, 3]
        assert w.stats.batched_calls == 1 and w.stats.model_calls == 2
        w.stop()

    asyncio.run(main())


def test_newer_request_for_a_document_supersedes_and_stops_the_running_one():
    async def main() -> None:
        fake = FakeBackend()
        w = await ready_worker(fake)
        sched = Scheduler(w, w.stats)
        fake.hold.clear()
        old = asyncio.ensure_future(sched.run("file:///a.py", b"k1", job("old")))
        await wait_until(fake.started.is_set)
        new = asyncio.ensure_future(sched.run("file:///a.py", b"k2", job("new")))
        assert await old is None  # stale: never returned
        fake.hold.set()
        assert await new == "value = 1"
        assert w.stats.cancelled == 1 and w.stats.superseded == 1
        w.stop()

    asyncio.run(main())


def test_the_same_context_asked_twice_at_once_runs_once():
    async def main() -> None:
        fake = FakeBackend()
        w = await ready_worker(fake)
        sched = Scheduler(w, w.stats)
        fake.hold.clear()
        inline = asyncio.ensure_future(sched.run("file:///a.py", b"same", job()))
        await wait_until(fake.started.is_set)
        listed = asyncio.ensure_future(sched.run("file:///a.py", b"same", job()))
        await asyncio.sleep(0.02)
        fake.hold.set()
        assert await asyncio.gather(inline, listed) == ["value = 1", "value = 1"]
        assert len(fake.calls) == 1 and w.stats.superseded == 0
        w.stop()

    asyncio.run(main())


def test_cancel_request_stops_the_engine_between_steps():
    async def main() -> None:
        fake = FakeBackend()
        w = await ready_worker(fake)
        sched = Scheduler(w, w.stats)
        fake.hold.clear()
        task = asyncio.ensure_future(sched.run("file:///a.py", b"k", job()))
        await wait_until(fake.started.is_set)
        task.cancel()  # what pygls does on $/cancelRequest
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_until(lambda: w.stats.cancelled == 1)
        fake.hold.set()
        w.stop()

    asyncio.run(main())


def test_debounced_automatic_triggers_cost_one_model_call():
    async def main() -> None:
        fake = FakeBackend()
        w = await ready_worker(fake)
        sched = Scheduler(w, w.stats)
        runs = [
            asyncio.ensure_future(sched.run("file:///a.py", bytes([i]), job(), debounce_s=0.3))
            for i in range(5)
        ]
        results = await asyncio.gather(*runs)
        assert results == [None] * 4 + ["value = 1"]
        assert len(fake.calls) == 1
        w.stop()

    asyncio.run(main())


def test_prefetch_yields_to_real_work_and_is_joined_by_a_request_for_the_same_context():
    async def main() -> None:
        fake = FakeBackend()
        w = await ready_worker(fake)
        sched = Scheduler(w, w.stats)
        done: list[tuple[bytes, str]] = []
        fake.hold.clear()
        sched.prefetch(b"next", job("p"), lambda k, t: done.append((k, t)))
        await wait_until(fake.started.is_set)
        # a real request for another context: the prefetch stops between steps
        real = asyncio.ensure_future(sched.run("file:///b.py", b"other", job("r")))
        await wait_until(lambda: w.stats.prefetch_cancelled == 1)
        fake.hold.set()
        assert await real == "value = 1"
        assert done == []
        # a prefetch that the next request needs is promoted, not restarted
        fake.hold.clear()
        fake.started.clear()
        sched.prefetch(b"next", job("p"), lambda k, t: done.append((k, t)))
        await wait_until(fake.started.is_set)
        joined = asyncio.ensure_future(sched.run("file:///a.py", b"next", job("p")))
        await asyncio.sleep(0.05)
        fake.hold.set()
        assert await joined == "value = 1"
        assert done == [(b"next", "value = 1")]
        assert len(fake.calls) == 3  # prefetch (stopped), real, prefetch (joined): no fourth run
        w.stop()

    asyncio.run(main())


def test_load_failure_keeps_the_worker_alive_and_answers_not_ready():
    async def main() -> None:
        def broken(*args: object) -> FakeBackend:
            raise FileNotFoundError("no config.json in /nope")

        w = EngineWorker(Stats(), factory=broken, queue=Batcher)
        w.start()
        with pytest.raises(LoadFailed, match="config.json"):
            await w.load("/nope", None, None)
        assert w.state == "failed"
        with pytest.raises(NotReady):
            await w.infill(job(), Ticket())
        w.factory = lambda *a: FakeBackend()
        await w.load(None, None, None)
        assert await w.infill(job(), Ticket()) == "value = 1"
        w.stop()

    asyncio.run(main())


def test_cancelled_before_it_runs_never_reaches_the_engine():
    async def main() -> None:
        fake = FakeBackend()
        w = await ready_worker(fake)
        fake.hold.clear()
        first = asyncio.ensure_future(w.infill(job(), Ticket()))
        await wait_until(fake.started.is_set)
        t = Ticket()
        queued = asyncio.ensure_future(w.infill(job(), t))
        await wait_until(lambda: w.batcher.stats().pending == 1)
        t.cancel()
        fake.hold.set()
        await first
        with pytest.raises(Cancelled):
            await queued
        assert len(fake.calls) == 1
        w.stop()

    asyncio.run(main())


def test_cache_is_lru_with_ttl():
    now = [0.0]
    cache = CompletionCache(size=2, ttl_s=10, timer=lambda: now[0])
    cache.put(b"a", "1")
    cache.put(b"b", "2")
    assert cache.get(b"a") == "1"  # a is now most recent
    cache.put(b"c", "3")
    assert cache.get(b"b") is None and cache.get(b"a") == "1"
    now[0] = 11.0
    assert cache.get(b"a") is None and cache.get(b"c") is None
    cache.configure(0, 10)
    cache.put(b"x", "1")
    assert cache.get(b"x") is None


def test_typed_through_offers_the_rest_only_for_typed_text():
    tt = TypedThrough()
    tt.remember("u", Shown(tail="def f():\n    return ", suffix="\n", text="a + b", limit=100))
    assert tt.remainder("u", "def f():\n    return a", "\n") == " + b"
    assert tt.remainder("u", "def f():\n    return a +", "\n") == " b"
    assert tt.remainder("u", "def f():\n    return x", "\n") is None  # typed something else
    assert tt.remainder("u", "def f():\n    return a", "\nother") is None  # text after cursor changed
    assert tt.remainder("u", "def f():\n    return a + b", "\n") is None  # all typed: nothing left


def test_completer_answers_cache_hits_and_typed_through_without_the_model():
    async def main() -> None:
        fake = FakeBackend(answer="total + 1")
        w = await ready_worker(fake)
        store = DocumentStore()
        settings = Settings(prefetch=False)
        comp = Completer(store, w, w.stats, lambda: settings)
        doc = store.open("file:///a.py", "def f(total):\n    return \n", "python", 1)
        pos = types.Position(1, 11)
        first = await comp.complete(doc.uri, pos, invoked=True)
        assert first is not None and first.text == "total + 1" and first.source == "model"
        again = await comp.complete(doc.uri, pos, invoked=True)
        assert again is not None and again.text == "total + 1" and again.source == "cache"
        store.change(
            doc.uri, 2, [types.TextDocumentContentChangePartial(range=types.Range(pos, pos), text="tot")]
        )
        typed = await comp.complete(doc.uri, types.Position(1, 14), invoked=False)
        assert typed is not None and typed.text == "al + 1" and typed.source == "typed-through"
        assert typed.start == typed.end == types.Position(1, 14)
        assert len(fake.calls) == 1
        assert (w.stats.cache_hits, w.stats.typed_through_hits) == (1, 1)
        w.stop()

    asyncio.run(main())


def test_prefetch_makes_accepting_and_continuing_a_cache_hit():
    async def main() -> None:
        fake = FakeBackend(answer="x = 1")
        w = await ready_worker(fake)
        store = DocumentStore()
        settings = Settings(prefetch=True)
        comp = Completer(store, w, w.stats, lambda: settings)
        doc = store.open("file:///a.py", "def f():\n    \n", "python", 1)
        first = await comp.complete(doc.uri, types.Position(1, 4), invoked=True)
        assert first is not None
        await wait_until(lambda: w.stats.prefetches == 1)
        # the editor inserts the accepted text, then asks again at its end
        store.change(
            doc.uri,
            2,
            [
                types.TextDocumentContentChangePartial(
                    range=types.Range(types.Position(1, 4), types.Position(1, 4)), text=first.text
                )
            ],
        )
        nxt = await comp.complete(doc.uri, types.Position(1, 4 + len(first.text)), invoked=False)
        assert nxt is not None and nxt.source == "prefetch"
        assert w.stats.prefetch_hits == 1 and len(fake.calls) == 2
        w.stop()

    asyncio.run(main())


def test_selected_suggestion_is_extended_over_its_range():
    async def main() -> None:
        fake = FakeBackend(answer="(value)")
        w = await ready_worker(fake)
        store = DocumentStore()
        settings = Settings(prefetch=False)
        comp = Completer(store, w, w.stats, lambda: settings)
        store.open("file:///a.py", "value = 1\npr\n", "python", 1)
        selected = types.SelectedCompletionInfo(
            range=types.Range(types.Position(1, 0), types.Position(1, 2)), text="print"
        )
        sug = await comp.complete("file:///a.py", types.Position(1, 2), invoked=False, selected=selected)
        assert sug is not None and sug.text == "print(value)"
        assert (sug.start, sug.end) == (types.Position(1, 0), types.Position(1, 2))
        assert fake.calls[0][0].prefix.endswith("value = 1\nprint")
        w.stop()

    asyncio.run(main())


def test_disabled_languages_and_unknown_documents_get_nothing():
    async def main() -> None:
        fake = FakeBackend()
        w = await ready_worker(fake)
        store = DocumentStore()
        settings = Settings(languages=["*", "-markdown"])
        comp = Completer(store, w, w.stats, lambda: settings)
        store.open("file:///r.md", "# Title\n", "markdown", 1)
        assert await comp.complete("file:///r.md", types.Position(1, 0), invoked=True) is None
        assert await comp.complete("file:///nope.py", types.Position(0, 0), invoked=True) is None
        assert fake.calls == []
        w.stop()

    asyncio.run(main())


def test_a_request_during_the_model_load_is_answered_when_the_model_is_ready():
    """Typing at start-up: the request waits for the load instead of an empty answer that the
    editor never asks again."""

    async def main() -> None:
        fake = FakeBackend(answer="total + 1")
        gate = threading.Event()

        def slow_factory(*args):
            gate.wait(10)
            return fake

        w = EngineWorker(Stats(), factory=slow_factory, queue=Batcher)
        w.start()
        loading = asyncio.ensure_future(w.load(None, None, None))
        await wait_until(lambda: w.state == "loading")
        store = DocumentStore()
        settings = Settings(prefetch=False)
        comp = Completer(store, w, w.stats, lambda: settings)
        doc = store.open("file:///a.py", "def f(total):\n    return \n", "python", 1)
        pending = asyncio.ensure_future(comp.complete(doc.uri, types.Position(1, 11), invoked=False))
        await asyncio.sleep(0.2)
        assert not pending.done()  # held, not answered empty
        gate.set()
        await loading
        sug = await asyncio.wait_for(pending, 10)
        assert sug is not None and sug.text == "total + 1"
        w.stop()

    asyncio.run(main())


def test_a_position_past_the_end_is_answered_with_a_range_inside_the_document():
    async def main() -> None:
        fake = FakeBackend(answer="more()")
        w = await ready_worker(fake)
        store = DocumentStore()
        comp = Completer(store, w, w.stats, lambda: Settings(prefetch=False))
        doc = store.open("file:///a.py", "x = 1\ny = ", "python", 1)
        for pos in (types.Position(50, 3), types.Position(1, 400)):
            sug = await comp.complete(doc.uri, pos, invoked=True)
            assert sug is not None
            assert sug.start == sug.end == types.Position(1, 4), (pos, sug)
        w.stop()

    asyncio.run(main())
