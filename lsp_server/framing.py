"""LSP base-protocol framing that never leaves the server alive but deaf.

Why not pygls' reader: one bad header (``Content-Length: abc``, a negative or missing length, a
length that does not match the body) put it out of step with the stream for good, and a huge
declared length was allocated before it was read. Here:

- headers are found by searching for the next ``Content-Length: N`` line (case-insensitive,
  CRLF or LF line ends); bytes before it that are not header lines are skipped and reported;
- a body longer than :data:`MAX_MESSAGE_BYTES` is refused before anything is allocated, and the
  stream resynchronises on the next header;
- a body that is not JSON gets a ParseError, and when it swallowed the next message's header (a
  declared length too long) reading resumes from that header;
- JSON that is not a JSON-RPC 2.0 message (``42``, ``null``, a batch, ``"jsonrpc": "1.0"``, an
  object as id, ...) gets Invalid Request (-32600), as JSON-RPC 2.0 says.

:class:`FrameReader` is the pure part (bytes in, events out: easy to fuzz); :func:`serve` drives
it from a byte source and hands valid messages to a pygls protocol.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_MESSAGE_BYTES", "FrameReader", "Message", "Problem", "rpc_problem", "serve"]

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # one message (a whole document in didOpen fits easily)
_MAX_HEADER_BYTES = 8 * 1024
_CONTENT_LENGTH = re.compile(rb"content-length[ \t]*:[ \t]*([0-9]+)[ \t]*\r?\n", re.IGNORECASE)
_HEADER_LINE = re.compile(rb"[A-Za-z][A-Za-z0-9-]*[ \t]*:[^\r\n]*\r?\n")
STALL_S = 1.0  # an unfinished body that holds another header this long was mis-framed

PARSE_ERROR, INVALID_REQUEST = -32700, -32600


@dataclass(frozen=True)
class Message:
    body: bytes


@dataclass(frozen=True)
class Problem:
    """A framing or parsing fault the client should hear about (``code`` is JSON-RPC's)."""

    code: int
    reason: str
    id: int | str | None = None


class FrameReader:
    """Bytes in (:meth:`feed`), messages and problems out (:meth:`events`)."""

    def __init__(self, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._body_len: int | None = None  # inside a body of this many bytes
        self._garbage = 0  # skipped bytes not yet reported

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def events(self) -> list[Message | Problem]:
        out: list[Message | Problem] = []
        while True:
            if self._body_len is None:
                if not self._header(out):
                    break
            if self._body_len is not None:
                if len(self._buf) < self._body_len:
                    break
                body = bytes(self._buf[: self._body_len])
                del self._buf[: self._body_len]
                self._body_len = None
                out.extend(self._message(body))
        return out

    def stalled(self) -> list[Message | Problem]:
        """Called when no bytes arrived for a while inside a body: its Content-Length was longer
        than what the client sent. A complete JSON value is taken as the message (so a client
        waiting for its answer is not left waiting), and a header inside the unfinished body
        restarts reading there (a junk length swallowed the next message)."""
        out: list[Message | Problem] = []
        while self._body_len is not None and self._buf:
            body = bytes(self._buf)
            try:
                json.JSONDecoder().raw_decode(body.decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                m = _CONTENT_LENGTH.search(self._buf)
                if m is None:
                    break  # still arriving, as far as anyone can tell
                self._body_len = None
                del self._buf[: m.start()]
                out.append(Problem(PARSE_ERROR, "Parse error: message shorter than its Content-Length"))
                out += self.events()
                continue
            self._body_len = None
            self._buf.clear()
            out += self._message(body)
            out += self.events()
        return out

    # ------------------------------------------------------------------ internals
    def _skip(self, n: int) -> None:
        del self._buf[:n]
        self._garbage += n

    def _report_garbage(self, out: list[Message | Problem]) -> None:
        if self._garbage:
            out.append(
                Problem(PARSE_ERROR, f"Parse error: skipped {self._garbage} bytes without a valid header")
            )
            self._garbage = 0

    def _header(self, out: list[Message | Problem]) -> bool:
        """Consume one header block; False when more bytes are needed."""
        m = _CONTENT_LENGTH.search(self._buf)
        if m is None:
            keep = 32  # a header split across reads
            if len(self._buf) > keep:
                self._skip(len(self._buf) - keep)
            return False
        # whole header lines right before Content-Length belong to its block; anything earlier
        # is garbage (the tail of a mis-framed body, a stray print, an HTTP request line ...)
        block = m.start()
        while block > 0 and self._buf[block - 1 : block] == b"\n":
            line_start = self._buf.rfind(b"\n", 0, block - 1) + 1
            if _HEADER_LINE.fullmatch(self._buf, line_start, block) is None:
                break
            block = line_start
        if block:
            self._skip(block)
            m = _CONTENT_LENGTH.search(self._buf)
            assert m is not None
        self._report_garbage(out)
        # the rest of the block: more header lines, then an empty line
        pos = m.end()
        while True:
            if pos >= len(self._buf):
                if pos > _MAX_HEADER_BYTES:
                    self._skip(pos)
                    return True
                return False
            if self._buf.startswith(b"\r\n", pos) or self._buf.startswith(b"\n", pos):
                pos += 2 if self._buf.startswith(b"\r\n", pos) else 1
                break
            if self._buf.startswith(b"\r", pos) and pos + 1 == len(self._buf):
                return False  # "\r" of a "\r\n" still to come
            hl = _HEADER_LINE.match(self._buf, pos)
            if hl is None:
                if b"\n" not in self._buf[pos:] and len(self._buf) - pos < _MAX_HEADER_BYTES:
                    return False  # a header line still arriving
                out.append(Problem(PARSE_ERROR, "Parse error: malformed header line"))
                del self._buf[: m.end()]
                return True
            pos = hl.end()
        n = int(m.group(1))
        del self._buf[:pos]
        if n > self.max_bytes:
            out.append(
                Problem(
                    INVALID_REQUEST, f"message of {n} bytes is over the {self.max_bytes}-byte limit; skipped"
                )
            )
            return True  # its body (if sent) is skipped as garbage while looking for the next header
        self._body_len = n
        return True

    def _message(self, body: bytes) -> list[Message | Problem]:
        obj, problem = self._parse(body)
        if problem is not None:
            return [problem]
        problem = rpc_problem(obj)
        return [problem] if problem is not None else [Message(json.dumps(obj).encode())]

    def _parse(self, body: bytes) -> tuple[Any, Problem | None]:
        """The JSON value of a body, salvaging a message whose Content-Length was off: a body
        that runs into the next header (declared too long) gives back what follows its value;
        a body cut short (declared too short) takes the bytes up to the next header."""
        try:
            return json.loads(body), None
        except (ValueError, UnicodeDecodeError) as e:
            error = e
        try:
            text = body.decode("utf-8")
            obj, end = json.JSONDecoder().raw_decode(text)
            rest = text[end:].lstrip()
            if rest and (
                "content-length".startswith(rest[:14].lower()) or _CONTENT_LENGTH.match(rest.encode())
            ):
                self._buf[:0] = rest.encode()
                log.warning(
                    "framing: Content-Length was longer than the message; read on from the next header"
                )
                return obj, None
        except (ValueError, UnicodeDecodeError):
            pass
        nxt = _CONTENT_LENGTH.search(self._buf)
        tail = bytes(self._buf[: nxt.start() if nxt else len(self._buf)])
        if tail:
            try:
                obj = json.loads(body + tail)
                del self._buf[: len(tail)]
                log.warning("framing: Content-Length was shorter than the message; took the rest")
                return obj, None
            except (ValueError, UnicodeDecodeError):
                pass
        m = _CONTENT_LENGTH.search(body)
        if m is not None:  # the declared length ran far into the next message: read on from it
            self._buf[:0] = body[m.start() :]
        return None, Problem(PARSE_ERROR, f"Parse error: {error}")


def _valid_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def rpc_problem(obj: Any) -> Problem | None:
    """Why ``obj`` is not a JSON-RPC 2.0 message the server can take, or None when it is."""
    if isinstance(obj, list):
        return Problem(INVALID_REQUEST, "Invalid Request: batches are not part of LSP")
    if not isinstance(obj, dict):
        return Problem(INVALID_REQUEST, f"Invalid Request: expected an object, got {type(obj).__name__}")
    msg_id = obj.get("id")
    reply_id = msg_id if _valid_id(msg_id) else None
    if obj.get("jsonrpc") != "2.0":
        return Problem(INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be "2.0"', reply_id)
    if "id" in obj and msg_id is not None and not _valid_id(msg_id):
        return Problem(INVALID_REQUEST, "Invalid Request: id must be a number or a string")
    if "method" in obj:
        if not isinstance(obj["method"], str):
            return Problem(INVALID_REQUEST, "Invalid Request: method must be a string", reply_id)
        if "params" in obj and not isinstance(obj["params"], (dict, list)) and obj["params"] is not None:
            return Problem(INVALID_REQUEST, "Invalid Request: params must be an object or an array", reply_id)
        if "id" in obj and msg_id is None:
            return Problem(INVALID_REQUEST, "Invalid Request: a request id cannot be null")
        return None
    if ("result" in obj or "error" in obj) and "id" in obj:
        return None  # a response to one of our requests
    return Problem(
        INVALID_REQUEST, "Invalid Request: neither a request, a notification nor a response", reply_id
    )


def error_response(problem: Problem) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": problem.id, "error": {"code": problem.code, "message": problem.reason}}


async def serve(
    read: Callable[[], Awaitable[bytes]],
    protocol: Any,
    stop: Callable[[], bool],
    send_error: Callable[[dict[str, Any]], None],
    require_header: bool = False,
    admit: Callable[[dict[str, Any]], str | None] | None = None,
) -> str:
    """Feed ``read()`` chunks through a :class:`FrameReader` into ``protocol`` (pygls) until the
    stream ends or ``stop()``; answer every problem with ``send_error``. TCP sessions also pass
    ``require_header`` (a connection whose first bytes are not an LSP header is dropped: a
    browser's request, say) and ``admit``, which sees the first message and may refuse the
    session with a reason. Returns why it ended: closed, stopped, refused or unauthorized."""
    frames = FrameReader()
    pending: asyncio.Future | None = None
    head = b""
    admitted = admit is None
    try:
        while not stop():
            if pending is None:
                pending = asyncio.ensure_future(read())
            done, _ = await asyncio.wait({pending}, timeout=STALL_S)
            if not done:
                events = frames.stalled()
            else:
                data = pending.result()
                pending = None
                if not data:
                    return "closed"
                if require_header and len(head) < 15:
                    head += data[: 15 - len(head)]
                    if not b"content-length:".startswith(head.lower()[:15]):
                        return "refused"
                frames.feed(data)
                events = frames.events()
            for ev in events:
                if isinstance(ev, Problem):
                    log.warning("framing: %s", ev.reason)
                    if not admitted:
                        return "unauthorized"
                    send_error(error_response(ev))
                    continue
                if not admitted:
                    assert admit is not None
                    obj = json.loads(ev.body)
                    refusal = admit(obj)
                    if refusal is not None:
                        send_error(error_response(Problem(UNAUTHORIZED, refusal, obj.get("id"))))
                        return "unauthorized"
                    admitted = True
                _dispatch(ev, protocol, send_error)
                # let the handler task of this message start before the next one is handled, so
                # messages take effect in the order they were sent (as with one read per message)
                await asyncio.sleep(0)
        return "stopped"
    finally:
        if pending is not None:
            pending.cancel()


UNAUTHORIZED = -32001  # a server-defined JSON-RPC error code


def _dispatch(ev: Message, protocol: Any, send_error: Callable[[dict[str, Any]], None]) -> None:
    try:
        message = json.loads(ev.body, object_hook=protocol.structure_message)
    except Exception as exc:  # noqa: BLE001 - pygls' structuring raised on a bad message
        log.warning("cannot structure a message: %s", exc)
        obj = json.loads(ev.body)
        if _valid_id(obj.get("id")) and "method" in obj:
            send_error(error_response(Problem(-32602, f"Invalid params: {exc}", obj["id"])))
        return
    try:
        protocol.handle_message(message)
    except Exception:  # noqa: BLE001 - one bad message must not end the session
        log.exception("failed to handle a message")
