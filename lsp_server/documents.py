"""Open documents: incremental sync and LSP position encodings (utf-16, utf-8, utf-32).

Why not pygls' ``TextDocument``: it splits lines with ``str.splitlines``, which also breaks at form
feeds, ``\\x1c``-``\\x1e``, ``\\x85`` and ``\\u2028``/``\\u2029`` (LSP only knows ``\\n``, ``\\r\\n`` and
``\\r``), so every position after such a character lands on the wrong line; it also clamps a
column past the end of the last line to one character short of it, and re-splits the whole file on
every keystroke. Here a document is a list of lines (each keeping its terminator), an edit touches
only the lines in its range, and the text around the cursor is read without joining the file, so
multi-megabyte files stay cheap. pygls still negotiates the position encoding (see
``pygls.capabilities.ServerCapabilitiesBuilder.choose_position_encoding``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from lsprotocol import types

__all__ = ["Document", "DocumentStore", "Point", "split_lines"]

_EOL_SPLIT = re.compile(r"(\r\n|\r|\n)")
_UTF8 = "utf-8"
_UTF16 = "utf-16"
_UTF32 = "utf-32"


def split_lines(text: str) -> list[str]:
    """Split at ``\\r\\n``, ``\\r`` and ``\\n`` only, keeping terminators; the last item has none."""
    parts = _EOL_SPLIT.split(text)
    lines = [a + b for a, b in zip(parts[0::2], parts[1::2])]
    lines.append(parts[-1])
    return lines


def _content(line: str) -> str:
    """A line without its terminator."""
    if line.endswith("\r\n"):
        return line[:-2]
    if line.endswith(("\n", "\r")):
        return line[:-1]
    return line


def _normalise_encoding(encoding: str | None) -> str:
    enc = str(getattr(encoding, "value", encoding) or _UTF16).lower()
    return enc if enc in (_UTF8, _UTF16, _UTF32) else _UTF16


@dataclass(frozen=True, order=True)
class Point:
    """A position in code points: ``line`` index and ``col`` into the line's content."""

    line: int
    col: int


class Document:
    """One open document, kept as a list of lines with their terminators."""

    def __init__(
        self, uri: str, text: str, language_id: str = "", version: int = 0, encoding: str = _UTF16
    ) -> None:
        self.uri = uri
        self.language_id = language_id or ""
        self.version = version
        self.encoding = _normalise_encoding(encoding)
        self._lines = split_lines(text)
        self._style: tuple[str, str] | None = None
        # False after an edit that could not be applied: the text is no longer the editor's, so
        # nothing is completed from it until a full-text change (or reopening) brings it back
        self.in_sync = True

    # ------------------------------------------------------------------ reading
    @property
    def text(self) -> str:
        """The whole text (joins every line: for tests and debugging, not the hot path)."""
        return "".join(self._lines)

    @property
    def line_count(self) -> int:
        return len(self._lines)

    def line(self, index: int) -> str:
        """Line ``index`` without its terminator."""
        return _content(self._lines[index])

    def raw_line(self, index: int) -> str:
        """Line ``index`` with its terminator."""
        return self._lines[index]

    def end(self) -> Point:
        last = len(self._lines) - 1
        return Point(last, len(self._lines[last]))

    def text_before(self, point: Point, max_chars: int) -> str:
        """Up to ``max_chars`` characters that end at ``point`` (the prefix's tail)."""
        parts = [self._lines[point.line][: point.col]]
        total = len(parts[0])
        i = point.line - 1
        while total < max_chars and i >= 0:
            parts.append(self._lines[i])
            total += len(self._lines[i])
            i -= 1
        text = "".join(reversed(parts))
        return text[-max_chars:] if max_chars > 0 else ""

    def text_after(self, point: Point, max_chars: int) -> str:
        """Up to ``max_chars`` characters that start at ``point`` (the suffix's head)."""
        parts = [self._lines[point.line][point.col :]]
        total = len(parts[0])
        i = point.line + 1
        while total < max_chars and i < len(self._lines):
            parts.append(self._lines[i])
            total += len(self._lines[i])
            i += 1
        return "".join(parts)[:max_chars] if max_chars > 0 else ""

    def style(self) -> tuple[str, str]:
        """``(indent unit, line ending)`` most used in the document, e.g. ``("    ", "\\n")``."""
        if self._style is None:
            self._style = _detect_style(self._lines[:2000])
        return self._style

    # ------------------------------------------------------------------ positions
    def to_point(self, position: types.Position) -> Point:
        """Client position → code points, clamped into the document as LSP asks.

        A line past the end means the end of the document; a character past the end of its line
        means the end of that line; a position inside a surrogate pair or a UTF-8 sequence means
        the start of that character.
        """
        line = max(int(position.line), 0)
        if line >= len(self._lines):
            end = self.end()
            return Point(end.line, len(_content(self._lines[end.line])))
        content = _content(self._lines[line])
        return Point(line, self._col_from_units(content, max(int(position.character), 0)))

    def to_position(self, point: Point) -> types.Position:
        """Code points → client position in the negotiated encoding."""
        content = _content(self._lines[point.line])
        return types.Position(line=point.line, character=self.units(content[: point.col]))

    def units(self, text: str) -> int:
        """Length of ``text`` in the negotiated encoding's code units."""
        if self.encoding == _UTF32 or text.isascii():
            return len(text)
        if self.encoding == _UTF16:
            return len(text.encode("utf-16-le", "surrogatepass")) // 2
        return len(text.encode("utf-8", "surrogatepass"))

    def _col_from_units(self, content: str, units: int) -> int:
        if self.encoding == _UTF32 or content.isascii():
            return min(units, len(content))
        if self.encoding == _UTF16:
            data = content.encode("utf-16-le", "surrogatepass")
            if units * 2 >= len(data):
                return len(content)
            if 0xDC00 <= int.from_bytes(data[units * 2 : units * 2 + 2], "little") <= 0xDFFF and units > 0:
                units -= 1  # inside a surrogate pair: back to the pair's start
            return len(data[: units * 2].decode("utf-16-le", "surrogatepass"))
        data = content.encode("utf-8", "surrogatepass")
        if units >= len(data):
            return len(content)
        while units > 0 and (data[units] & 0xC0) == 0x80:
            units -= 1  # inside a multi-byte sequence: back to its first byte
        return len(data[:units].decode("utf-8", "surrogatepass"))

    # ------------------------------------------------------------------ editing
    def replace(self, start: Point, end: Point, text: str) -> None:
        """Replace the text between two points; only the touched lines are re-split."""
        if end < start:
            start, end = end, start
        lines = self._lines
        # Start one line early: a "\r" ending the previous line joins a "\n" that now follows it.
        lo = start.line - 1 if start.line > 0 else 0
        frag_lines = lines[lo : end.line + 1]
        head = sum(len(x) for x in frag_lines[: start.line - lo])
        s_off = head + start.col
        e_off = sum(len(x) for x in frag_lines[: end.line - lo]) + end.col
        frag = "".join(frag_lines)
        new_lines = split_lines(frag[:s_off] + text + frag[e_off:])
        if end.line + 1 < len(lines):
            new_lines.pop()  # the fragment ended with a terminator: drop the empty remainder
        lines[lo : end.line + 1] = new_lines
        self._style = None

    def apply_change(self, change: types.TextDocumentContentChangeEvent) -> None:
        """Apply one ``didChange`` content change (ranged or whole-document)."""
        rng = getattr(change, "range", None)
        if rng is None:
            self._lines = split_lines(change.text)
            self._style = None
            return
        self.replace(self.to_point(rng.start), self.to_point(rng.end), change.text)


