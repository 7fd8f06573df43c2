"""lsp_server.remote.RemoteBackend (team mode) against a real serve-http app on loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
from http_live import LiveServer

from diffill_http.app import ServerConfig
from diffusion_core.engine import Cancelled, Completion, Engine, InfillRequest, SamplingOptions
from lsp_server.remote import RemoteBackend, RemoteError, _base_url

T = 30


def test_infill_matches_the_local_engine(server: LiveServer, engine: Engine) -> None:
    prefix, suffix = "def fibonacci(n: int) -> int:\n    if n < 2:\n        return ", "\n"
    local = engine.infill(prefix, suffix, max_tokens=12, options=SamplingOptions(quality=0.5))
    with RemoteBackend(server.url) as remote:
        assert remote.model_id == engine.model_id
        got = remote.infill(prefix, suffix, max_tokens=12, options=SamplingOptions(quality=0.5))
        assert remote.health()
    assert isinstance(got, Completion)
    assert (got.text, got.tokens, got.stop_reason) == (local.text, local.tokens, local.stop_reason)


def test_infill_batch_keeps_order(server: LiveServer, engine: Engine) -> None:
    reqs = [InfillRequest(f"x{i} = ", "\n", 4 + i) for i in range(6)]
    with RemoteBackend(server.url + "/v1/completions") as remote:  # a full endpoint URL works too
        got = remote.infill_batch(reqs)
    assert [c.text for c in got] == [engine.infill(r.prefix, r.suffix, r.max_tokens).text for r in reqs]


def test_api_key_and_errors(engine: Engine) -> None:
    with LiveServer(engine, config=ServerConfig(api_key="team-key", max_tokens_limit=32)) as srv:
        with RemoteBackend(srv.url, api_key="team-key") as ok:
            assert ok.infill("import ", "", max_tokens=3).text == engine.infill("import ", "", 3).text
            with pytest.raises(RemoteError) as info:
                ok.infill("import ", "", max_tokens=100)
            assert info.value.status == 400 and "max_tokens" in str(info.value)
        with RemoteBackend(srv.url, api_key="wrong", model="m") as bad:
            with pytest.raises(RemoteError) as info:
                bad.infill("x", "")
            assert info.value.status == 401


def test_unreachable_server_is_a_remote_error() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with RemoteBackend(f"http://127.0.0.1:{port}", model="m", timeout=5) as remote:
        with pytest.raises(RemoteError) as info:
            remote.infill("x", "")
        assert info.value.status is None
        assert not remote.health()


class HangingEngine:
    """Holds every batch until the server cancels it (the client disconnected)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.started = threading.Event()
        self.cancelled = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def infill_batch(self, requests: Sequence[InfillRequest], cancel: Any = None) -> list:
        self.started.set()
        deadline = time.monotonic() + T
        while time.monotonic() < deadline:
            if cancel is not None and cancel():
                self.cancelled.set()
                raise Cancelled()
            time.sleep(0.002)
        raise AssertionError("the server never cancelled the abandoned request")


def test_cancel_closes_the_request_and_the_server_stops_the_work(engine: Engine) -> None:
    hanging = HangingEngine(engine)
    with LiveServer(hanging) as srv, RemoteBackend(srv.url, model=engine.model_id) as remote:
        with pytest.raises(Cancelled):
            remote.infill("x = ", "", max_tokens=8, cancel=hanging.started.is_set)
        assert hanging.cancelled.wait(T)  # the disconnect reached the engine's cancel check
        assert srv.batcher.stats().cancelled == 1


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("http://h:8000", "http://h:8000/v1"),
        ("http://h:8000/", "http://h:8000/v1"),
        ("http://h:8000/v1", "http://h:8000/v1"),
        ("http://h:8000/v1/completions", "http://h:8000/v1"),
        ("https://gw.example/team/v1/", "https://gw.example/team/v1"),
    ],
)
def test_base_url_forms(url: str, base: str) -> None:
    assert _base_url(url) == base


def test_closing_a_stream_cancels_the_work(engine: Engine) -> None:
    import httpx

    hanging = HangingEngine(engine)
    with LiveServer(hanging) as srv, httpx.Client(base_url=srv.url, timeout=T) as client:
        body = {"prompt": "x = ", "max_tokens": 8, "stream": True}
        with client.stream("POST", "/v1/completions", json=body) as resp:
            assert resp.status_code == 200
            assert hanging.started.wait(T)
        # leaving the block closed the connection mid-stream
        assert hanging.cancelled.wait(T)


def test_engine_and_remote_are_the_same_backend(server: LiveServer, engine: Engine) -> None:
    """The seam (diffusion_core.interface.Backend): the language server hands the same requests
    to the local engine or a RemoteBackend and gets the same completions back."""
    from diffusion_core.interface import Backend

    requests = [
        InfillRequest("def fibonacci(n: int) -> int:\n    return ", "\n", 8, SamplingOptions(quality=0.5)),
        InfillRequest("import ", "\n", 6, SamplingOptions(quality=0.5, length="ensemble")),
    ]
    local = engine.infill_batch(requests)
    remote = RemoteBackend(server.url)
    try:
        assert isinstance(engine, Backend) and isinstance(remote, Backend)
        assert remote.model_id == engine.model_id
        got = remote.infill_batch(requests)
        assert [(c.text, c.tokens, c.stop_reason) for c in got] == [
            (c.text, c.tokens, c.stop_reason) for c in local
        ]
        assert remote.count_tokens("some text") > 0  # an estimate: no tokenizer on the client
    finally:
        remote.close()
