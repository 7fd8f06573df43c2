"""The seam between the servers and whatever fills the middle, importable without torch.

Why a separate module: the language server in team mode talks to a remote server and must not
pay for importing torch, yet it speaks the engine's API: :class:`Backend` (implemented by
``diffusion_core.engine.Engine`` and ``lsp_server.remote.RemoteBackend``), ``InfillRequest`` and
``SamplingOptions`` in, ``Completion`` out, ``Cancelled`` raised. ``diffusion_core.sampler`` and
``diffusion_core.engine`` re-export these, so the classes are the same objects everywhere.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = [
    "Backend",
    "CONFIDENCE_KINDS",
    "LENGTH_POLICIES",
    "OptionError",
    "QUALITY_RANGE",
    "QueueClosed",
    "QueueFactory",
    "RequestQueue",
    "ANCHOR_CHARS",
    "CACHE_SCOPE_HEADER",
    "CancelCheck",
    "Cancelled",
    "Completion",
    "InfillRequest",
    "SamplingOptions",
    "cut_prefix",
    "cut_suffix",
    "load_reporter",
    "reporting",
]

CONFIDENCE_KINDS = ("maxprob", "entropy", "margin")
# How the middle's mask count is chosen (diffusion_core/length.py):
# "fixed": max_tokens masks, the model ends early with an end token;
# "predict": one forward with max_tokens masks predicts the length, then exactly that many masks;
# "ensemble": try candidate_lengths in one batch, keep the candidate the model is surest of;
# "expand": DreamOn-style growing and shrinking (families with an expand token only);
# "auto": "expand" where the family has an expand token, "predict" where its checkpoint says it
#   was trained for length prediction, else "fixed".
LENGTH_POLICIES = ("auto", "fixed", "predict", "ensemble", "expand")
DECODERS = ("diffusion", "ar")
QUALITY_RANGE = (0.0, 1.0)
MAX_TEMPERATURE = 2.0  # as the OpenAI API allows


# asked between steps (and while waiting on a remote server): True means stop and raise Cancelled
CancelCheck = Callable[[], bool]

# who hears how a model load goes in this context (a hub download: the language server relays it
# as $/progress); set by the caller around a load, read deep inside it, so no layer in between
# needs a parameter for it
_load_reporter: ContextVar[Callable[[str], None] | None] = ContextVar("diffill_load_reporter", default=None)


@contextmanager
def reporting(report: Callable[[str], None] | None) -> Iterator[None]:
    """Loads (downloads) started inside this block report their progress to ``report``."""
    token = _load_reporter.set(report)
    try:
        yield
    finally:
        _load_reporter.reset(token)


def load_reporter() -> Callable[[str], None] | None:
    return _load_reporter.get()


class QueueClosed(RuntimeError):
    """The request queue (``diffusion_core.batcher.Batcher``) is closed: a reload or shutdown."""


class RequestQueue(Protocol):
    """The one request queue in front of a backend (``diffusion_core.batcher.Batcher``): both
    servers submit to it; the language server is handed its constructor by the command line."""

    def submit(
        self, request: InfillRequest, cancel: CancelCheck | None = None, background: bool = False
    ) -> Future[Completion]: ...

    def close(self, timeout: float | None = 5.0) -> None: ...


# builds the queue in front of ``backend``; ``on_batch(size)`` hears of every backend call
QueueFactory = Callable[..., RequestQueue]


class OptionError(ValueError):
    """A sampling option out of range; ``field`` names it (the HTTP error's ``param``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class Cancelled(Exception):
    """Raised between denoising steps when the caller's cancel check returns True."""


@dataclass(frozen=True)
class SamplingOptions:
    """How to decode. ``quality`` is the one user-facing knob: 0 = fastest, 1 = best."""

    quality: float = 0.7
    block_size: int = 32
    confidence: str = "maxprob"  # "maxprob" | "entropy" | "margin"
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    length: str = "auto"  # one of LENGTH_POLICIES
    candidate_lengths: tuple[int, ...] = (8, 16, 32, 64)  # for length="ensemble"
    cache: str = "dual"  # "dual" (DualCache) | "none" (full forward every step)
    refresh_every: int = 0  # with "dual": also refresh the whole cache every N steps of a block (0 = never)
    steps_per_block: int | None = None  # fixed forwards per block (benchmarks); overrides tau
    initial_masks: int = 4  # for length="expand": the middle starts this long
    # "diffusion": the model's masked-diffusion sampler; "ar": one token per forward, greedy, with
    # the base model alone (Diffill-Coder only: the peer its speed is measured against)
    decoder: str = "diffusion"
    # Diffill-Coder: window tokens are drafts the base checks before they count (at quality 1 the
    # output is then the base's own greedy answer); False commits them on confidence alone
    verify: bool = True
    # with verify: where the adapter is unsure, also draft tokens copied from the context
    lookup: bool = True

    def __post_init__(self) -> None:
        """The one validation of sampling options: the language server's settings, the HTTP
        server and library callers all get these messages (the HTTP error names ``field``)."""
        one_of = lambda names: f"must be one of {', '.join(names)}"  # noqa: E731
        checks = (
            ("quality", QUALITY_RANGE[0] <= self.quality <= QUALITY_RANGE[1], "must be between 0 and 1"),
            ("block_size", self.block_size >= 1, "must be >= 1"),
            ("length", self.length in LENGTH_POLICIES, one_of(LENGTH_POLICIES)),
            (
                "confidence",
                self.confidence in CONFIDENCE_KINDS,
                one_of(CONFIDENCE_KINDS),
            ),
            ("temperature", 0.0 <= self.temperature <= MAX_TEMPERATURE, "must be between 0 and 2"),
            ("top_p", 0.0 < self.top_p <= 1.0, "must be in (0, 1]"),
            ("cache", self.cache in ("dual", "none"), "must be 'dual' or 'none'"),
            ("steps_per_block", self.steps_per_block is None or self.steps_per_block >= 1, "must be >= 1"),
            ("initial_masks", self.initial_masks >= 1, "must be >= 1"),
            ("refresh_every", self.refresh_every >= 0, "must be >= 0"),
            ("decoder", self.decoder in DECODERS, one_of(DECODERS)),
        )
        for name, ok, why in checks:
            if not ok:
                raise OptionError(name, f"{name} {why}")

    @property
    def tau(self) -> float:
        """Confidence threshold, linear in quality: 0.7 at 0, 0.903 at 0.7 (about Fast-dLLM's 0.9),
        0.99 at 1."""
        return 0.7 + 0.29 * self.quality

    def step_cap(self, block_len: int) -> int:
        """Most forwards one block may take: block_len at quality 1, block_len/8 at quality 0."""
        if self.steps_per_block is not None:
            return min(self.steps_per_block, block_len)
        lo = max(1, math.ceil(block_len / 8))
        return max(1, round(lo + (block_len - lo) * self.quality))


@dataclass
class Completion:
    text: str  # never contains special tokens
    tokens: int  # tokens in the completion (before the end token)
    steps: int  # forward passes spent on this request
    latency_ms: float
    # "eos": the model ended it; "length": max_tokens reached; "stop": a stop string;
    # "time": the time budget ended it at a line end
    stop_reason: str


# how an HTTP client names its cache scope (a secret of its own, at least 16 characters): the
# Diffill server lends cached context K/V only to requests with the same bearer key and scope
CACHE_SCOPE_HEADER = "X-Diffill-Cache-Scope"


@dataclass
class InfillRequest:
    prefix: str
    suffix: str
    max_tokens: int = 64
    options: SamplingOptions | None = None
    stop: tuple[str, ...] = ()  # end the completion at the first of these (not included)
    # after this many ms, end at the next line end (whole lines kept, the first always finished;
    # left-to-right decoders only, see diffusion_core/stopping.py); None: no limit
    time_budget_ms: float | None = None
    # whose earlier contexts' K/V this request may reuse (and leave its own for): requests of one
    # editor session or one HTTP client share a scope, others never see its entries (a hit shows
    # in latency); None: reuse nothing, keep nothing (coder/prefix_cache.py)
    cache_scope: str | None = ""


@runtime_checkable
class Backend(Protocol):
    """What fills the middle for a server: the local engine, or a remote one over HTTP."""

    @property
    def model_id(self) -> str: ...

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` costs in this model's context budget (an estimate for remote models)."""
        ...

    def infill_batch(
        self, requests: Sequence[InfillRequest], cancel: CancelCheck | None = None
    ) -> list[Completion]:
        """Fill every request in one run, results in order; raise :class:`Cancelled` between
        steps once ``cancel()`` returns True."""
        ...

    def close(self) -> None:
        """Let go of the model (or the connections); the backend is not used afterwards."""
        ...


# ------------------------------------------------------------------------------ context budget
# The one place a context is cut to a token budget: the language server cuts with the backend's
# token counter before a request leaves it, the engine cuts every request it is handed (HTTP,
# library) with its tokenizer, the remote backend with its estimate; all by these two functions,
# so local and remote backends see the same context for the same document.
_EOL = re.compile(r"\r\n|\r|\n")
_MAX_CHARS_PER_TOKEN = 16  # no real text averages more; a longer text is first cut by characters


def _line_starts(text: str) -> list[int]:
    return [0] + [m.end() for m in _EOL.finditer(text) if m.end() < len(text)]


ANCHOR_CHARS = 160  # how much of the kept prefix's start identifies it for the next request
REFILL = 0.75  # a fresh cut keeps this share of the budget, leaving room to type before the next


def cut_prefix(text: str, budget: int, count: Callable[[str], int], anchor: str | None = None) -> str:
    """The longest end of ``text`` within ``budget`` tokens, starting at a line start if possible.

    ``anchor`` (the start of the previous request's cut, see :data:`ANCHOR_CHARS`) keeps the cut
    where it was while the text from there still fits: typing at the cursor then leaves every
    token before the cursor unchanged, so the engine reuses their K/V. When the text outgrows the
    budget the cut is made afresh at :data:`REFILL` of it, so it then stays put for a while."""
    if budget <= 0 or not text:
        return ""
    reach = budget * _MAX_CHARS_PER_TOKEN
    if len(text) > reach:  # a huge document: never count more than can possibly fit
        at = _EOL.search(text, len(text) - reach)
        text = text[at.end() :] if at is not None and at.end() < len(text) else text[-reach:]
    if anchor:
        at = text.rfind(anchor)
        if at == 0 or (at > 0 and text[at - 1] in "\r\n"):
            kept = text[at:]
            if count(kept) <= budget:
                return kept
    if count(text) <= budget:
        return text
    if anchor is not None:
        budget = max(1, int(budget * REFILL))
    starts = _line_starts(text)
    lo, hi = 1, len(starts)  # find the first start index whose rest fits
    while lo < hi:
        mid = (lo + hi) // 2
        if count(text[starts[mid] :]) <= budget:
            hi = mid
        else:
            lo = mid + 1
    if lo < len(starts):
        return text[starts[lo] :]
    # even the cursor's own line is too long: cut it by characters
    line = text[starts[-1] :]
    lo, hi = 0, len(line)
    while lo < hi:
        mid = (lo + hi) // 2
        if count(line[mid:]) <= budget:
            hi = mid
        else:
            lo = mid + 1
    return line[lo:]


def cut_suffix(text: str, budget: int, count: Callable[[str], int]) -> str:
    """The longest start of ``text`` within ``budget`` tokens, ending at a line end if possible."""
    if budget <= 0 or not text:
        return ""
    reach = budget * _MAX_CHARS_PER_TOKEN
    if len(text) > reach:
        ends = [m.end() for m in _EOL.finditer(text, 0, reach)]
        text = text[: ends[-1]] if ends else text[:reach]
    if count(text) <= budget:
        return text
    ends = [m.end() for m in _EOL.finditer(text)]
    lo, hi = 0, len(ends)  # number of whole lines that fit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(text[: ends[mid - 1]]) <= budget:
            lo = mid
        else:
            hi = mid - 1
    if lo > 0:
        return text[: ends[lo - 1]]
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(text[:mid]) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]
