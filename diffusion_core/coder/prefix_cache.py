"""Context K/V kept across requests and reused from the longest common prefix.

Why: while a user types, consecutive requests share almost all of their context. Diffill-Coder's
context is encoded causally by the untouched base, so the K/V of a token depends only on the
tokens before it: a new request whose context starts with the same tokens as an earlier one can
take that K/V as it is and run only the rest (what llama.cpp's ``cache_prompt`` does for AR). The
order of the prompt decides how much survives a keystroke. In the default SPM order
(``<|fim_prefix|><|fim_suffix|>S<|fim_middle|>P``, coder/family.py) the prefix comes last, so a
keystroke at the cursor keeps the K/V of the suffix and of the prefix up to the changed token and
recomputes only that tail; in PSM order (``<|fim_prefix|>P<|fim_suffix|>S<|fim_middle|>``) the
suffix after the cursor is recomputed too. An edit in the middle of the prefix recomputes
everything after it in either order.

Entries are whole :class:`~diffusion_core.kv_cache.KVCache` objects (taken out while a request
uses one, put back after), bounded in bytes. Each belongs to a *scope* (``InfillRequest.cache_scope``:
one editor session, one HTTP client holding its own secret) and is lent only to requests of the
same scope. Across scopes a hit would tell one client, by its latency, that another sent that
context recently, and would hand it K/V computed (and, in w8a8, rounded) in the other's request;
the shared byte bound is the only thing scopes have in common (a busy client can evict another's
entries, not read them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..kv_cache import KVCache

__all__ = ["PrefixCache"]


@dataclass
class _Entry:
    tokens: list[int]  # the context whose K/V the cache holds at positions [0, len(tokens))
    cache: KVCache
    scope: str  # only requests of this scope may take it

    @property
    def nbytes(self) -> int:
        return 2 * self.cache.k.numel() * self.cache.k.element_size()


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixCache:
    """Recent contexts' K/V, most recently used first, at most ``max_bytes`` in all."""

    def __init__(self, max_bytes: int = 256 << 20, slack: int = 256) -> None:
        self.max_bytes = max_bytes
        self.slack = slack  # extra positions allocated, so a slightly longer next context fits
        self._entries: list[_Entry] = []
        self.requests = 0
        self.context_tokens = 0  # context tokens of all requests
        self.reused_tokens = 0  # of which taken from the cache instead of computed

    def take(
        self, ctx: list[int], length: int, make: Callable[[int], KVCache], scope: str | None = ""
    ) -> tuple[KVCache, int]:
        """A cache of at least ``length`` positions whose first ``n`` hold the K/V of ``ctx[:n]``,
        and ``n``, from an entry of ``scope`` (none when ``scope`` is None). At least the last
        context token is always left to compute (the sampler needs its output); the entry is
        removed until :meth:`put` returns it."""
        self.requests += 1
        self.context_tokens += len(ctx)
        best, n = None, 0
        for e in self._entries if scope is not None else ():
            if e.scope != scope:
                continue
            k = common_prefix(e.tokens, ctx)
            if k > n:
                best, n = e, k
        n = min(n, len(ctx) - 1)
        if best is None or n <= 0:
            return make(length + self.slack), 0
        self._entries.remove(best)
        cache = best.cache
        if cache.length < length or cache.k.shape[1] != 1:
            bigger = make(length + self.slack)
            bigger.k[:, :, :, :n] = cache.k[:, :, :, :n]
            bigger.v[:, :, :, :n] = cache.v[:, :, :, :n]
            cache = bigger
        cache.write_mask = None
        self.reused_tokens += n
        return cache, n

    def put(self, ctx: list[int], cache: KVCache, scope: str | None = "") -> None:
        """Keep ``cache`` (holding ``ctx``'s K/V first) for later requests of ``scope`` (None:
        keep nothing)."""
        if scope is None:
            return
        self._entries.insert(0, _Entry(list(ctx), cache, scope))
        total = 0
        kept = []
        for e in self._entries:
            total += e.nbytes
            if total <= self.max_bytes or not kept:
                kept.append(e)
        self._entries = kept

    def clear(self) -> None:
        self._entries.clear()

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries)

    def stats(self) -> dict[str, int | float]:
        return {
            "prefix_cache_entries": len(self._entries),
            "prefix_cache_bytes": self.nbytes,
            "context_tokens": self.context_tokens,
            "reused_context_tokens": self.reused_tokens,
            "reused_fraction": round(self.reused_tokens / max(self.context_tokens, 1), 4),
        }
