"""Framing faults and non-JSON-RPC bodies: every one answered or skipped, never a deaf server.

The pure reader is checked case by case and with hypothesis; the real `diffill serve` process
is checked with each fault the old reader went deaf on, and fuzzed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lsprotocol import types

from lsp_server.framing import MAX_MESSAGE_BYTES, FrameReader, Message, Problem

from .conftest import LspSession

OK = b'{"jsonrpc":"2.0","id":1,"method":"x"}'


def frame(
    body: bytes, length: int | None = None, eol: bytes = b"\r\n", name: bytes = b"Content-Length"
) -> bytes:
    n = len(body) if length is None else length
    return name + b": " + str(n).encode() + eol + eol + body


def events(*chunks: bytes) -> list[Message | Problem]:
    reader, out = FrameReader(), []
    for c in chunks:
        reader.feed(c)
        out += reader.events()
    return out


def messages(evs: list) -> list[dict]:
    return [json.loads(e.body) for e in evs if isinstance(e, Message)]


# ---------------------------------------------------------------------------------- the reader
@pytest.mark.parametrize(
    "bad",
    [
        b"Content-Length: abc\r\n\r\n" + OK,
        b"Content-Length: -5\r\n\r\n" + OK,
        b"Content-Type: application/json\r\n\r\n" + OK,  # missing length
        frame(OK, len(OK) - 7),  # too short
        frame(OK, len(OK) + 9),  # too long: runs into the next header
        frame(OK, eol=b"\n"),  # LF-only line ends (accepted)
        frame(OK, name=b"content-length"),  # lower-case header (accepted)
        b"\x00\xff garbage \r\n\r\n",
    ],
)
def test_after_a_bad_frame_the_next_messages_still_arrive(bad: bytes) -> None:
    good = [frame(json.dumps({"jsonrpc": "2.0", "id": i, "method": "m"}).encode()) for i in range(10, 13)]
    got = [m["id"] for m in messages(events(bad + b"".join(good)))]
    assert got[-3:] == [10, 11, 12]


def test_lenient_headers_are_accepted_as_is() -> None:
    for raw in (frame(OK, eol=b"\n"), frame(OK, name=b"content-length"), b"Content-Type: x\r\n" + frame(OK)):
        assert messages(events(raw)) == [json.loads(OK)]


def test_a_huge_length_is_refused_without_allocating() -> None:
    evs = events(b"Content-Length: 1000000000000\r\n\r\n" + OK + frame(OK))
    assert isinstance(evs[0], Problem) and "over the" in evs[0].reason
    assert messages(evs) == [json.loads(OK)]
    assert MAX_MESSAGE_BYTES == 64 * 1024 * 1024


def test_a_message_split_into_single_bytes_is_read() -> None:
    data = frame(OK) * 3
    assert len(messages(events(*[data[i : i + 1] for i in range(len(data))]))) == 3


def test_a_too_long_length_with_nothing_after_it_is_answered_after_a_pause() -> None:
    reader = FrameReader()
    reader.feed(frame(OK, len(OK) + 40))
    assert reader.events() == []
    assert messages(reader.stalled()) == [json.loads(OK)]


@pytest.mark.parametrize(
    ("body", "reply_id"),
    [
        (b"42", None),
        (b"null", None),
        (b"[]", None),
        (b'[{"jsonrpc":"2.0","id":1,"method":"x"}]', None),  # a batch
        (b'{"foo":1}', None),
        (b'{"jsonrpc":"1.0","id":3,"method":"x"}', 3),
        (b'{"jsonrpc":"2.0","id":{"a":1},"method":"x"}', None),
        (b'{"jsonrpc":"2.0","id":true,"method":"x"}', None),
        (b'{"jsonrpc":"2.0","id":4,"method":7}', 4),
        (b'{"jsonrpc":"2.0","id":5,"method":"x","params":"str"}', 5),
    ],
)
def test_json_that_is_not_json_rpc_gets_invalid_request(body: bytes, reply_id: object) -> None:
    (ev,) = events(frame(body))
    assert isinstance(ev, Problem) and ev.code == -32600 and ev.id == reply_id


_header_like = st.sampled_from(
    [
        b"Content-Length: ",
        b"content-length:",
        b"Content-Length: 9999999\r\n\r\n",
        b"\r\n",
        b"\n",
        b"{",
        b"}",
        b"Content-Type: x\r\n",
        b"Content-Length: 5\r\n\r\n",
        b'"jsonrpc":"2.0"',
        b"\xc3\x28",
    ]
)
_junk = st.lists(st.one_of(_header_like, st.binary(max_size=40)), max_size=8).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(junk=_junk, cuts=st.lists(st.integers(0, 400), max_size=6))
def test_fuzz_junk_never_wedges_the_reader(junk: bytes, cuts: list[int]) -> None:
    """Whatever junk comes first, a pause and then two well-framed messages: the second always
    arrives (the first may be eaten by a junk header declaring a length)."""
    reader = FrameReader()
    data = junk
    pos = 0
    for c in sorted(cuts):
        reader.feed(data[pos:c])
        reader.events()
        pos = max(pos, c)
    reader.feed(data[pos:])
    reader.events()
    reader.stalled()
    got = []
    for i in (1, 2):
        reader.feed(frame(json.dumps({"jsonrpc": "2.0", "id": 100 + i, "method": "m"}).encode()))
        got += messages(reader.events())
        got += messages(reader.stalled())
    assert 102 in [m["id"] for m in got]


# ---------------------------------------------------------------------------------- the server
def _alive(lsp: LspSession, uri: str, n: int = 10) -> int:
    answered = 0
    for _ in range(n):
        res = lsp.inline(uri, 0, 3, timeout=20)
        answered += isinstance(res, types.InlineCompletionList)
    return answered


@pytest.fixture(scope="module")
def served(tiny_model: Path):  # noqa: ANN201
    lsp = LspSession(["--model", str(tiny_model)])
    lsp.initialize(init_options={"diffill": {"debounceMs": 0, "prefetch": False, "maxTokens": 4}})
    lsp.wait_state("ready")
    lsp.open("file:///f.py", "def f():\n    pass\n")
    yield lsp
    lsp.close()


@pytest.mark.parametrize(
    "bad",
    [
        b"Content-Length: abc\r\n\r\n" + OK,
        b"Content-Length: -5\r\n\r\n" + OK,
        b"Content-Type: application/json\r\n\r\n" + OK,
        frame(OK, len(OK) - 7),
        frame(OK, len(OK) + 9),
        frame(OK, eol=b"\n"),
        frame(OK, name=b"content-length"),
        b"Content-Length: 1000000000000\r\n\r\n",
    ],
)
def test_the_server_answers_ten_requests_after_a_bad_frame(served: LspSession, bad: bytes) -> None:
    served.write_bytes(bad)
    assert _alive(served, "file:///f.py") == 10
    assert served.client._server.returncode is None


def test_non_json_rpc_bodies_are_answered_with_invalid_request(served: LspSession) -> None:
    for body, msg_id in [
        (b"42", None),
        (b"[]", None),
        (b'{"foo":1}', None),
        (b'{"jsonrpc":"1.0","id":"v1","method":"diffill/stats"}', "v1"),
    ]:
        answer = served.raw_request(body, msg_id)
        assert getattr(answer, "code", None) == -32600, (body, answer)
    assert _alive(served, "file:///f.py", 2) == 2


def test_a_huge_declared_body_does_not_grow_memory(served: LspSession) -> None:
    before = served.rss_kb()
    chunk = b"x" * (1 << 20)
    served.write_bytes(b"Content-Length: 400000000\r\n\r\n")
    for _ in range(64):  # 64 MiB of a body over the limit: skipped as it streams in
        served.write_bytes(chunk)
    time.sleep(1.5)
    assert _alive(served, "file:///f.py", 3) == 3
    assert served.rss_kb() - before < 40_000


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=_junk)
def test_fuzz_the_real_server_never_goes_deaf(served: LspSession, junk: bytes) -> None:
    served.write_bytes(junk)
    time.sleep(1.2)  # the reader's stall timeout: a junk length waiting for bytes gives up
    try:  # the first request may be eaten by a junk header's declared length
        served.request("diffill/stats", {}, timeout=3)
    except Exception:  # noqa: BLE001, S110
        pass
    assert isinstance(served.inline("file:///f.py", 0, 3, timeout=20), types.InlineCompletionList)
