"""One completion request from document position to ghost text, cheapest answer first.

typed-through remainder → cache → (debounced, superseding) model run → post-processing →
remember what was shown → prefetch what comes after it. The LSP wiring in ``server.py`` turns a
:class:`Suggestion` into an inline item or a completion item.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from lsprotocol import types

from diffusion_core.interface import (
    ANCHOR_CHARS,
    Backend,
    InfillRequest,
    SamplingOptions,
    cut_prefix,
    cut_suffix,
)

from .cache import CompletionCache, Shown, TypedThrough, cache_key
from .context import Context, RingBuffer, after_accepting, build_context
from .documents import DocumentStore
from .postprocess import postprocess
from .scheduler import Scheduler
from .settings import Settings
from .stats import Stats
from .worker import EngineWorker, NotReady, Prepare

__all__ = ["Completer", "Suggestion"]

log = logging.getLogger(__name__)

# a request that arrives while the model loads waits this long for it (a user typing at start-up
# gets a suggestion when the model is ready instead of an empty answer that is never asked again)
MODEL_WAIT_S = 60.0


@dataclass(frozen=True)
class Suggestion:
    """Text to insert over ``[start, end)`` (an empty range at the cursor for pure insertion)."""

    id: str
    text: str
    start: types.Position
    end: types.Position
    source: str  # "model" | "cache" | "prefetch" | "typed-through"


class Completer:
    """The completion pipeline; owns the cache, typed-through state and the ring buffer."""

    def __init__(
        self,
        store: DocumentStore,
        worker: EngineWorker,
        stats: Stats,
        settings: Callable[[], Settings],
        report: Callable[[str], None] | None = None,
    ) -> None:
        """``report`` shows the user a failed completion's error (each distinct one once per
        model and settings), so a setting the model cannot honour does not fail in silence."""
        self.store = store
        self._report = report
        self._reported: set[str] = set()
        self.worker = worker
        self.stats = stats
        self.scheduler = Scheduler(worker, stats)
        self._settings = settings
        s = settings()
        self.cache = CompletionCache(s.cache_size, s.cache_ttl_s)
        self.typed = TypedThrough()
        self.ring = RingBuffer()
        self._ids = itertools.count(1)
        self._prefetched: OrderedDict[bytes, None] = OrderedDict()
        self._last_cursor: tuple[str, int] | None = None
        self._anchors: dict[str, str] = {}  # per document: where the last prefix cut started
        # this session's own: the engine lends context K/V cached by one session's requests only to
        # that session's (a TCP server serves one editor after another from one loaded engine,
        # and a team server many editors at once)
        self.cache_scope = secrets.token_hex(16)

    def configure(self, settings: Settings) -> None:
        self.cache.configure(settings.cache_size, settings.cache_ttl_s)
        self._reported.clear()

    def model_changed(self) -> None:
        """A new model answers differently: forget what the old one said."""
        self.cache.clear()
        self._prefetched.clear()
        self._reported.clear()

    # ---------------------------------------------------------------- document events
    def opened(self, uri: str) -> None:
        doc = self.store.get(uri)
        if doc is not None:
            self.ring.add(doc, 0)

    def saved(self, uri: str) -> None:
        doc = self.store.get(uri)
        if doc is not None and self._last_cursor and self._last_cursor[0] == uri:
            self.ring.add(doc, self._last_cursor[1])

    def closed(self, uri: str) -> None:
        self.typed.forget(uri)
        self._anchors.pop(uri, None)

    def accepted(self, uri: str | None = None, line: int | None = None) -> None:
        self.stats.bump("accepted")
        doc = self.store.get(uri) if uri else None
        if doc is not None and line is not None:
            self.ring.add(doc, min(max(line, 0), doc.line_count - 1))

    # ---------------------------------------------------------------- requests
    async def complete(
        self,
        uri: str,
        position: types.Position,
        invoked: bool,
        selected: types.SelectedCompletionInfo | None = None,
    ) -> Suggestion | None:
        """The suggestion for ``position``, or None (nothing worth showing, no model yet, stale)."""
        self.stats.bump("requests")
        result = await self._complete(uri, position, invoked, selected)
        if result is None:
            self.stats.bump("empty")
        else:
            self.stats.bump("shown")
        return result

    async def _complete(
        self, uri: str, position: types.Position, invoked: bool, selected: types.SelectedCompletionInfo | None
    ) -> Suggestion | None:
        s = self._settings()
        doc = self.store.get(uri)
        if doc is None or not doc.in_sync or not s.enabled or not s.language_enabled(doc.language_id):
            return None
        if not self.worker.ready and not await self.worker.wait_ready(MODEL_WAIT_S):
            return None  # still loading after the wait, or failed (the user was told)
        if self.store.get(uri) is not doc:
            return None
        # a position past the end of the document means its end (LSP); answer with that range
        position = doc.to_position(doc.to_point(position))
        ctx = build_context(doc, position, s, self.ring, selected)
        self._track_cursor(uri, doc.to_point(position).line)

        if not ctx.lead:
            rest = self.typed.remainder(uri, ctx.tail, ctx.edit.suffix)
            if rest is not None:
                self.stats.bump("typed_through_hits")
                self.typed.remember(uri, Shown(ctx.tail, ctx.edit.suffix, rest, ctx.tail_limit))
                return self._suggest(ctx, rest, "typed-through")

        model_id = self.worker.model_id or ""
        key = cache_key(model_id, s.sampling_key(), *ctx.key_parts())
        raw = self.cache.get(key)
        source = "cache"
        if raw is not None:
            self.stats.bump("cache_hits")
            if key in self._prefetched:
                self.stats.bump("prefetch_hits")
                source = "prefetch"
        else:
            version = doc.version
            debounce = 0.0 if invoked else s.debounce_ms / 1000.0
            try:
                prepare = _prepare(ctx, s, self._anchors, self.cache_scope)
                raw = await self.scheduler.run(uri, key, prepare, debounce)
            except NotReady:
                return None
            except Exception as exc:  # noqa: BLE001 - a model error is logged and shown once; no item
                log.exception("completion failed for %s", uri)
                message = str(exc) or type(exc).__name__
                if self._report is not None and message not in self._reported:
                    self._reported.add(message)
                    self._report(message)
                return None
            if raw is None:
                return None
            self.cache.put(key, raw)
            if self.store.get(uri) is not doc or doc.version != version:
                self.stats.bump("superseded")
                return None  # the document moved on while the model ran: this answer is stale
            source = "model"
        text = postprocess(raw, ctx.edit)
        if text is None:
            self.typed.forget(uri)
            return None
        self.typed.remember(uri, Shown(ctx.tail, ctx.edit.suffix, text, ctx.tail_limit))
        if s.prefetch:
            self._prefetch(ctx, text, s, model_id)
        return self._suggest(ctx, ctx.lead + text, source)

    def _suggest(self, ctx: Context, text: str, source: str) -> Suggestion:
        return Suggestion(str(next(self._ids)), text, ctx.replace_start, ctx.position, source)

    def _prefetch(self, ctx: Context, text: str, s: Settings, model_id: str) -> None:
        nxt = after_accepting(ctx, text)
        key = cache_key(model_id, s.sampling_key(), *nxt.key_parts())
        if key in self.cache:
            return

        def store(k: bytes, raw: str) -> None:
            self.cache.put(k, raw)
            self._prefetched[k] = None
            while len(self._prefetched) > 64:
                self._prefetched.popitem(last=False)

        self.scheduler.prefetch(key, _prepare(nxt, s, self._anchors, self.cache_scope), store)

    def _track_cursor(self, uri: str, line: int) -> None:
        """Moving to another file files a chunk of the previous one into the ring buffer."""
        last = self._last_cursor
        if last is not None and last[0] != uri:
            prev = self.store.get(last[0])
            if prev is not None:
                self.ring.add(prev, min(last[1], prev.line_count - 1))
        self._last_cursor = (uri, line)


def _prepare(
    ctx: Context, s: Settings, anchors: dict[str, str] | None = None, scope: str | None = ""
) -> Prepare:
    """Cut the windows to the token budgets; runs in the worker with the backend's tokenizer.

    ``anchors`` remembers, per document, where the last prefix cut started, so consecutive
    requests cut at the same place (their context K/V is then reused, see ``cut_prefix``), by
    requests of the same ``scope`` only (``InfillRequest.cache_scope``).
    Where the cursor's line already has code, the suggestion is the rest of that line (the model
    stops at its end, which on a CPU is most of the latency saved); several lines are suggested
    from a blank line, where a new block starts."""

    def prepare(backend: Backend) -> InfillRequest:
        count = backend.count_tokens
        anchor = anchors.get(ctx.uri, "") if anchors is not None else None
        prefix = cut_prefix(ctx.prefix, s.prefix_tokens, count, anchor)
        if anchors is not None:
            anchors[ctx.uri] = prefix[:ANCHOR_CHARS]
        if ctx.extra:
            prefix = cut_prefix(ctx.extra, s.extra_context_tokens, count) + prefix
        suffix = cut_suffix(ctx.suffix, s.suffix_tokens, count)
        return InfillRequest(
            prefix=prefix,
            suffix=suffix,
            max_tokens=s.max_tokens,
            options=SamplingOptions(quality=s.quality, length=s.length),
            stop=("\n",) if ctx.edit.mid_line or ctx.edit.line_prefix.strip() else (),
            time_budget_ms=s.time_budget_ms or None,
            cache_scope=scope,
        )

    return prepare
