"""Post-processing properties over arbitrary model output (hypothesis): whatever the model
writes, the ghost text never types a closer the line already has, never spans more lines than
allowed, never shows whitespace only, and never leaves trailing whitespace."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from lsp_server.postprocess import EditContext, postprocess

# code-like pieces, brackets and newlines included, so the rules have something to cut
PIECES = ["a", "b1", "_x", " ", "  ", ",", ".", "(", ")", "[", "]", "{", "}", "\n", "\n    ", "\t", "é", "→"]
raw_text = st.lists(st.sampled_from(PIECES), max_size=40).map("".join)


def _balance_never_negative(text: str, opener: str, closer: str) -> bool:
    depth = 0
    for ch in text:
        depth += (ch == opener) - (ch == closer)
        if depth < 0:
            return False
    return True


@settings(max_examples=300, deadline=None)
@given(raw=raw_text, pair=st.sampled_from([("(", ")"), ("[", "]"), ("{", "}")]))
def test_a_closer_already_after_the_cursor_is_never_typed_again(raw: str, pair: tuple[str, str]) -> None:
    opener, closer = pair
    ctx = EditContext(f"x = f{opener}", closer, closer + "\n")
    out = postprocess(raw, ctx)
    if out is not None:
        # the completion may open and close its own brackets, never close the one before the cursor
        assert _balance_never_negative(out, opener, closer), (raw, out)
        assert "\n" not in out  # mid-line: one line


@settings(max_examples=200, deadline=None)
@given(raw=st.lists(st.sampled_from(["a", "b", " ", "é", "\n", "(", ")"]), max_size=30).map("".join))
def test_a_closing_quote_after_the_cursor_is_never_typed_again(raw: str) -> None:
    out = postprocess(raw + '"', EditContext('print("', '")', '")\n'))
    assert out is None or '"' not in out, (raw, out)


@settings(max_examples=300, deadline=None)
@given(
    raw=raw_text,
    max_lines=st.integers(1, 6),
    line_prefix=st.sampled_from(["", "    ", "def f(x):", "    if x:", "    y = "]),
    indent_unit=st.sampled_from(["    ", "  ", "\t"]),
    eol=st.sampled_from(["\n", "\r\n"]),
)
def test_end_of_line_limits_hold(
    raw: str, max_lines: int, line_prefix: str, indent_unit: str, eol: str
) -> None:
    ctx = EditContext(line_prefix, "", "\n    return x\n", indent_unit, eol, max_lines)
    out = postprocess(raw, ctx)
    if out is None:
        return
    lines = out.split(eol)
    assert len(lines) <= max_lines, (raw, out)
    assert out.strip(), "a whitespace-only suggestion"
    assert all(ln == ln.rstrip() for ln in lines), "trailing whitespace"
    assert "\r" not in out.replace("\r\n", "") and ("\n" not in out or eol in out)
