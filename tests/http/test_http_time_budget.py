"""The time budget travels from every client to the engine: the OpenAI endpoint's
``time_budget_ms`` extension, llama.cpp's ``t_max_predict_ms`` on ``/infill`` (what llama.vim
sends), and the language server's team mode; a bad value is a 400 naming the field."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from http_live import LiveServer

from diffusion_core.engine import Engine
from diffusion_core.interface import InfillRequest
from lsp_server.remote import RemoteBackend


class Recording:
    """The real engine, remembering the requests it was given."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.requests: list[InfillRequest] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def infill_batch(self, requests: Any, cancel: Any = None) -> list:
        self.requests.extend(requests)
        return self.engine.infill_batch(requests, cancel)


@pytest.fixture(scope="module")
def recorded(engine: Engine) -> Any:
    rec = Recording(engine)
    with LiveServer(rec) as srv:
        yield rec, srv


def _last_budget(rec: Recording, r: httpx.Response) -> float | None:
    assert r.status_code == 200, r.text
    return rec.requests[-1].time_budget_ms


def test_openai_endpoint_passes_the_budget(recorded: Any) -> None:
    rec, srv = recorded
    body = {"prompt": "import ", "max_tokens": 3}
    assert _last_budget(rec, httpx.post(srv.url + "/v1/completions", json=body, timeout=30)) is None
    with_budget = {**body, "time_budget_ms": 250}
    assert _last_budget(rec, httpx.post(srv.url + "/v1/completions", json=with_budget, timeout=30)) == 250
    bad = httpx.post(srv.url + "/v1/completions", json={**body, "time_budget_ms": -5}, timeout=30)
    assert bad.status_code == 400 and "time_budget_ms" in bad.json()["error"]["message"]


@pytest.mark.parametrize(("sent", "budget"), [(300, 300), (-1, None), (0, None)])
def test_llama_cpp_infill_maps_t_max_predict_ms(recorded: Any, sent: int, budget: float | None) -> None:
    """llama.cpp's default -1 (and 0) mean no limit there, so here too."""
    rec, srv = recorded
    body = {"input_prefix": "import ", "input_suffix": "\n", "n_predict": 3, "t_max_predict_ms": sent}
    assert _last_budget(rec, httpx.post(srv.url + "/infill", json=body, timeout=30)) == budget


def test_team_mode_sends_the_budget(recorded: Any) -> None:
    rec, srv = recorded
    with RemoteBackend(srv.url) as remote:
        remote.infill_batch([InfillRequest("import ", "\n", 3, time_budget_ms=800)])
    assert rec.requests[-1].time_budget_ms == 800
