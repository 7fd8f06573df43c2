"""One thread runs every model computation of the process: loading, the load-time measurements
and every forward.

Why: torch's CPU build parallelises each op with OpenMP (GNU libgomp), and once one thread has
run parallel regions, every other thread that runs them pays for it on every op. Measured on a
2-core Xeon (torch 2.13): an elementwise add over [240, 896] took 0.011 ms in the thread that ran
torch first and 0.08 ms in a second thread, even a second after the first went idle; the
0.5B model's answers took 1.5x as long in the language server's worker as in the thread that
loaded it (1.59 against 1.08 s for one request of 32 tokens). The servers load the model in
one thread and decode in another (the language server's loader and its queue's worker; the HTTP
server's main thread and its batcher), so every request paid that. Running all of it here keeps
the cost of the first thread for all of them; the callers (the queue's worker, the event loop,
a library user's threads) only wait.

A call made on this thread runs at once (so nothing here can deadlock on itself); any other runs
in a copy of the caller's context (its context variables: who hears a load's progress), as
``asyncio.to_thread`` runs it. The thread is a daemon: it never holds the process open.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

__all__ = ["on_compute_thread"]

T = TypeVar("T")
NAME = "diffill-compute"

_lock = threading.Lock()
_jobs: queue.SimpleQueue | None = None
_thread: threading.Thread | None = None


def _work(jobs: queue.SimpleQueue) -> None:
    while True:
        fut, fn, args, kwargs = jobs.get()
        if not fut.set_running_or_notify_cancel():
            continue
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, which re-raises it
            fut.set_exception(exc)


def on_compute_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` run on the compute thread; its result, or its exception raised here."""
    global _jobs, _thread
    if threading.current_thread() is _thread:
        return fn(*args, **kwargs)
    with _lock:
        if _thread is None or not _thread.is_alive():
            _jobs = queue.SimpleQueue()
            _thread = threading.Thread(target=_work, args=(_jobs,), name=NAME, daemon=True)
            _thread.start()
        jobs = _jobs
    fut: Future = Future()
    jobs.put((fut, contextvars.copy_context().run, (fn, *args), kwargs))
    return fut.result()
