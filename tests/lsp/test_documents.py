"""The document store must stay byte-identical to what the editor shows, whatever is typed."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lsprotocol import types

from lsp_server.documents import Document, DocumentStore, Point, split_lines

ALPHABET = "ab x_(){}\t\n\r\r\n" + "é€中文" + "😀🎉𝄞" + "\x0c\u2028\x85"


def ref_lines(text: str) -> list[tuple[int, str]]:
    """(start offset, content) per LSP line, written the slow obvious way."""
    out, start, i = [], 0, 0
    while i < len(text):
        c = text[i]
        if c in "\r\n":
            out.append((start, text[start:i]))
            i += 2 if text[i : i + 2] == "\r\n" else 1
            start = i
        else:
            i += 1
    out.append((start, text[start:]))
    return out


def width(c: str, enc: str) -> int:
    if enc == "utf-32":
        return 1
    if enc == "utf-16":
        return 2 if ord(c) > 0xFFFF else 1
    return len(c.encode("utf-8"))


def ref_offset(text: str, line: int, ch: int, enc: str) -> int:
    lines = ref_lines(text)
    if line >= len(lines):
        return len(text)
    start, content = lines[line]
    units = 0
    for i, c in enumerate(content):
        w = width(c, enc)
        if units + w > ch:
            return start + i
        units += w
    return start + len(content)


positions = st.tuples(st.integers(0, 6), st.integers(0, 12))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    enc=st.sampled_from(["utf-16", "utf-8", "utf-32"]),
    initial=st.text(ALPHABET, max_size=30),
    edits=st.lists(st.tuples(positions, positions, st.text(ALPHABET, max_size=8)), max_size=12),
)
def test_random_incremental_edits_match_reference(enc, initial, edits):
    doc = Document("file:///t.py", initial, "python", 0, enc)
    ref = initial
    for (sl, sc), (el, ec), new in edits:
        a, b = ref_offset(ref, sl, sc, enc), ref_offset(ref, el, ec, enc)
        a, b = min(a, b), max(a, b)
        ref = ref[:a] + new + ref[b:]
        doc.apply_change(
            types.TextDocumentContentChangePartial(
                range=types.Range(types.Position(sl, sc), types.Position(el, ec)), text=new
            )
        )
        assert doc.text == ref
        assert [doc.line(i) for i in range(doc.line_count)] == [c for _, c in ref_lines(ref)]


def test_only_lsp_line_breaks_split_lines():
    # form feed, NEL and U+2028 are ordinary characters for LSP (pygls' splitlines gets this wrong)
    assert split_lines("a\x0cb\nc\u2028d\r\ne\rf") == ["a\x0cb\n", "c\u2028d\r\n", "e\r", "f"]
    doc = Document("u", "x = 1\x0cy\nabc")
    doc.apply_change(
        types.TextDocumentContentChangePartial(
            range=types.Range(types.Position(1, 0), types.Position(1, 0)), text="Z"
        )
    )
    assert doc.text == "x = 1\x0cy\nZabc"


def test_column_past_end_of_last_line_means_end_of_line():
    doc = Document("u", "ab\nabc")
    doc.apply_change(
        types.TextDocumentContentChangePartial(
            range=types.Range(types.Position(1, 99), types.Position(1, 99)), text="Z"
        )
    )
    assert doc.text == "ab\nabcZ"


def test_utf16_columns_count_surrogate_pairs_twice():
    doc = Document("u", 'x = "😋" + "中"', encoding="utf-16")
    assert doc.to_point(types.Position(0, 7)) == Point(0, 6)  # after the closing quote of the emoji
    assert doc.to_position(Point(0, 6)) == types.Position(0, 7)
    doc8 = Document("u", 'x = "😋"', encoding="utf-8")
    assert doc8.to_point(types.Position(0, 9)) == Point(0, 6)
    assert doc8.to_point(types.Position(0, 7)) == Point(0, 5)  # inside the emoji: its start


def test_crlf_document_keeps_its_line_endings():
    doc = Document("u", "a\r\nb\r\n")
    doc.apply_change(
        types.TextDocumentContentChangePartial(
            range=types.Range(types.Position(1, 1), types.Position(1, 1)), text="\r\nc"
        )
    )
    assert doc.text == "a\r\nb\r\nc\r\n"
    assert doc.style()[1] == "\r\n"
    # a lone "\r" typed before a "\n" becomes one CRLF line break, as in the editor
    doc = Document("u", "a\nb")
    doc.apply_change(
        types.TextDocumentContentChangePartial(
            range=types.Range(types.Position(0, 1), types.Position(0, 1)), text="\r"
        )
    )
    assert doc.line_count == 2 and doc.text == "a\r\nb"


def test_multi_megabyte_document_edits_and_context():
    line = "    value = compute(value, 42)  # 中文 😀\n"
    text = line * 60000  # ~2.6 MB
    store = DocumentStore("utf-16")
    doc = store.open("file:///big.py", text, "python", 1)
    last = doc.line_count - 1
    store.change(
        "file:///big.py",
        2,
        [
            types.TextDocumentContentChangePartial(
                range=types.Range(types.Position(last, 0), types.Position(last, 0)), text="tail"
            )
        ],
    )
    store.change(
        "file:///big.py",
        3,
        [
            types.TextDocumentContentChangePartial(
                range=types.Range(types.Position(30000, 4), types.Position(30000, 9)), text="v"
            )
        ],
    )
    assert doc.version == 3
    assert doc.line(30000) == "    v = compute(value, 42)  # 中文 😀"
    assert doc.text_before(Point(last, 4), 10) == " 中文 😀\ntail"
    assert doc.text_after(Point(30000, 4), 5) == "v = c"


def test_whole_document_change_and_style_detection():
    store = DocumentStore()
    doc = store.open("u", "")
    store.change("u", 1, [types.TextDocumentContentChangeWholeDocument(text="if x:\n\tpass\n")])
    assert doc.text == "if x:\n\tpass\n" and doc.style() == ("\t", "\n")
    assert store.change("file:///missing", 1, []) is None
