"""Turn the model's raw middle into the ghost text an editor shows.

Why each rule exists (each one is something a user would see go wrong without it):

- mid-line cursor → one line: a multi-line suggestion in the middle of ``foo(|)`` would push the
  rest of the line down;
- end of line / empty line → several lines, but only to the end of the current block (the first
  line indented less than the cursor's block) and at most ``max_lines``;
- never type a closing bracket or quote that already follows the cursor, and drop the tail of the
  completion that repeats the text after the cursor;
- write indentation the way the document does (tabs or spaces) and the document's line ending;
- no trailing whitespace, no empty or whitespace-only suggestion (``None`` instead).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["EditContext", "postprocess"]

OPENERS = {"(": ")", "[": "]", "{": "}"}
CLOSERS = {v: k for k, v in OPENERS.items()}
QUOTES = ("'", '"', "`")
_CLOSING_LINE = re.compile(r"^\s*(?:[)\]}]+[;,]?|end|fi|done|esac)\s*$")
_BLOCK_OPENER = re.compile(r"(?:[:{(\[]|=>|\bdo|\bthen)\s*$")


@dataclass(frozen=True)
class EditContext:
    """What post-processing needs to know about the text around the cursor."""

    line_prefix: str  # text of the cursor's line before the cursor
    line_suffix: str  # text of the cursor's line after the cursor (no line ending)
    suffix: str = ""  # text after the cursor, starting with line_suffix (a head window is enough)
    indent_unit: str = "    "  # "\t" for tab-indented documents, else the spaces of one level
    eol: str = "\n"
    max_lines: int = 8

    @property
    def mid_line(self) -> bool:
        return bool(self.line_suffix.strip())


def postprocess(raw: str, ctx: EditContext) -> str | None:
    """The text to insert at the cursor, or None when nothing worth showing is left."""
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    if ctx.mid_line:
        text = text.split("\n", 1)[0]
        text = _cut_closers_already_there(text, ctx)
        text = _trim_overlap_mid_line(text, ctx.line_suffix)
        # whitespace right before a word that follows is content; before a closer it is trailing
        if not (ctx.line_suffix[:1].isalnum() or ctx.line_suffix[:1] == "_"):
            text = text.rstrip()
        if not text.strip():
            return None
        return text
    lines = text.split("\n")
    step = _own_step(lines if not ctx.line_prefix.strip() else lines[1:])
    lines = _restyle_indent(lines, ctx.indent_unit, step)
    if not ctx.line_prefix.strip():
        # on an empty line the first line's own indentation continues the line's: restyle both
        joined = _restyle_indent(["", ctx.line_prefix + lines[0]], ctx.indent_unit, step)[1]
        if joined.startswith(ctx.line_prefix):
            lines[0] = joined[len(ctx.line_prefix) :]
    lines = _cut_at_block_end(lines, ctx)
    text = _cut_closers_already_there("\n".join(lines), ctx)
    lines = _trim_overlap_lines(text.split("\n"), ctx)
    lines = [ln.rstrip() for ln in lines]
    while lines and not lines[-1]:
        lines.pop()
    if not "".join(lines).strip():
        return None
    return ctx.eol.join(lines)


# ---------------------------------------------------------------------------------- brackets
def _inside_string(line_prefix: str) -> str | None:
    """The quote character of a string literal the cursor is inside, if any (same-line only)."""
    quote: str | None = None
    i = 0
    while i < len(line_prefix):
        c = line_prefix[i]
        if c == "\\":
            i += 2
            continue
        if quote is None and c in QUOTES:
            quote = c
        elif c == quote:
            quote = None
        elif quote is None and (line_prefix.startswith("# ", i) or line_prefix.startswith("//", i)):
            return None  # a comment: quotes after it mean nothing
        i += 1
    return quote


def _first_after(suffix: str) -> str:
    stripped = suffix.lstrip()
    return stripped[:1]


def _cut_closers_already_there(text: str, ctx: EditContext) -> str:
    """Cut the completion at the first bracket/quote that closes something opened before the
    cursor when the text after the cursor already starts with that same closer."""
    nxt = _first_after(ctx.suffix if ctx.suffix else ctx.line_suffix)
    if not nxt or (nxt not in CLOSERS and nxt not in QUOTES):
        return text
    in_str = _inside_string(ctx.line_prefix)
    from_prefix = in_str is not None  # the open string began before the cursor
    stack: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if in_str is not None:
            if c == "\\":
                i += 2
                continue
            if c == in_str:
                if from_prefix and c == nxt:
                    return text[:i]
                in_str, from_prefix = None, False
            i += 1
            continue
        if c in QUOTES:
            in_str = c
        elif c in OPENERS:
            stack.append(c)
        elif c in CLOSERS:
            if stack and stack[-1] == CLOSERS[c]:
                stack.pop()
            elif c == nxt:  # closes nothing the completion opened: the one before the cursor
                return text[:i]
        i += 1
    return text


def _unclosed(text: str) -> list[str]:
    """Openers left open at the end of ``text`` (strings skipped), innermost last."""
    stack: list[str] = []
    quote: str | None = None
    i = 0
    while i < len(text):
        c = text[i]
        if quote is not None:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in QUOTES:
            quote = c
        elif c in OPENERS:
            stack.append(c)
        elif c in CLOSERS and stack and stack[-1] == CLOSERS[c]:
            stack.pop()
        i += 1
    if quote is not None:
        stack.append(quote)
    return stack


def _can_drop(kept: str, tail: str) -> bool:
    """Dropping ``tail`` is safe unless it closes brackets or strings that ``kept`` opened."""
    return not (_unclosed(kept) and any(ch in tail for ch in "()[]{}'\"`"))


def _trim_overlap_mid_line(text: str, line_suffix: str) -> str:
    """Drop the completion's tail when it repeats the start of the rest of the line."""
    ls = line_suffix
    for k in range(min(len(text), len(ls)), 0, -1):
        whole = k >= 3 or k == len(ls.rstrip()) or not (ls[k : k + 1].isalnum() or ls[k : k + 1] == "_")
        if text.endswith(ls[:k]) and whole and _can_drop(text[:-k], ls[:k]):
            return text[:-k]
    return text


