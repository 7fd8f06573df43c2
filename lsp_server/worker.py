"""The engine worker: owns the backend and feeds it through the one request queue.

Requests go to the request queue the command line hands in (``diffusion_core.batcher.Batcher``,
the same queue the HTTP server uses; the seam's ``RequestQueue``), which runs on its own thread,
so the LSP event loop never blocks on the model, and takes every waiting request at once into
one ``infill_batch`` call (natural batching: the language server asks for no wait, so a lone
editor never pays one). Loads are serialised with each other and swap the queue: the old one is
stopped between denoising steps and closed before the old backend is, so a reload never races a
running completion. Speculative prefetches stop between denoising steps as soon as real work is
in flight (unless a real request now waits for them).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from diffusion_core.interface import (
    Backend,
    Cancelled,
    InfillRequest,
    QueueClosed,
    QueueFactory,
    RequestQueue,
    reporting,
)

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
    """A cancel flag shared by a request and the queue, polled between denoising steps."""

    __slots__ = ("cancelled", "promoted")

    def __init__(self) -> None:
        self.cancelled = False
        self.promoted = False  # a prefetch someone now waits for: real work no longer stops it

    def cancel(self) -> None:
        self.cancelled = True


class EngineWorker:
    """Owns the backend and its queue; loads run in a thread of their own."""

    def __init__(
        self,
        stats: Stats,
        factory: BackendFactory = make_backend,
        max_batch: int = 8,
        queue: QueueFactory | None = None,
    ) -> None:
        self.stats = stats
        self.factory = factory
        self.queue = queue
        self.max_batch = max_batch
        self.state = "idle"  # idle | loading | ready | failed | stopped
        self.error: str | None = None
        self.backend: Backend | None = None
        self.batcher: RequestQueue | None = None
        self.model_id: str | None = None
        self.loaded_args: tuple | None = None  # what the ready backend was made from
        # told, from the loading thread, how a load's download goes (the server's $/progress)
        self.load_progress: Callable[[str], None] | None = None
        self._real_inflight = 0  # real (non-prefetch) requests handed to the queue, not yet answered
        self._stopping = False  # every request's cancel check says yes: the queue is being swapped
        self._swap = threading.Lock()  # one load or stop at a time
        self._load_lock: asyncio.Lock | None = None

    # ---------------------------------------------------------------- event-loop side
    def start(self) -> None:
        """Nothing to start until a model is loaded (kept for the server's start-up sequence)."""

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the queue (the running batch between steps) and close the backend."""
        self._retire(timeout)
        self.state = "stopped"

    @property
    def ready(self) -> bool:
        return self.state == "ready" and self.backend is not None and self.batcher is not None

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
        """Whether real (non-prefetch) work is in flight; prefetches yield to it."""
        return self._real_inflight > 0

    async def load(
        self, model_path: str | None, device: str | None, dtype: str | None, *remote: str | None
    ) -> str:
        """Load (or reload) the model, or connect to a remote one (``remote``: backend URL, API key,
        model id, as :func:`make_backend` takes them); returns its id or raises :class:`LoadFailed`."""
        if self._load_lock is None:
            self._load_lock = asyncio.Lock()
        self.state = "loading"
        async with self._load_lock:
            return await asyncio.to_thread(self._load, (model_path, device, dtype, *remote))

    async def infill(self, prepare: Prepare, ticket: Ticket, prefetch: bool = False) -> str:
        """Run one hole through the model; ``prepare`` cuts the context with the backend's tokenizer.

        Raises :class:`Cancelled` when ``ticket`` was cancelled first (or while it ran),
        :class:`NotReady` without a model. If the awaiting task is cancelled ($/cancelRequest), the
        ticket is cancelled too, which stops the engine between steps.
        """
        backend, batcher = self.backend, self.batcher
        if not self.ready or backend is None or batcher is None:
            raise NotReady(self.error or "the model is not loaded yet")
        if ticket.cancelled:
            raise Cancelled("cancelled before it ran")
        if not prefetch:
            self._real_inflight += 1
        try:
            try:
                request = await asyncio.to_thread(prepare, backend)
            except Exception:
                log.exception("preparing a request failed")
                self.stats.bump("errors")
                raise
            if prefetch:
                cancel = lambda: self._stopping or ticket.cancelled or (not ticket.promoted and self.busy)
            else:
                cancel = lambda: self._stopping or ticket.cancelled
            try:
                future = batcher.submit(request, cancel, background=prefetch)
            except QueueClosed:
                raise NotReady("the model is being reloaded") from None
            try:
                completion = await asyncio.wrap_future(future)
            except Cancelled:
                self.stats.bump("prefetch_cancelled" if prefetch else "cancelled")
                raise
            except QueueClosed:
                raise NotReady("the model was unloaded before the request ran") from None
            except Exception:
                log.exception("the model failed on a request")
                self.stats.bump("errors")
                raise
            return completion.text
        except asyncio.CancelledError:  # $/cancelRequest: the queue drops or stops it
            ticket.cancel()
            self.stats.bump("prefetch_cancelled" if prefetch else "cancelled")
            raise
        finally:
            if not prefetch:
                self._real_inflight -= 1

    # ---------------------------------------------------------------- loading thread
    def _count_batch(self, size: int) -> None:
        self.stats.bump("model_calls")
        self.stats.bump("model_requests", size)
        if size > 1:
            self.stats.bump("batched_calls")

    def _retire(self, timeout: float | None = None) -> None:
        """Stop the current queue (its running batch between steps) and close the backend."""
        with self._swap:
            batcher, backend = self.batcher, self.backend
            self.batcher = self.backend = None
            self._stopping = True
            try:
                if batcher is not None:
                    batcher.close(timeout=timeout)
                if backend is not None:
                    try:
                        backend.close()
                    except Exception:  # noqa: BLE001 - closing on the way out must not raise
                        log.exception("closing the backend failed")
            finally:
                self._stopping = False

    def _load(self, args: tuple) -> str:
        self._retire()
        self.state = "loading"
        try:
            if self.queue is None:
                raise RuntimeError(
                    "this language server has no request queue (start it with `diffill serve`)"
                )
            with reporting(self.load_progress):  # a hub download reports through $/progress
                backend = self.factory(*args)
        except BaseException as exc:  # noqa: BLE001 - a load failure must never kill the server
            self.state = "failed"
            self.error = f"{type(exc).__name__}: {exc}"
            self.model_id = None
            log.error("loading the model failed: %s", self.error, exc_info=exc)
            raise LoadFailed(self.error) from None
        with self._swap:
            # no wait for company: an editor's own requests are never concurrent enough to pay
            self.batcher = self.queue(
                backend,
                max_batch=self.max_batch,
                wait_ms=0.0,
                name="diffill-engine",
                on_batch=self._count_batch,
            )
            self.backend = backend
        self.model_id = backend.model_id
        self.loaded_args = args
        self.error = None
        self.state = "ready"
        return self.model_id
