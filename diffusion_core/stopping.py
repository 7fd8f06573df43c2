"""When a left-to-right decode ends before ``max_tokens``: the one stop rule of a request.

Two reasons, both asked about the verified text as it grows (so a model that decodes left to
right stops early, which on a CPU is most of the latency saved):

- a stop string (as in the OpenAI API): the text ends before the first one;
- a time budget (as llama.cpp's ``t_max_predict_ms`` for FIM): once ``time_budget_ms`` have
  passed since the engine took the request, the completion ends at the next line end. The line
  being written is always finished and whole lines are kept, so a slow machine still shows a
  useful suggestion instead of a 64-token block that arrives seconds after the user moved on.

Samplers that denoise a whole block at once (the embedded families) never ask; their text is
still cut at the stop strings afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

__all__ = ["StopRule"]


class StopRule:
    """``rule(tokens)`` says whether to end now; ``rule.cut(text)`` is the text to return and
    why it ended early ("stop", "time") or None."""

    def __init__(
        self,
        decode: Callable[[list[int]], str],
        stops: Sequence[str] = (),
        time_budget_ms: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.decode = decode
        self.stops = tuple(s for s in stops if s)
        self.clock = clock
        self.deadline = None if time_budget_ms is None else clock() + time_budget_ms / 1000.0
        self.timed_out = False

    @property
    def active(self) -> bool:
        """Whether a sampler has anything to ask (no rule: no decoding on every step)."""
        return bool(self.stops) or self.deadline is not None

    def __call__(self, tokens: list[int]) -> bool:
        text = self.decode(tokens)
        if any(s in text for s in self.stops):
            return True
        if self.deadline is not None and _line_end(text) >= 0 and self.clock() >= self.deadline:
            self.timed_out = True
            return True
        return False

    def cut(self, text: str) -> tuple[str, str | None]:
        at = min((i for s in self.stops if (i := text.find(s)) >= 0), default=None)
        if at is not None:
            return text[:at], "stop"
        if self.timed_out and (end := _last_line_end(text)) >= 0:
            return text[:end], "time"
        return text, None


def _line_end(text: str) -> int:
    """Index of the first newline that ends a line with content, or -1 (leading blank lines are
    not a suggestion yet)."""
    start = len(text) - len(text.lstrip())
    return text.find("\n", start)


def _last_line_end(text: str) -> int:
    """Index of the last newline after content: the end of the last whole line."""
    return text.rfind("\n") if _line_end(text) >= 0 else -1
