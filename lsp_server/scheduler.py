"""When the model runs: debounce, newest-wins per document, and speculative prefetch.

- Automatic triggers wait ``debounce`` seconds first, so a burst of keystrokes costs one run;
  Invoked triggers (the user asked) never wait.
- A new request for a document supersedes the older one: the older one's ticket is cancelled, so
  it stops between denoising steps (or is dropped from the queue) and answers empty. A stale
  result is never returned.
- A request for exactly the context that is already being computed (an editor asking for inline
  and list completions at once) waits for that run instead of superseding it.
- A prefetch computes the completion that follows the one just shown, in idle time. If the user
  accepts before it finishes, the request for that same context waits for it instead of
  starting over.

Concurrent requests from different documents are batched by the worker (see ``worker.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .stats import Stats
from .worker import Cancelled, EngineWorker, Prepare, Ticket

__all__ = ["Scheduler"]

log = logging.getLogger(__name__)


class Scheduler:
    """Debounce, supersession and prefetch on top of :class:`EngineWorker`."""

    def __init__(self, worker: EngineWorker, stats: Stats) -> None:
        self.worker = worker
        self.stats = stats
        self._latest: dict[str, Ticket] = {}
        self._inflight: dict[bytes, asyncio.Future] = {}
        self._prefetch: tuple[bytes, Ticket, asyncio.Future] | None = None

    async def run(self, doc_key: str, key: bytes, prepare: Prepare, debounce_s: float = 0.0) -> str | None:
        """The model's raw text for one request, or None when a newer request for the same
        document superseded it. Raises ``asyncio.CancelledError`` on ``$/cancelRequest``."""
        shared = self._inflight.get(key)
        if shared is not None:
            return await asyncio.shield(shared)
        outcome: asyncio.Future = asyncio.get_running_loop().create_future()
        self._inflight[key] = outcome
        text: str | None = None
        try:
            text = await self._run(doc_key, key, prepare, debounce_s)
            return text
        finally:
            if self._inflight.get(key) is outcome:
                del self._inflight[key]
            outcome.set_result(text)  # waiters get None when this run was cancelled or failed

    async def _run(self, doc_key: str, key: bytes, prepare: Prepare, debounce_s: float) -> str | None:
        ticket = Ticket()
        older = self._latest.get(doc_key)
        if older is not None:
            older.cancel()
        self._latest[doc_key] = ticket
        try:
            if debounce_s > 0:
                await asyncio.sleep(debounce_s)
            if ticket.cancelled:
                self.stats.bump("superseded")
                return None
            text = await self._join_prefetch(key)
            if text is None:
                text = await self.worker.infill(prepare, ticket)
            if ticket.cancelled:
                self.stats.bump("superseded")
                return None
            return text
        except Cancelled:
            self.stats.bump("superseded")
            return None
        except asyncio.CancelledError:
            ticket.cancel()
            raise
        finally:
            if self._latest.get(doc_key) is ticket:
                del self._latest[doc_key]

    async def _join_prefetch(self, key: bytes) -> str | None:
        """Wait for a prefetch that is computing exactly this context, if there is one."""
        pf = self._prefetch
        if pf is None or pf[0] != key or pf[1].cancelled:
            return None
        pf[1].promoted = True
        try:
            return await asyncio.shield(pf[2])
        except Exception:  # noqa: BLE001 - cancelled or failed (Cancelled too): a normal run instead
            return None

    def prefetch(self, key: bytes, prepare: Prepare, on_done: Callable[[bytes, str], None]) -> None:
        """Start computing ``key`` in idle time; only the newest prefetch is kept."""
        if self._prefetch is not None:
            old_key, old_ticket, old_future = self._prefetch
            if old_key == key and not old_ticket.cancelled:
                return
            if not old_ticket.promoted:
                old_ticket.cancel()
        ticket = Ticket()
        future = asyncio.ensure_future(self.worker.infill(prepare, ticket, prefetch=True))
        self._prefetch = (key, ticket, future)

        def finished(f: asyncio.Future) -> None:
            if self._prefetch is not None and self._prefetch[2] is f:
                self._prefetch = None
            if f.cancelled():
                return
            exc = f.exception()
            if exc is None:
                self.stats.bump("prefetches")
                on_done(key, f.result())
            elif not isinstance(exc, Cancelled):
                log.debug("prefetch failed: %s", exc)

        future.add_done_callback(finished)

    def cancel_all(self) -> None:
        for t in self._latest.values():
            t.cancel()
        if self._prefetch is not None:
            self._prefetch[1].cancel()
