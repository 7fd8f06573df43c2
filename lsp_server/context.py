"""What the model sees around the cursor, cut by the model's token budget.

Two steps, so that the cheap one can key the cache:

1. on the event loop, character windows: the prefix tail and suffix head, line-aligned, at most
   ``CHARS_PER_TOKEN`` characters per budget token (generous: it is the token cut that binds);
2. in the engine worker, ``diffusion_core.interface.cut_prefix`` / ``cut_suffix`` (the one
   context-budget function, which the engine and the remote backend use too) trim those windows
   to the token budgets with the backend's token counter, keeping whole lines where they fit, so
   the model never sees half a line at the far end and the engine's own cut of the same text
   with the same function has nothing left to do.

Optionally, snippets of other open or recently edited files of the same language go before the
prefix within their own token budget (a ring buffer of chunks, as llama.vscode does), because
code a user just wrote in file A is the best hint for what they write in file B.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import deque
from dataclasses import dataclass, replace

from lsprotocol import types

from .documents import Document
from .postprocess import EditContext
from .settings import Settings

__all__ = [
    "CHARS_PER_TOKEN",
    "Context",
    "RingBuffer",
    "after_accepting",
    "build_context",
    "prefix_window",
    "suffix_window",
]

CHARS_PER_TOKEN = 8
_EDIT_HEAD = 2000  # characters after the cursor that post-processing and typed-through look at
_EOL = re.compile(r"\r\n|\r|\n")
_COMMENT = {
    "python": "#",
    "shellscript": "#",
    "ruby": "#",
    "perl": "#",
    "r": "#",
    "yaml": "#",
    "toml": "#",
    "dockerfile": "#",
    "makefile": "#",
    "elixir": "#",
    "julia": "#",
    "nim": "#",
    "lua": "--",
    "sql": "--",
    "haskell": "--",
}


@dataclass(frozen=True)
class Context:
    """One request's view of the document: cache-key windows, post-processing facts, range."""

    uri: str
    language: str
    version: int
    position: types.Position  # the cursor, in client units
    replace_start: types.Position  # where the item's range starts (before a selected suggestion)
    lead: str  # text the item must start with (the selected suggestion's text), usually ""
    tail: str  # the last ``tail_limit`` characters before the cursor (typed-through key)
    tail_limit: int
    prefix: str  # line-aligned prefix window
    suffix: str  # line-aligned suffix window
    extra: str  # snippets from other files, oldest first (uncut)
    edit: EditContext

    def key_parts(self) -> tuple[str, str, str, str]:
        return (self.language, self.prefix, self.suffix, self.extra)


def prefix_window(tail: str, limit: int) -> str:
    """The last ``limit`` characters of ``tail``, starting at a line start when one is in reach.

    ``tail`` may hold one character more than ``limit``: it tells whether the window's first
    character starts a line. Depends only on the last ``limit + 1`` characters, so a prefix grown
    by typing gives the same window as the document would.
    """
    if len(tail) <= limit:
        return tail
    tail = tail[-(limit + 1) :]
    m = _EOL.search(tail)
    if m is None or m.end() == len(tail):
        return tail[1:]  # no line start in reach: the cursor's line alone is longer than the limit
    return tail[m.end() :]


def suffix_window(head: str, limit: int) -> str:
    """The first ``limit`` characters of ``head``, ending at a line end when one is in reach."""
    if len(head) < limit:
        return head
    head = head[:limit]
    ends = [m.end() for m in _EOL.finditer(head)]
    return head[: ends[-1]] if ends else head


# --------------------------------------------------------------------------------- ring buffer
@dataclass(frozen=True)
class _Chunk:
    uri: str
    language: str
    text: str
    lines: frozenset[str]
    at: float


