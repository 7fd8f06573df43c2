"""Every bad request gets the right 4xx and an OpenAI-style error body; the server keeps serving."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from http_live import LiveServer

from diffill_http.app import ServerConfig
from diffusion_core.engine import Engine

LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def strict(engine: Engine) -> Iterator[LiveServer]:
    config = ServerConfig(api_key="k3y", max_body_bytes=LIMIT, max_tokens_limit=64, max_n=4)
    with LiveServer(engine, config=config) as s:
        yield s


AUTH = {"Authorization": "Bearer k3y"}


def post(
    srv: LiveServer, path: str, content: bytes | None = None, headers: dict | None = None
) -> httpx.Response:
    return httpx.post(srv.url + path, content=content, headers={**AUTH, **(headers or {})}, timeout=30)


def assert_error(r: httpx.Response, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert set(err) == {"message", "type", "param", "code"}
    if param is not None:
        assert err["param"] == param
    return err


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"suffix": "x"}', None),  # missing prompt
        (b'{"prompt": 5}', "prompt"),
        (b'{"prompt": "x", "max_tokens": "ten"}', "max_tokens"),
        (b'{"prompt": "x", "temperature": "hot"}', "temperature"),
        (b'{"prompt": "x", "stream": "yes"}', "stream"),
        (b'{"prompt": "x", "stop": 3}', "stop"),
        (b'{"prompt": ["a", 1]}', None),
        (b'{"prompt": "x", "n": 1.5}', "n"),
        (b"[1, 2, 3]", None),
        (b'"just a string"', None),
        (b'{"prompt": "x", "max_tokens": 65}', "max_tokens"),
        (b'{"prompt": "x", "max_tokens": -1}', "max_tokens"),
        (b'{"prompt": "x", "n": 0}', "n"),
        (b'{"prompt": "x", "n": 5}', "n"),
        (b'{"prompt": "x", "temperature": 3}', "temperature"),
        (b'{"prompt": "x", "top_p": 0}', "top_p"),
        (b'{"prompt": "x", "quality": 2}', "quality"),
        (b'{"prompt": "x", "length": "longest"}', "length"),
        (b'{"prompt": "x", "length": "expand"}', None),  # the model has no expand token
        (b'{"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}', "stop"),
        (b'{"prompt": []}', "prompt"),
    ],
)
def test_invalid_completion_bodies_are_400(strict: LiveServer, body: bytes, param: str | None) -> None:
    err = assert_error(post(strict, "/v1/completions", body), 400, param)
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize("body", [b"{", b'{"prompt": "x",}', b"\xff\xfe", b"", b"   ", b"nul"])
def test_bad_json_is_400(strict: LiveServer, body: bytes) -> None:
    assert_error(post(strict, "/v1/completions", body), 400)


@pytest.mark.parametrize(
    "body",
    [
        b'{"messages": "hi"}',
        b'{"messages": [{"content": "no role"}]}',
        b'{"messages": [{"role": "user", "content": 3}]}',
    ],
)
def test_invalid_chat_bodies_are_400(strict: LiveServer, body: bytes) -> None:
    assert_error(post(strict, "/v1/chat/completions", body), 400)


def test_body_over_the_limit_is_413(strict: LiveServer) -> None:
    big = b'{"prompt": "' + b"a" * (LIMIT * 2) + b'"}'
    err = assert_error(post(strict, "/v1/completions", big), 413)
    assert err["code"] == "request_too_large"


def test_chunked_body_over_the_limit_is_413(strict: LiveServer) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the server must count while reading
        yield b'{"prompt": "'
        for _ in range(2 * LIMIT // 4096):
            yield b"a" * 4096
        yield b'"}'

    r = httpx.post(strict.url + "/v1/completions", content=chunks(), headers=AUTH, timeout=30)
    assert_error(r, 413)


def raw(srv: LiveServer, data: bytes) -> bytes:
    """Send bytes no well-behaved client would send; return what comes back."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


def test_declared_length_over_the_limit_is_413_before_the_body(strict: LiveServer) -> None:
    head = (
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k3y\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (LIMIT * 100)
    )
    assert raw(strict, head + b'{"prompt": "').startswith(b"HTTP/1.1 413 ")