# ---------------------------------------------------------------------------------- lines
def _width(ws: str, tab: int) -> int:
    w = 0
    for ch in ws:
        w = (w // tab + 1) * tab if ch == "\t" else w + 1
    return w


def _leading(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def _own_step(lines: list[str]) -> int:
    """The completion's own indentation step in spaces, to turn its spaces into tab levels."""
    steps = [len(_leading(ln)) for ln in lines if ln.strip() and "\t" not in _leading(ln)]
    return min((s for s in steps if s), default=4)


def _restyle_indent(lines: list[str], unit: str, own: int = 4) -> list[str]:
    """Rewrite the leading whitespace of every line after the first in the document's style."""
    if len(lines) < 2:
        return lines
    use_tabs = unit == "\t"
    tab = len(unit) if not use_tabs else max(own, 1)
    out = [lines[0]]
    for ln in lines[1:]:
        lead = _leading(ln)
        if not lead:
            out.append(ln)
            continue
        w = _width(lead, tab)
        new = "\t" * (w // tab) + " " * (w % tab) if use_tabs else " " * w
        out.append(new + ln[len(lead) :])
    return out


def _cut_at_block_end(lines: list[str], ctx: EditContext) -> list[str]:
    """Keep lines until the block that holds the cursor ends, and at most ``max_lines``."""
    tab = len(ctx.indent_unit) if ctx.indent_unit != "\t" else 4
    cur_line = ctx.line_prefix
    cur_indent = _width(_leading(cur_line), tab)
    if not cur_line.strip():
        block = cur_indent  # an empty (maybe indented) line: its own indentation is the block's
        opener = False
    else:
        opener = bool(_BLOCK_OPENER.search(cur_line.rstrip()))
        block = cur_indent + 1 if opener else cur_indent
    nxt = _next_lines(ctx)
    kept = [lines[0]]
    for ln in lines[1:]:
        if len(kept) >= ctx.max_lines:
            break
        if not ln.strip():
            kept.append(ln)
            continue
        w = _width(_leading(ln), tab)
        if w >= block:
            kept.append(ln)
            continue
        if opener and w == cur_indent and _CLOSING_LINE.match(ln) and (not nxt or nxt[0] != ln.strip()):
            kept.append(ln)  # the block's own closing line, when the document lacks it
        break
    return kept[: ctx.max_lines]


def _next_lines(ctx: EditContext) -> list[str]:
    """The non-blank lines after the cursor's line, stripped."""
    rest = ctx.suffix.replace("\r\n", "\n").replace("\r", "\n").split("\n")[1:]
    return [ln.strip() for ln in rest if ln.strip()]


def _substantial(line: str) -> bool:
    return len(line) >= 4 and any(ch.isalnum() for ch in line)


def _trim_overlap_lines(lines: list[str], ctx: EditContext) -> list[str]:
    """Drop the completion's last lines where they repeat the lines after the cursor."""
    nxt = _next_lines(ctx)
    if not nxt or len(lines) < 2:
        return lines
    body = [ln.strip() for ln in lines]
    for i in range(1, len(lines)):
        if not body[i]:
            continue
        tail = [b for b in body[i:] if b]
        if tail == nxt[: len(tail)] or (body[i] == nxt[0] and _substantial(nxt[0])):
            if _can_drop("\n".join(lines[:i]), "\n".join(lines[i:])):
                return lines[:i]
    return lines