class RingBuffer:
    """Recently seen chunks of code, a few dozen lines each, newest last."""

    def __init__(self, max_chunks: int = 16, chunk_lines: int = 32) -> None:
        self.max_chunks = max_chunks
        self.chunk_lines = chunk_lines
        self._chunks: deque[_Chunk] = deque()

    def add(self, doc: Document, around_line: int) -> None:
        """Remember the chunk of ``doc`` around a line (the cursor, a save, an opened file's top)."""
        if not doc.language_id:
            return
        start = max(0, around_line - self.chunk_lines // 2)
        end = min(doc.line_count, start + self.chunk_lines)
        text = "\n".join(doc.line(i) for i in range(start, end)).strip("\n")
        lines = frozenset(ln.strip() for ln in text.split("\n") if ln.strip())
        if len(lines) < 3:
            return
        kept = [c for c in self._chunks if not (c.uri == doc.uri and _similar(c.lines, lines))]
        kept.append(_Chunk(doc.uri, doc.language_id, text, lines, time.monotonic()))
        self._chunks = deque(kept[-self.max_chunks :])

    def drop(self, uri: str) -> None:
        self._chunks = deque(c for c in self._chunks if c.uri != uri)

    def snippets(self, uri: str, language: str, max_chars: int) -> str:
        """Chunks of the same language from other files, newest nearest the prefix."""
        if max_chars <= 0:
            return ""
        picked: list[str] = []
        total = 0
        comment = _COMMENT.get(language, "//")
        for c in reversed(self._chunks):
            if c.uri == uri or c.language != language:
                continue
            block = f"{comment} {c.uri.rsplit('/', 1)[-1]}\n{c.text}\n\n"
            if total + len(block) > max_chars:
                break
            picked.append(block)
            total += len(block)
        return "".join(reversed(picked))

    def __len__(self) -> int:
        return len(self._chunks)


def _similar(a: frozenset[str], b: frozenset[str]) -> bool:
    union = len(a | b)
    return union == 0 or len(a & b) / union > 0.6


# --------------------------------------------------------------------------------- building
def build_context(
    doc: Document,
    position: types.Position,
    settings: Settings,
    ring: RingBuffer | None = None,
    selected: types.SelectedCompletionInfo | None = None,
) -> Context:
    """Everything about one request that does not need the model's tokenizer.

    With ``selected`` (an item highlighted in the editor's suggest widget), the prefix reads as if
    that item were inserted, and the answer must start with its text (LSP 3.18).
    """
    point = doc.to_point(position)
    start, lead = point, ""
    if selected is not None:
        s = doc.to_point(selected.range.start)
        if s <= point and s.line == point.line:
            start, lead = s, selected.text
    p_limit = settings.prefix_tokens * CHARS_PER_TOKEN
    s_limit = max(settings.suffix_tokens, 1) * CHARS_PER_TOKEN
    tail = (doc.text_before(start, p_limit + 1) + lead)[-(p_limit + 1) :]
    head = doc.text_after(point, max(s_limit + 1, _EDIT_HEAD))
    suffix = suffix_window(head, s_limit) if settings.suffix_tokens else ""
    line = doc.line(point.line)
    unit, eol = doc.style()
    edit = EditContext(
        line_prefix=line[: start.col] + lead,
        line_suffix=line[point.col :],
        suffix=head[:_EDIT_HEAD],
        indent_unit=unit,
        eol=eol,
        max_lines=settings.max_lines,
    )
    extra = ""
    if ring is not None and settings.extra_context_tokens:
        extra = ring.snippets(doc.uri, doc.language_id, settings.extra_context_tokens * CHARS_PER_TOKEN)
    return Context(
        uri=doc.uri,
        language=doc.language_id,
        version=doc.version,
        position=position,
        replace_start=doc.to_position(start) if lead else position,
        lead=lead,
        tail=tail,
        tail_limit=p_limit + 1,
        prefix=prefix_window(tail, p_limit),
        suffix=suffix,
        extra=extra,
        edit=edit,
    )


def after_accepting(ctx: Context, text: str) -> Context:
    """The context the user will be in after accepting ``text`` (for speculative prefetch)."""
    tail = (ctx.tail + text)[-ctx.tail_limit :]
    last = _EOL.split(ctx.edit.line_prefix + text)[-1]
    edit = replace(ctx.edit, line_prefix=last)
    return replace(ctx, tail=tail, prefix=prefix_window(tail, ctx.tail_limit - 1), lead="", edit=edit)


def digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
