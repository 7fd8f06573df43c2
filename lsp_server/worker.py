"""The one engine worker thread: it owns the model, so the LSP event loop never blocks on it.

Requests reach it through a queue and come back as asyncio futures. While it runs a batch, new
requests wait in the queue; when it is free it takes every waiting request at once and fills
them in one ``infill_batch`` call (natural batching: no timer, no added latency). Model loads go
through the same queue, so a reload never races a running completion. Speculative prefetches run
only when nothing else waits, and stop between denoising steps as soon as real work arrives.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from diffusion_core.interface import Backend, Cancelled, InfillRequest, reporting

from .backend import make_backend
from .stats import Stats

__all__ = ["Cancelled", "EngineWorker", "LoadFailed", "NotReady", "Ticket"]

log = logging.getLogger(__name__)

# (model_path, device, dtype, backend_url, api_key, remote_model): what make_backend takes
BackendFactory = Callable[..., Backend]
Prepare = Callable[[Backend], InfillRequest]


class LoadFailed(RuntimeError):
    """The model could not be loaded; the message says why."""


class NotReady(RuntimeError):
    """No model is loaded (still loading, or the load failed)."""


class Ticket:
    """A cancel flag shared by a request and the worker, polled between denoising steps."""

    __slots__ = ("cancelled", "promoted")

    def __init__(self) -> None:
        self.cancelled = False
        self.promoted = False  # a prefetch someone now waits for: real work no longer stops it

    def cancel(self) -> None:
        self.cancelled = True


@dataclass(eq=False)
class _Item:
    kind: str  # "load" | "infill" | "prefetch"
    ticket: Ticket
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    prepare: Prepare | None = None
    load_args: tuple = field(default_factory=tuple)


class EngineWorker:
    """Owns the backend in a single daemon thread."""

    def __init__(self, stats: Stats, factory: BackendFactory = make_backend, max_batch: int = 8) -> None:
        self.stats = stats
        self.factory = factory
        self.max_batch = max_batch
        self.state = "idle"  # idle | loading | ready | failed | stopped
        self.error: str | None = None
        self.backend: Backend | None = None
        self.model_id: str | None = None
        self.loaded_args: tuple | None = None  # what the ready backend was made from
        # told, from the worker thread, how a load's download goes (the server's $/progress)
        self.load_progress: Callable[[str], None] | None = None
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._real_waiting = 0
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- event-loop side
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="diffill-engine", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def ready(self) -> bool:
        return self.state == "ready" and self.backend is not None

    async def wait_ready(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) while a load is in progress; True when a model is ready."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.state in ("loading", "idle") and not self.ready and loop.time() < deadline:
            await asyncio.sleep(0.05)
        return self.ready

    def backend_stats(self) -> dict[str, Any]:
        backend = self.backend
        stats = getattr(backend, "stats", None)
        try:
            return dict(stats()) if callable(stats) else {}
        except Exception:  # noqa: BLE001 - counters are a nicety
            return {}

    @property
    def busy(self) -> bool:
        """Whether real (non-prefetch) work waits; prefetches are started only when idle."""
        return self._real_waiting > 0

    async def load(
        self, model_path: str | None, device: str | None, dtype: str | None, *remote: str | None
    ) -> str:
        """Load (or reload) the model, or connect to a remote one (``remote``: backend URL, API key,
        model id, as :func:`make_backend` takes them); returns its id or raises :class:`LoadFailed`."""
        self.state = "loading"
        item = _Item("load", Ticket(), *self._future(), load_args=(model_path, device, dtype, *remote))
        return await self._submit(item)

    async def infill(self, prepare: Prepare, ticket: Ticket, prefetch: bool = False) -> str:
        """Run one hole through the model; ``prepare`` cuts the context with the backend's tokenizer.

        Raises :class:`Cancelled` when ``ticket`` was cancelled first, :class:`NotReady`
        without a model. If the awaiting task is cancelled ($/cancelRequest), the ticket is
        cancelled too, which stops the engine between steps.
        """
        item = _Item("prefetch" if prefetch else "infill", ticket, *self._future(), prepare=prepare)
        try:
            return await self._submit(item)
        except asyncio.CancelledError:
            ticket.cancel()
            raise

    @staticmethod
    def _future() -> tuple[asyncio.Future, asyncio.AbstractEventLoop]:
        loop = asyncio.get_running_loop()
        return loop.create_future(), loop

    async def _submit(self, item: _Item) -> Any:
        with self._cond:
            if self._stopping:
                raise NotReady("the engine worker has stopped")
            self._queue.append(item)
            if item.kind == "infill":
                self._real_waiting += 1
            self._cond.notify()
        return await item.future

    # ---------------------------------------------------------------- worker thread
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    pending = list(self._queue)
                    self._queue.clear()
                    self.state = "stopped"
                    break
                items = self._take()
            if items:
                self._execute(items)
        for it in pending:
            self._settle(it, exc=NotReady("the engine worker has stopped"))
        if self.backend is not None:
            try:
                self.backend.close()
            except Exception:  # noqa: BLE001 - closing on the way out must not raise
                log.exception("closing the backend failed")

    def _take(self) -> list[_Item]:
        """Next unit of work (lock held): a load, or every waiting request up to the next load,
        or else one prefetch."""
        q = self._queue
        for it in [it for it in q if it.ticket.cancelled]:
            self._remove(it)
            self._settle(it, exc=Cancelled("cancelled before it ran"))
        if not q:
            return []
        if q[0].kind == "load":
            return [self._remove(q[0])]
        real: list[_Item] = []
        for it in q:
            if it.kind == "load" or len(real) >= self.max_batch:
                break
            if it.kind == "infill":
                real.append(it)
        if real:
            return [self._remove(it) for it in real]
        first = next(it for it in q if it.kind == "prefetch")
        return [self._remove(first)]

    def _remove(self, it: _Item) -> _Item:
        self._queue.remove(it)
        if it.kind == "infill":
            self._real_waiting -= 1
        return it

    def _execute(self, items: list[_Item]) -> None:
        if items[0].kind == "load":
            self._load(items[0])
            return
        backend = self.backend
        if backend is None or self.state != "ready":
            for it in items:
                self._settle(it, exc=NotReady(self.error or "the model is not loaded yet"))
            return
        jobs: list[InfillRequest] = []
        live: list[_Item] = []
        for it in items:
            try:
                jobs.append(it.prepare(backend))  # type: ignore[misc]
                live.append(it)
            except Exception as exc:  # noqa: BLE001 - one bad request must not sink the batch
                log.exception("preparing a request failed")
                self.stats.bump("errors")
                self._settle(it, exc=exc)
        if not live:
            return
        tickets = [it.ticket for it in live]
        if live[0].kind == "prefetch":
            t = tickets[0]
            cancel = lambda: t.cancelled or (not t.promoted and self._real_waiting > 0)
        else:
            cancel = lambda: all(t.cancelled for t in tickets)
        self.stats.bump("model_calls")
        self.stats.bump("model_requests", len(live))
        if len(live) > 1:
            self.stats.bump("batched_calls")
        try:
            texts = [c.text for c in backend.infill_batch(jobs, cancel=cancel)]
        except Cancelled:
            self.stats.bump("prefetch_cancelled" if live[0].kind == "prefetch" else "cancelled")
            for it in live:
                self._settle(it, exc=Cancelled("stopped between denoising steps"))
            return
        except Exception as exc:  # noqa: BLE001 - report to every waiter, keep the worker alive
            log.exception("the model failed on a batch of %d", len(live))
            self.stats.bump("errors")
            for it in live:
                self._settle(it, exc=exc)
            return
        for it, text in zip(live, texts):
            self._settle(it, result=text)

    def _load(self, item: _Item) -> None:
        old, self.backend = self.backend, None
        self.state = "loading"
        if old is not None:
            try:
                old.close()
            except Exception:  # noqa: BLE001
                log.exception("closing the previous backend failed")
        try:
            with reporting(self.load_progress):  # a hub download reports through $/progress
                backend = self.factory(*item.load_args)
        except BaseException as exc:  # noqa: BLE001 - a load failure must never kill the worker
            self.state = "failed"
            self.error = f"{type(exc).__name__}: {exc}"
            self.model_id = None
            log.error("loading the model failed: %s", self.error, exc_info=exc)
            self._settle(item, exc=LoadFailed(self.error))
            return
        self.backend = backend
        self.model_id = backend.model_id
        self.loaded_args = item.load_args
        self.error = None
        self.state = "ready"
        self._settle(item, result=self.model_id)

    @staticmethod
    def _settle(item: _Item, result: Any = None, exc: BaseException | None = None) -> None:
        def settle() -> None:
            if item.future.done():
                return
            if exc is not None:
                item.future.set_exception(exc)
            else:
                item.future.set_result(result)

        try:
            item.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop has closed: nobody waits any more
            pass
