"""Context windows and token cuts: what the model sees, and the keys the cache and prefetch use."""

from __future__ import annotations

import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st
from lsprotocol import types

from diffusion_core.interface import cut_prefix, cut_suffix
from lsp_server.context import (
    RingBuffer,
    after_accepting,
    build_context,
    prefix_window,
    suffix_window,
)
from lsp_server.documents import Document
from lsp_server.settings import Settings

from .conftest import REPO


def words(text: str) -> int:
    """A stand-in tokenizer: one token per word and per line break."""
    return len(text.split()) + text.count("\n")


def test_windows_start_and_end_at_line_boundaries():
    text = "".join(f"line {i}\n" for i in range(100))
    tail = text[-41:]
    assert prefix_window(tail, 40) == "line 95\nline 96\nline 97\nline 98\nline 99\n"
    assert prefix_window("short\nfile", 40) == "short\nfile"
    assert suffix_window(text, 20) == "line 0\nline 1\n"
    assert prefix_window("x" * 100, 40) == "x" * 40  # one huge line: plain character cut


def test_token_cuts_keep_whole_lines_nearest_the_cursor():
    prefix = "import os\nimport sys\n\ndef main(argv):\n    return run(argv)\n    "
    assert cut_prefix(prefix, 6, words) == "def main(argv):\n    return run(argv)\n    "
    assert cut_prefix(prefix, 100, words) == prefix
    assert cut_prefix("a b c d e f g h", 3, words) == " f g h"  # the cursor line alone is too long
    suffix = "\n    print(x)\n    return x\n\ndef other():\n    pass\n"
    assert cut_suffix(suffix, 7, words) == "\n    print(x)\n    return x\n\n"
    assert cut_suffix(suffix, 0, words) == ""


def test_snippets_come_from_other_files_of_the_same_language():
    ring = RingBuffer(chunk_lines=8)
    a = Document("file:///a.py", "def helper(x):\n    return x * 2\n\nVALUE = 3\n", "python")
    b = Document("file:///b.ts", "export function helper(x) {\n  return x * 2;\n}\n", "typescript")
    me = Document("file:///me.py", "print(helper(VALUE))\n", "python")
    for d in (a, b, me):
        ring.add(d, 0)
    snippets = ring.snippets("file:///me.py", "python", 10_000)
    assert snippets.startswith("# a.py\ndef helper(x):") and "export" not in snippets
    assert "print(helper" not in snippets  # never the file being edited
    ctx = build_context(me, types.Position(1, 0), Settings(extra_context_tokens=64), ring)
    assert ctx.extra == snippets
    assert build_context(me, types.Position(1, 0), Settings(), ring).extra == ""  # off by default


text_st = st.text("ab \t\n(){}:é😀", max_size=60)


@settings(max_examples=150, deadline=None)
@given(
    before=text_st,
    after=text_st,
    inserted=st.text("xy \n\t)😀", min_size=1, max_size=20),
    budget=st.integers(16, 40),
)
def test_prefetch_context_equals_the_document_after_accepting(before, after, inserted, budget):
    """The prefetch key must match the key of the request that follows the accept exactly."""
    s = Settings(prefix_tokens=budget, suffix_tokens=budget)
    doc = Document("file:///a.py", before + after, "python")
    lines = before.split("\n")
    pos = types.Position(len(lines) - 1, len(lines[-1].encode("utf-16-le")) // 2)
    ctx = build_context(doc, pos, s)
    accepted = Document("file:///a.py", before + inserted + after, "python")
    lines2 = (before + inserted).split("\n")
    pos2 = types.Position(len(lines2) - 1, len(lines2[-1].encode("utf-16-le")) // 2)
    real = build_context(accepted, pos2, s)
    guess = after_accepting(ctx, inserted)
    assert (guess.tail, guess.prefix, guess.suffix) == (real.tail, real.prefix, real.suffix)
    assert guess.edit.line_prefix == real.edit.line_prefix


def test_language_server_package_imports_no_torch():
    code = (
        "import sys, lsp_server.server, lsp_server.completer, lsp_server.remote, diffill.commands.serve; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_an_anchored_prefix_cut_stays_put_while_typing():
    """Typing at the cursor must not move the far end of the prefix at every line (that would
    change every token's position and throw away the engine's context K/V)."""
    from diffusion_core.interface import ANCHOR_CHARS

    count = lambda t: len(t.split())  # noqa: E731 - a word is a token here
    text = "".join(f"value_{i} = compute({i}, a, b)\n" for i in range(200))
    budget = 300
    anchor: str | None = ""
    starts, free_starts = [], []
    for i in range(600):  # type 600 words, one line per 4
        text += f"w{i} " + ("\n" if i % 4 == 3 else "")
        cut = cut_prefix(text, budget, count, anchor)
        assert count(cut) <= budget and text.endswith(cut)
        starts.append(len(text) - len(cut))
        anchor = cut[:ANCHOR_CHARS]
        free = cut_prefix(text, budget, count)
        free_starts.append(len(text) - len(free))
    moves = sum(a != b for a, b in zip(starts, starts[1:]))
    free_moves = sum(a != b for a, b in zip(free_starts, free_starts[1:]))
    assert free_moves > 100  # without the anchor the cut moves with nearly every line typed
    assert moves <= 12  # with it: only when the budget is outgrown (then at 75%, so rarely)


class _Words:
    """A backend stand-in for ``_prepare``: counts words."""

    count_tokens = staticmethod(words)


def test_the_request_carries_the_time_budget_and_the_line_stop():
    """``timeBudgetMs`` reaches the engine (0 turns it off); a cursor after code asks for the rest
    of its line (stop at the newline), a blank line for a block."""
    from lsp_server.completer import _prepare

    doc = Document("file:///a.py", "def f(x):\n    y = x\n    \n", "python")
    on_code = build_context(doc, types.Position(1, 9), Settings())
    blank = build_context(doc, types.Position(2, 4), Settings())
    req = _prepare(blank, Settings())(_Words())
    assert req.time_budget_ms == 1000 and req.stop == ()
    assert _prepare(blank, Settings(time_budget_ms=0))(_Words()).time_budget_ms is None
    line = _prepare(on_code, Settings(time_budget_ms=250))(_Words())
    assert line.stop == ("\n",) and line.time_budget_ms == 250
