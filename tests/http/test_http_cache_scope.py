"""Cached context K/V over HTTP: a client reuses only what it cached itself.

A team server's prefix cache would otherwise tell one member, by latency, whether another sent
a context recently. A client names its scope with a secret header (the language server's team
mode sends one per editor session); a request without one reuses and leaves nothing, unless the
server's owner shares the cache per client (``--share-prefix-cache``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from http_live import LiveServer

from diffill_http.app import ServerConfig
from diffusion_core.engine import Engine
from diffusion_core.interface import CACHE_SCOPE_HEADER, InfillRequest
from lsp_server.remote import RemoteBackend

LINES = [f"def handler_{i}(request, value={i}):\n    return request.get('k{i}', value)\n" for i in range(20)]
PREFIX = "".join(LINES) + "\ndef main():\n    total = handler_3("
SUFFIX = ")\n    print(total)\n"
ALICE, BOB = "alice-editor-session-1", "bob-editor-session-22"


@pytest.fixture(scope="module")
def coder(coder_dirs: tuple[Path, Path]) -> Engine:
    base, adapter = coder_dirs
    return Engine.from_pretrained(adapter, base=base, device="cpu", dtype="float32", progress=False)


@pytest.fixture
def live(coder: Engine) -> Iterator[LiveServer]:
    coder.prefix_cache.clear()
    with LiveServer(coder) as srv:
        yield srv


def _reused(srv: LiveServer, body: dict, scope: str | None, path: str = "/v1/completions") -> int:
    """Context tokens the request took from the prefix cache."""
    cache = srv.engine.prefix_cache
    before = cache.stats()["reused_context_tokens"]
    headers = {CACHE_SCOPE_HEADER: scope} if scope is not None else {}
    r = httpx.post(srv.url + path, json=body, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    return cache.stats()["reused_context_tokens"] - before


def _body(prefix: str) -> dict:
    return {"prompt": prefix, "suffix": SUFFIX, "max_tokens": 4}


def test_a_client_reuses_its_own_context_and_no_one_elses(live: LiveServer) -> None:
    n_prefix = live.engine.count_tokens(PREFIX)
    assert _reused(live, _body(PREFIX), ALICE) == 0
    assert _reused(live, _body(PREFIX + "x"), ALICE) > 0.8 * n_prefix  # her keystroke
    assert _reused(live, _body(PREFIX + "x"), BOB) == 0  # the same context, another client
    assert _reused(live, _body(PREFIX + "x"), None) == 0  # no scope: nothing reused...
    entries = live.engine.prefix_cache.stats()["prefix_cache_entries"]
    assert _reused(live, _body(PREFIX + "xy"), None) == 0  # ...and nothing kept
    assert live.engine.prefix_cache.stats()["prefix_cache_entries"] == entries
    # llama.cpp's /infill (what llama.vim sends) honours the same header
    infill = {"input_prefix": PREFIX + "x", "input_suffix": SUFFIX, "n_predict": 4}
    assert _reused(live, infill, BOB, "/infill") > 0.8 * n_prefix


def test_a_short_scope_is_refused(live: LiveServer) -> None:
    r = httpx.post(
        live.url + "/v1/completions", json=_body(PREFIX), headers={CACHE_SCOPE_HEADER: "abc"}, timeout=60
    )
    assert r.status_code == 400
    assert r.json()["error"]["param"] == CACHE_SCOPE_HEADER


def test_a_shared_cache_reuses_per_client_without_the_header(coder: Engine) -> None:
    coder.prefix_cache.clear()
    with LiveServer(coder, ServerConfig(shared_prefix_cache=True)) as srv:
        assert _reused(srv, _body(PREFIX), None) == 0
        assert _reused(srv, _body(PREFIX + "x"), None) > 0.8 * coder.count_tokens(PREFIX)
        assert _reused(srv, _body(PREFIX + "x"), ALICE) == 0  # a scoped client stays apart


def test_team_mode_sends_each_sessions_scope(live: LiveServer) -> None:
    """The language server's remote backend carries the session's scope to the team server."""
    n_prefix = live.engine.count_tokens(PREFIX)
    cache = live.engine.prefix_cache
    with RemoteBackend(live.url) as remote:

        def reused(prefix: str, scope: str) -> int:
            before = cache.stats()["reused_context_tokens"]
            remote.infill_batch([InfillRequest(prefix, SUFFIX, 4, cache_scope=scope)])
            return cache.stats()["reused_context_tokens"] - before

        assert reused(PREFIX, ALICE) == 0
        assert reused(PREFIX + "x", ALICE) > 0.8 * n_prefix
        assert reused(PREFIX + "x", BOB) == 0
