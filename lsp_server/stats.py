"""Local counters for the status bar and for tests: nothing here leaves the machine.

``shown`` counts inline items handed to the editor (LSP has no "was displayed" signal, so this is
an upper bound); ``accepted`` counts runs of the ``diffill.accepted`` command that every item
carries, which editors run when the user accepts it. ``model_calls`` counts engine invocations,
which is how tests prove cache and typed-through answers never touched the model.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields

__all__ = ["ACCEPT_COMMAND", "Stats"]

ACCEPT_COMMAND = "diffill.accepted"


@dataclass
class Stats:
    """Thread-safe counters (the engine worker thread bumps the model ones)."""

    requests: int = 0  # completion requests received (inline + completion fallback)
    shown: int = 0
    accepted: int = 0
    cache_hits: int = 0
    typed_through_hits: int = 0
    prefetch_hits: int = 0  # cache hits on an entry that a speculative prefetch put there
    model_calls: int = 0  # engine batch calls, prefetch included
    model_requests: int = 0  # holes filled by those calls
    prefetches: int = 0  # prefetch runs that finished
    prefetch_cancelled: int = 0  # prefetch runs stopped because real work arrived
    batched_calls: int = 0  # engine calls that filled more than one request
    cancelled: int = 0  # engine runs stopped between steps ($/cancelRequest or supersession)
    superseded: int = 0  # requests answered empty because a newer one for the document came
    empty: int = 0  # requests answered with no items
    errors: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def bump(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def snapshot(self) -> dict[str, int]:
        """camelCase counters, as sent in the ``diffill/stats`` response."""
        with self._lock:
            data = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        return {_camel(k): v for k, v in data.items()}

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.shown if self.shown else 0.0


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)