def _detect_style(lines: Sequence[str]) -> tuple[str, str]:
    eols: Counter[str] = Counter()
    tabs = spaces = 0
    widths: Counter[int] = Counter()
    prev = 0
    for raw in lines:
        if raw.endswith("\r\n"):
            eols["\r\n"] += 1
        elif raw.endswith("\n"):
            eols["\n"] += 1
        elif raw.endswith("\r"):
            eols["\r"] += 1
        content = _content(raw)
        if not content.strip():
            continue
        if content[0] == "\t":
            tabs += 1
            continue
        n = len(content) - len(content.lstrip(" "))
        if n:
            spaces += 1
        if n != prev and abs(n - prev) in (2, 3, 4, 8):
            widths[abs(n - prev)] += 1
        prev = n
    eol = eols.most_common(1)[0][0] if eols else "\n"
    if tabs > spaces:
        return "\t", eol
    width = widths.most_common(1)[0][0] if widths else 4
    return " " * width, eol


class DocumentStore:
    """The open documents by URI, in one position encoding negotiated at ``initialize``."""

    def __init__(self, encoding: str = _UTF16) -> None:
        self.encoding = _normalise_encoding(encoding)
        self._docs: dict[str, Document] = {}

    def set_encoding(self, encoding: str | None) -> None:
        self.encoding = _normalise_encoding(encoding)
        for doc in self._docs.values():
            doc.encoding = self.encoding

    def open(self, uri: str, text: str, language_id: str = "", version: int = 0) -> Document:
        doc = Document(uri, text, language_id, version, self.encoding)
        self._docs[uri] = doc
        return doc

    def change(
        self, uri: str, version: int | None, changes: Iterable[types.TextDocumentContentChangeEvent]
    ) -> Document | None:
        """Apply changes in order; None when the document is not open (the client is out of sync)."""
        doc = self._docs.get(uri)
        if doc is None:
            return None
        for change in changes:
            if not doc.in_sync and getattr(change, "range", None) is not None:
                continue  # edits to a text we no longer know would only compound the error
            doc.apply_change(change)
            if getattr(change, "range", None) is None:
                doc.in_sync = True
        if version is not None:
            doc.version = version
        return doc

    def desync(self, uri: str) -> Document | None:
        """An edit for ``uri`` was refused: stop trusting its text (see ``Document.in_sync``)."""
        doc = self._docs.get(uri)
        if doc is not None:
            doc.in_sync = False
        return doc

    def close(self, uri: str) -> None:
        self._docs.pop(uri, None)

    def get(self, uri: str) -> Document | None:
        return self._docs.get(uri)

    def __len__(self) -> int:
        return len(self._docs)

    def __iter__(self):  # noqa: ANN204
        return iter(list(self._docs.values()))
