"""Answers that need no model call: the completion cache and typed-through reuse.

Both matter because a user notices latency most when they pause, move back and forth, or type
exactly what the ghost text shows; none of those should cost a diffusion run.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from cachetools import TTLCache

__all__ = ["CompletionCache", "Shown", "TypedThrough", "cache_key"]


def cache_key(
    model_id: str, sampling: tuple, language: str, prefix: str, suffix: str, extra: str = ""
) -> bytes:
    """A short digest of everything that decides the model's output.

    ``prefix``/``suffix`` are the windows the model sees (the prefix tail and suffix head), so a
    change far away from the cursor does not miss the cache, and a change inside the window does.
    """
    h = hashlib.blake2b(digest_size=20)
    for part in (model_id, repr(sampling), language, prefix, suffix, extra):
        data = part.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.digest()


class CompletionCache:
    """LRU + TTL cache of raw model completions (post-processing is redone per request)."""

    def __init__(
        self, size: int = 512, ttl_s: float = 600.0, timer: Callable[[], float] = time.monotonic
    ) -> None:
        self._timer = timer
        self._size = size
        self._ttl = ttl_s
        self._data: TTLCache | None = self._make()

    def _make(self) -> TTLCache | None:
        if self._size <= 0 or self._ttl <= 0:
            return None
        return TTLCache(maxsize=self._size, ttl=self._ttl, timer=self._timer)

    def configure(self, size: int, ttl_s: float) -> None:
        """Apply new settings; a change of either empties the cache."""
        if (size, ttl_s) != (self._size, self._ttl):
            self._size, self._ttl = size, ttl_s
            self._data = self._make()

    def get(self, key: bytes) -> str | None:
        if self._data is None:
            return None
        return self._data.get(key)

    def put(self, key: bytes, text: str) -> None:
        if self._data is not None:
            self._data[key] = text

    def clear(self) -> None:
        if self._data is not None:
            self._data.clear()

    def __contains__(self, key: bytes) -> bool:
        return self._data is not None and key in self._data

    def __len__(self) -> int:
        return 0 if self._data is None else len(self._data)


@dataclass(frozen=True)
class Shown:
    """The completion last shown in a document, with the text around the cursor at that time."""

    tail: str  # the last ``limit`` characters before the cursor
    suffix: str  # the suffix window after the cursor
    text: str  # what was shown (post-processed)
    limit: int  # how long ``tail`` may be


class TypedThrough:
    """Per document: if the user typed the start of the shown completion, offer the rest."""

    def __init__(self) -> None:
        self._shown: dict[str, Shown] = {}

    def remember(self, uri: str, shown: Shown) -> None:
        self._shown[uri] = shown

    def forget(self, uri: str) -> None:
        self._shown.pop(uri, None)

    def remainder(self, uri: str, tail: str, suffix: str) -> str | None:
        """The rest of the shown completion when ``tail`` is the old tail plus a typed start of
        it and the text after the cursor did not change; None otherwise."""
        shown = self._shown.get(uri)
        if shown is None or suffix != shown.suffix:
            return None
        text = shown.text
        for k in range(1, len(text)):
            piece = text[:k]
            if tail.endswith(piece) and (shown.tail + piece)[-shown.limit :] == tail:
                rest = text[k:]
                return rest if rest.strip() else None
        return None

    def __len__(self) -> int:
        return len(self._shown)
