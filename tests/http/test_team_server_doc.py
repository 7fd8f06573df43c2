"""docs/team-server.md's client examples, as written, against a live server (tiny model).

Only the host is changed (the docs say ``gpu-box`` or ``127.0.0.1:8000``); model names, paths,
keys and request fields are the docs' own.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from http_live import LiveServer

from diffill_http.app import ServerConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from docs_blocks import REPO, blocks  # noqa: E402

DOC = REPO / "docs" / "team-server.md"


@pytest.fixture(scope="module")
def keyed(engine) -> LiveServer:
    with LiveServer(engine, config=ServerConfig(api_key="change-me")) as s:
        yield s


def _rehost(url: str, live: str) -> str:
    parts = urlsplit(url)
    return live + parts.path


def test_the_openai_example_runs_as_written(keyed: LiveServer) -> None:
    (code,) = [b for b in blocks(DOC, "python") if "OpenAI(" in b]
    code = re.sub(r'base_url="([^"]+)"', lambda m: f'base_url="{_rehost(m.group(1), keyed.url)}"', code)
    printed: list[str] = []
    exec(compile(code, str(DOC), "exec"), {"print": lambda *a: printed.append(" ".join(map(str, a)))})
    assert len(printed) == 1 and isinstance(printed[0], str)


def test_the_llama_vim_endpoint_answers_an_infill(server: LiveServer) -> None:
    (vim,) = [b for b in blocks(DOC, "vim") if "endpoint_fim" in b]
    url = re.search(r"'endpoint_fim': '([^']+)'", vim).group(1)
    n_predict = int(re.search(r"'n_predict': (\d+)", vim).group(1))
    body = {
        "input_prefix": "def add(a, b):\n    ",
        "input_suffix": "\n",
        "prompt": "",
        "n_predict": n_predict,
    }
    r = httpx.post(_rehost(url, server.url), json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert "content" in r.json()


def test_the_continue_config_names_a_model_the_server_serves(server: LiveServer) -> None:
    (yaml,) = [b for b in blocks(DOC, "yaml") if "provider: ollama" in b]
    model = re.search(r"model: (\S+)", yaml).group(1)
    base = re.search(r"apiBase: (\S+)", yaml).group(1)
    show = httpx.post(_rehost(base, server.url) + "/api/show", json={"model": model}, timeout=30)
    assert show.status_code == 200 and ".Suffix" in show.json()["template"]
    body = {"model": model, "prompt": "def add(a, b):\n    ", "suffix": "\n", "stream": False}
    r = httpx.post(_rehost(base, server.url) + "/api/generate", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["done"] is True and "response" in r.json()
