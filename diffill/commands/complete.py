"""`diffill complete FILE --line L --col C`: fill the middle at one cursor position of a file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lsp_server.postprocess import postprocess

from ._model_args import add_model_arguments, add_sampling_arguments, load_engine, sampling_options

HELP = "complete the code at a cursor position in FILE (1-based line and column)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path)
    p.add_argument("--line", type=int, required=True, help="1-based line of the cursor")
    p.add_argument("--col", type=int, required=True, help="1-based column (in characters) of the cursor")
    p.add_argument("--json", action="store_true", help="print text, raw, tokens, steps, latency_ms as JSON")
    p.add_argument("--raw", action="store_true", help="print the model's middle as is, not the ghost text")
    add_model_arguments(p)
    add_sampling_arguments(p)


def split_at(text: str, line: int, col: int) -> tuple[str, str]:
    """Prefix and suffix around a 1-based (line, column) cursor; raises ValueError when out of range."""
    lines = text.splitlines(keepends=True) or [""]
    if text.endswith("\n"):
        lines.append("")
    if not 1 <= line <= len(lines):
        raise ValueError(f"line {line} is outside the file (1..{len(lines)})")
    body = lines[line - 1].rstrip("\r\n")
    if not 1 <= col <= len(body) + 1:
        raise ValueError(f"column {col} is outside line {line} (1..{len(body) + 1})")
    offset = sum(len(x) for x in lines[: line - 1]) + col - 1
    return text[:offset], text[offset:]


def run(args: argparse.Namespace) -> int:
    try:
        text = args.file.read_text(encoding="utf-8")
        prefix, suffix = split_at(text, args.line, args.col)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        print(f"diffill complete: {e}", file=sys.stderr)
        return 2
    engine = load_engine(args)
    edit = edit_context(prefix, suffix)
    # what an editor would show: one line when the cursor is mid-line (the model may stop at the
    # newline), then the language server's post-processing
    stop = ("\n",) if edit.mid_line else ()
    c = engine.infill_until(prefix, suffix, stop, max_tokens=args.max_tokens, options=sampling_options(args))
    shown = c.text if args.raw else postprocess(c.text, edit)
    if args.json:
        out = {"text": shown, "raw": c.text, "tokens": c.tokens, "steps": c.steps, "latency_ms": c.latency_ms}
        print(json.dumps(out))
        return 0
    if not shown:
        print(
            f"diffill complete: no suggestion at line {args.line}, column {args.col}: the model had "
            f"nothing to add there (its raw middle was {c.text!r})",
            file=sys.stderr,
        )
        return 0
    sys.stdout.write(shown + ("" if shown.endswith("\n") else "\n"))
    return 0


def edit_context(prefix: str, suffix: str):  # noqa: ANN201 - lsp_server.postprocess.EditContext
    """The post-processing context of a cursor between ``prefix`` and ``suffix`` (as the language
    server builds it for an open document)."""
    from lsp_server.documents import Document
    from lsp_server.postprocess import EditContext

    line_prefix = prefix.rsplit("\n", 1)[-1]
    line_suffix = suffix.split("\n", 1)[0].rstrip("\r")
    unit, eol = Document("file:///cli", prefix + suffix).style()
    return EditContext(
        line_prefix=line_prefix, line_suffix=line_suffix, suffix=suffix[:4096], indent_unit=unit, eol=eol
    )