@pytest.mark.parametrize(
    "data",
    [
        b"GARBAGE\r\n\r\n",
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_malformed_http_gets_400(strict: LiveServer, data: bytes) -> None:
    assert raw(strict, data).startswith(b"HTTP/1.1 400 ")


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "k3y"}, {"Authorization": "Basic k3y"}],
)
def test_wrong_or_missing_token_is_401(strict: LiveServer, headers: dict) -> None:
    r = httpx.post(strict.url + "/v1/completions", json={"prompt": "x"}, headers=headers)
    err = assert_error(r, 401)
    assert err["code"] == "invalid_api_key"
    assert assert_error(httpx.get(strict.url + "/v1/models", headers=headers), 401)


def test_unknown_model_path_and_method(strict: LiveServer) -> None:
    r = post(strict, "/v1/completions", b'{"prompt": "x", "model": "gpt-4"}')
    assert assert_error(r, 404, "model")["code"] == "model_not_found"
    assert_error(httpx.get(strict.url + "/v1/nothing", headers=AUTH), 404)
    assert_error(httpx.get(strict.url + "/v1/completions", headers=AUTH), 405)
    assert_error(httpx.get(strict.url + "/v1/models/other", headers=AUTH), 404)


def test_server_survives_all_of_it(strict: LiveServer, engine: Engine) -> None:
    for body in (b"{", b'{"prompt": 1}', b"\x00" * 100, b'{"prompt": "' + b"\\ud800" + b'"}'):
        assert 400 <= post(strict, "/v1/completions", body).status_code < 500
    r = post(strict, "/v1/completions", b'{"prompt": "import os\\n", "max_tokens": 4}')
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == engine.infill("import os\n", "", max_tokens=4).text
    assert httpx.get(strict.url + "/health").json()["status"] == "ok"


class Held:
    """The real engine, but every batch waits for ``release`` (so requests pile up behind it)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.entered = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def infill_batch(self, requests: Any, cancel: Any = None) -> list:
        self.entered.set()
        assert self.release.wait(60)
        return self.engine.infill_batch(requests, cancel)


def test_full_queue_is_503_with_retry_after(engine: Engine) -> None:
    held = Held(engine)
    body = {"prompt": "import ", "max_tokens": 3}

    async def main(srv: LiveServer) -> None:
        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as c:
            first = asyncio.ensure_future(c.post("/v1/completions", json=body))
            await asyncio.to_thread(held.entered.wait, 60)
            second = asyncio.ensure_future(c.post("/v1/completions", json=body))
            while srv.batcher.stats().pending < 1:
                await asyncio.sleep(0.005)
            r = await c.post("/v1/completions", json=body)
            assert assert_error(r, 503)["code"] == "overloaded"
            assert r.headers["retry-after"] == "1"
            held.release.set()
            expected = engine.infill("import ", "", max_tokens=3).text
            for f in (first, second):
                resp = await f
                assert resp.status_code == 200 and resp.json()["choices"][0]["text"] == expected

    with LiveServer(held, max_pending=1) as srv:
        asyncio.run(main(srv))


def test_stopped_worker_fails_health_and_requests_with_503(engine: Engine) -> None:
    with LiveServer(engine) as srv:
        assert httpx.get(srv.url + "/health").status_code == 200
        srv.batcher.close()
        health = httpx.get(srv.url + "/health")
        assert health.status_code == 503 and health.json()["status"] == "unavailable"
        assert_error(httpx.post(srv.url + "/v1/completions", json={"prompt": "x"}), 503)


def test_work_per_request_and_per_client_is_capped(engine: Engine) -> None:
    """64 sampled choices of 1,024 tokens would hold the one engine for minutes: refused, and
    one client cannot keep more than its share of choices in flight."""
    config = ServerConfig(max_request_tokens=256, max_client_inflight=2, max_n=64, max_choices=64)
    with LiveServer(engine, config=config) as srv:
        big = {"prompt": "x", "n": 64, "max_tokens": 1024, "temperature": 0.8}
        err = assert_error(httpx.post(srv.url + "/v1/completions", json=big, timeout=30), 400, "max_tokens")
        assert "65536 tokens of work" in err["message"] and "256" in err["message"]
        many = {"prompt": "x", "n": 3, "max_tokens": 4, "temperature": 0.8}
        err = assert_error(httpx.post(srv.url + "/v1/completions", json=many, timeout=30), 429)
        assert err["code"] == "too_many_requests"
        ok = {"prompt": "x", "n": 2, "max_tokens": 4, "temperature": 0.8}
        r = httpx.post(srv.url + "/v1/completions", json=ok, timeout=60)
        assert r.status_code == 200 and len(r.json()["choices"]) == 2
        # finished work frees the client's share again
        assert httpx.post(srv.url + "/v1/completions", json=ok, timeout=60).status_code == 200
