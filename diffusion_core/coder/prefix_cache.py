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
everything after it in either order — unless *reuse after an edit* is on (``shift_keys``): then
the tokens after the edit that match the earlier context's end keep their K/V, moved to their new
positions (RoPE's rotations compose, so the keys are rotated by the shift, not recomputed), and
only the edited tokens and the last ``fresh_tail`` context tokens are run. That moved K/V was
computed before the edit, so it is an approximation (llama.cpp's ``--cache-reuse`` makes the same
one): the answer can differ from a cold request's. K/V moved once is not moved again: the next
edit before the moved part recomputes from there, so the cache never holds more than one edit's
approximation. The engine turns it on (``$DIFFILL_REUSE_AFTER_EDIT=0``: off).

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

import torch

from ..kv_cache import KVCache

ShiftKeys = Callable[[torch.Tensor, int], torch.Tensor]  # keys, positions moved -> rotated keys

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


def common_suffix(a: list[int], b: list[int], limit: int) -> int:
    """How many tokens ``a`` and ``b`` share at their ends, at most ``limit``."""
    n = min(len(a), len(b), limit)
    i = 0
    while i < n and a[-1 - i] == b[-1 - i]:
        i += 1
    return i


class PrefixCache:
    """Recent contexts' K/V, most recently used first, at most ``max_bytes`` in all.

    ``shift_keys`` turns on reuse after an edit (the module's docstring): at least ``min_shift``
    matching tokens after an edit of at most ``max_edit`` tokens are moved rather than recomputed
    (the more text the moved K/V never saw, the further it is from the truth)."""

    def __init__(
        self,
        max_bytes: int = 256 << 20,
        slack: int = 256,
        shift_keys: ShiftKeys | None = None,
        min_shift: int = 32,
        fresh_tail: int = 16,
        max_edit: int = 64,
    ) -> None:
        self.max_bytes = max_bytes
        self.slack = slack  # extra positions allocated, so a slightly longer next context fits
        self.shift_keys = shift_keys
        self.min_shift = min_shift
        self.fresh_tail = max(1, fresh_tail)  # the sampler needs the last context token's output
        self.max_edit = max_edit  # tokens, on either side: a bigger edit is recomputed after it
        self._entries: list[_Entry] = []
        self.requests = 0
        self.context_tokens = 0  # context tokens of all requests
        self.reused_tokens = 0  # of which taken from the cache instead of computed
        self.shifted_tokens = 0  # of those, moved after an edit (approximate)

    def take(
        self, ctx: list[int], length: int, make: Callable[[int], KVCache], scope: str | None = ""
    ) -> tuple[KVCache, int, tuple[int, int] | None]:
        """A cache of at least ``length`` positions whose first ``n`` hold the K/V of ``ctx[:n]``,
        ``n``, and a *hole* ``(a, b)`` or None: positions the caller must compute first, causally
        (``ctx[a:b]``, which attend only to the exact ``ctx[:a]``); after an edit the positions
        ``[b, n)`` hold moved K/V. The entry comes from ``scope`` (none when ``scope`` is None).
        At least the last context token is always left to compute (the sampler needs its
        output); the entry is removed until :meth:`put` returns it."""
        self.requests += 1
        self.context_tokens += len(ctx)
        best, n, tail = None, 0, 0
        for e in self._entries if scope is not None else ():
            if e.scope != scope:
                continue
            k = common_prefix(e.tokens, ctx)
            room = min(len(ctx), len(e.tokens)) - k  # the ends may not overlap the shared start
            # K/V moved once is not moved again: what was computed before an edit stays one edit old
            movable = self.shift_keys is not None and e.cache.moved_from is None
            s = common_suffix(e.tokens, ctx, room) if movable else 0
            edit = max(len(ctx), len(e.tokens)) - k - s  # the edited tokens, old or new
            s = s if s - self.fresh_tail >= self.min_shift and edit <= self.max_edit else 0
            if k + s > n + tail:
                best, n, tail = e, k, s
        n = min(n, len(ctx) - 1)
        if best is None or n + tail <= 0:
            return make(length + self.slack), 0, None
        self._entries.remove(best)
        cache = best.cache
        if tail:  # ctx[-tail:] is the old context's end, moved by `delta` positions
            delta = len(ctx) - len(best.tokens)
            src = slice(len(best.tokens) - tail, len(best.tokens) - self.fresh_tail)
            moved_k = (
                self.shift_keys(cache.k[:, :, :, src], delta) if delta else cache.k[:, :, :, src].clone()
            )
            moved_v = cache.v[:, :, :, src].clone()
        if cache.length < length or cache.k.shape[1] != 1:
            bigger = make(length + self.slack)
            bigger.k[:, :, :, :n] = cache.k[:, :, :, :n]
            bigger.v[:, :, :, :n] = cache.v[:, :, :, :n]
            bigger.moved_from = cache.moved_from
            cache = bigger
        cache.write_mask = None
        if cache.moved_from is not None and cache.moved_from >= n:  # recomputed from n on: exact again
            cache.moved_from = None
        hole = None
        if tail:
            dst = slice(len(ctx) - tail, len(ctx) - self.fresh_tail)
            cache.k[:, :, :, dst] = moved_k
            cache.v[:, :, :, dst] = moved_v
            hole = (n, len(ctx) - tail) if n < len(ctx) - tail else None
            self.shifted_tokens += tail - self.fresh_tail
            cache.moved_from = len(ctx) - tail
            n = len(ctx) - self.fresh_tail
        self.reused_tokens += n - (hole[1] - hole[0] if hole else 0)
        return cache, n, hole

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
            "shifted_context_tokens": self.shifted_tokens,
            "reuse_after_edit": self.shift_keys is not None,
        }
