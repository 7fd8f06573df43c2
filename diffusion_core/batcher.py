"""Dynamic batching in front of one :class:`~diffusion_core.engine.Engine`.

Why: the model owner is a single worker, and a batched denoising run costs far less than the
same requests one after another. Callers from any front end (HTTP handlers, the language
server's worker) call :meth:`Batcher.submit` and get a ``concurrent.futures.Future``; one
worker thread gathers whatever is waiting into one ``engine.infill_batch`` call.

Batch-1 latency is protected by an adaptive wait: the worker only lingers for company (at
most ``wait_ms``) when there is evidence of concurrent traffic -- the previous batch had more
than one request, or this request was submitted while another was still in flight. A lone
editor typing (each request after the previous one finished) never pays the wait.

Cancellation: ``Future.cancel()`` or the per-request ``cancel`` callable. Cancelled requests
still waiting are dropped before they reach the model; a running batch is stopped (the engine
raises ``Cancelled``) once every request in it is cancelled. Otherwise the batch runs on for the
others, and a member seen cancelled between denoising steps gets its ``Cancelled`` at once
(its caller does not wait for the batch); its result is discarded.

No HTTP or LSP imports here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field, is_dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from .interface import CancelCheck, Cancelled, QueueClosed

if TYPE_CHECKING:
    from .engine import Completion, InfillRequest

__all__ = ["Batcher", "BatcherClosed", "BatcherStats", "Cancelled", "Overloaded"]

log = logging.getLogger(__name__)


class BatchEngine(Protocol):
    """What the batcher needs from an engine (the real :class:`Engine` or a test double)."""

    def infill_batch(
        self, requests: Sequence[InfillRequest], cancel: CancelCheck | None = None
    ) -> list[Completion]: ...


class Overloaded(RuntimeError):
    """Raised by :meth:`Batcher.submit` when ``max_pending`` requests are already waiting."""


class BatcherClosed(QueueClosed):
    """Raised for requests submitted to (or still waiting in) a closed batcher."""


@dataclass
class BatcherStats:
    """Counters for health endpoints and benchmarks (a snapshot; not live)."""

    requests: int = 0
    completed: int = 0
    cancelled: int = 0
    failed: int = 0
    batches: int = 0
    pending: int = 0
    max_batch_seen: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)  # size -> how many batches


@dataclass
class _Job:
    request: InfillRequest
    cancel: CancelCheck | None
    future: Future
    key: Hashable
    submitted: float
    overlapped: bool  # another request was in flight when this one was submitted
    background: bool = False  # speculative: runs only when no foreground request waits
    resolved: bool = False

    def cancelled(self) -> bool:
        if self.future.cancelled():
            return True
        if self.cancel is None:
            return False
        try:
            return bool(self.cancel())
        except Exception:  # a broken cancel check must not take the batch down with it
            log.exception("cancel check raised; treating the request as cancelled")
            return True


class Batcher:
    """Gathers concurrent infill requests into batched engine calls on one worker thread."""

    def __init__(
        self,
        engine: BatchEngine,
        *,
        max_batch: int = 16,
        wait_ms: float = 5.0,
        max_pending: int = 1024,
        name: str = "diffill-batcher",
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        """``on_batch(size)`` is told of every engine call (the language server's counters)."""
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if wait_ms < 0:
            raise ValueError("wait_ms must be >= 0")
        self.engine = engine
        self.max_batch = max_batch
        self.wait_s = wait_ms / 1000.0
        self.max_pending = max_pending
        self.on_batch = on_batch
        self._pending: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._inflight = 0  # submitted and not yet resolved
        self._last_batch_size = 0
        self._last_done = float("-inf")  # when the last batch finished
        self._stats = BatcherStats()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------- public API
    def submit(
        self, request: InfillRequest, cancel: CancelCheck | None = None, background: bool = False
    ) -> Future[Completion]:
        """Queue one request; the Future resolves to its Completion, or raises ``Cancelled``,
        ``BatcherClosed`` or the engine's error for this request alone. A ``background`` request
        (a speculative prefetch) is never batched with foreground ones and waits while any
        foreground request does, so it cannot delay real work beyond the step it is in."""
        if request.max_tokens < 0:
            raise ValueError("max_tokens must be >= 0")
        fut: Future[Completion] = Future()
        now = time.perf_counter()
        with self._cond:
            if self._closed:
                raise BatcherClosed("batcher is closed")
            if len(self._pending) >= self.max_pending:
                raise Overloaded(f"{len(self._pending)} requests already waiting")
            job = _Job(request, cancel, fut, self._key(request), now, self._inflight > 0, background)
            self._inflight += 1
            self._pending.append(job)
            self._stats.requests += 1
            self._cond.notify()
        return fut

    def stats(self) -> BatcherStats:
        with self._cond:
            s = replace(self._stats, batch_sizes=dict(self._stats.batch_sizes))
            s.pending = len(self._pending)
            return s

    @property
    def alive(self) -> bool:
        """True while the worker thread runs and the batcher accepts work."""
        return self._thread.is_alive() and not self._closed

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop accepting work, fail what is still waiting, let the running batch finish."""
        with self._cond:
            self._closed = True
            dropped = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        for job in dropped:
            self._resolve(job, "failed", exc=BatcherClosed("batcher closed before the request ran"))
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> Batcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------- worker
    def _key(self, request: InfillRequest) -> Hashable:
        """Requests with equal sampling options share one denoising run (``SamplingOptions`` is
        frozen, so the options are their own key)."""
        opts = request.options
        return opts if opts is not None else getattr(self.engine, "default_options", None)

    @staticmethod
    def _joins(job: _Job, head: _Job) -> bool:
        """Whether ``job`` may share ``head``'s run: equal options, and both foreground or both
        background."""
        return job.key == head.key and job.background == head.background

    def _want_company(self, head: _Job) -> bool:
        return self.wait_s > 0 and self.max_batch > 1 and (self._last_batch_size > 1 or head.overlapped)

    def _take_batch(self) -> list[_Job] | None:
        """Block until work exists; return the next batch (None once closed and drained)."""
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if not self._pending:
                return None
            # foreground work first; a background request only when nothing else waits
            head = next((j for j in self._pending if not j.background), self._pending[0])
            if self._want_company(head):
                # expected company: the callers of the last batch (they tend to come back) plus
                # those that queued while it ran; stop waiting as soon as they are all here
                carried = sum(
                    1 for j in self._pending if self._joins(j, head) and j.submitted < self._last_done
                )
                target = min(self.max_batch, max(2, self._last_batch_size + carried))
                deadline = time.perf_counter() + self.wait_s
                while not self._closed and sum(1 for j in self._pending if self._joins(j, head)) < target:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            batch: list[_Job] = []
            keep: deque[_Job] = deque()
            while self._pending:
                job = self._pending.popleft()
                if len(batch) < self.max_batch and self._joins(job, head):
                    batch.append(job)
                else:
                    keep.append(job)
            self._pending = keep
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            live = []
            for job in batch:
                if job.cancelled():
                    self._finish_cancelled(job)
                else:
                    live.append(job)
            if live:
                try:
                    self._execute(live)
                except Exception as exc:  # keep the worker alive whatever happens
                    log.exception("batch failed unexpectedly")
                    for job in live:
                        self._fail(job, exc)

    def _execute(self, jobs: list[_Job]) -> None:
        with self._cond:
            self._last_batch_size = len(jobs)
            self._stats.batches += 1
            self._stats.max_batch_seen = max(self._stats.max_batch_seen, len(jobs))
            self._stats.batch_sizes[len(jobs)] = self._stats.batch_sizes.get(len(jobs), 0) + 1
        if self.on_batch is not None:
            self.on_batch(len(jobs))
        try:
            try:
                results = self.engine.infill_batch(
                    [j.request for j in jobs], cancel=lambda: self._all_cancelled(jobs)
                )
            finally:
                with self._cond:
                    self._last_done = time.perf_counter()
        except Cancelled:
            for job in jobs:
                self._finish_cancelled(job)
            return
        except Exception as exc:
            if len(jobs) == 1:
                self._fail(jobs[0], exc)
                return
            # one bad request must not fail its neighbours: rerun them one at a time
            log.warning("batch of %d failed (%s); retrying one at a time", len(jobs), exc)
            for job in jobs:
                if job.cancelled():
                    self._finish_cancelled(job)
                else:
                    self._execute([job])
            return
        if len(results) != len(jobs):
            raise RuntimeError(f"engine returned {len(results)} results for {len(jobs)} requests")
        done = time.perf_counter()
        for job, res in zip(jobs, results):
            if job.cancelled():
                self._finish_cancelled(job)
                continue
            if is_dataclass(res) and hasattr(res, "latency_ms"):
                res = replace(res, latency_ms=(done - job.submitted) * 1000.0)  # includes queueing
            self._resolve(job, "completed", result=res)

    def _all_cancelled(self, jobs: list[_Job]) -> bool:
        """The engine's cancel check, polled between steps: answers each newly cancelled member
        now, and stops the batch only when nobody is left to serve."""
        gone = [j.cancelled() for j in jobs]
        for job, g in zip(jobs, gone):
            if g and not job.resolved:
                self._finish_cancelled(job)
        return all(gone)

    def _finish_cancelled(self, job: _Job) -> None:
        self._resolve(job, "cancelled", exc=Cancelled())

    def _fail(self, job: _Job, exc: BaseException) -> None:
        self._resolve(job, "failed", exc=exc)

    def _resolve(self, job: _Job, outcome: str, result: Any = None, exc: BaseException | None = None) -> None:
        """Count the job out, then hand the caller its result (exactly once per job)."""
        with self._cond:
            if job.resolved:
                return
            job.resolved = True
            self._inflight -= 1
            setattr(self._stats, outcome, getattr(self._stats, outcome) + 1)
        if exc is not None:
            _set_exception(job.future, exc)
        else:
            _set_result(job.future, result)


def _set_result(fut: Future, value: Any) -> bool:
    if fut.done():
        return False
    try:
        fut.set_result(value)
        return True
    except InvalidStateError:  # cancelled by the caller in the meantime
        return False


def _set_exception(fut: Future, exc: BaseException) -> None:
    if fut.done():
        return
    try:
        fut.set_exception(exc)
    except InvalidStateError:
        pass
