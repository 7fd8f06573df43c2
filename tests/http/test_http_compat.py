"""llama.cpp's /infill and Ollama's /api/generate, replayed with the bodies llama.vim / llama.vscode
and Continue send, and parsed the way they parse the answers."""

from __future__ import annotations

import json
import re

import httpx
from http_live import LiveServer

from diffill_http.app import ServerConfig
from diffusion_core.engine import Engine

PREFIX_LINES = "def add(a, b):\n"
CUR_LINE = "    return "
SUFFIX = "\n\nprint(add(1, 2))\n"

# what llama.vim's llama#fim sends (its request builder, field for field)
LLAMA_VIM_BODY = {
    "input_prefix": PREFIX_LINES,
    "input_suffix": SUFFIX,
    "input_extra": [{"text": "x = add(3, 4)\n", "time": 1.5, "filename": "other.py"}],
    "prompt": CUR_LINE,
    "n_predict": 12,
    "stop": [],
    "n_indent": 4,
    "top_k": 40,
    "top_p": 0.90,
    "stream": False,
    "samplers": ["top_k", "top_p", "infill"],
    "cache_prompt": True,
    "t_max_prompt_ms": 500,
    "t_max_predict_ms": 1000,
    "response_fields": [
        "content",
        "timings/prompt_n",
        "timings/prompt_ms",
        "timings/prompt_per_token_ms",
        "timings/prompt_per_second",
        "timings/predicted_n",
        "timings/predicted_ms",
        "timings/predicted_per_token_ms",
        "timings/predicted_per_second",
        "truncated",
        "tokens_cached",
    ],
}


def _expected(engine: Engine, n: int, extra: str = "") -> str:
    return engine.infill(extra + PREFIX_LINES + CUR_LINE, SUFFIX, max_tokens=n).text


def test_llama_vim_infill_request_and_parse(server: LiveServer, engine: Engine) -> None:
    r = httpx.post(server.url + "/infill", json=LLAMA_VIM_BODY, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    # llama.vim reads get(response, 'content') and the flat 'timings/...' keys
    assert set(body) <= set(LLAMA_VIM_BODY["response_fields"])
    want = _expected(engine, 12, "# other.py\nx = add(3, 4)\n\n")
    assert body["content"] == want
    for key in (
        "timings/prompt_n",
        "timings/prompt_ms",
        "timings/prompt_per_second",
        "timings/predicted_n",
        "timings/predicted_ms",
        "timings/predicted_per_second",
    ):
        assert key in body, key
    assert body["timings/predicted_n"] <= 12 and body["truncated"] is False


def test_llama_vscode_style_infill_without_fields_and_streamed(server: LiveServer, engine: Engine) -> None:
    plain = {"input_prefix": PREFIX_LINES, "input_suffix": SUFFIX, "prompt": CUR_LINE, "n_predict": 8}
    r = httpx.post(server.url + "/infill", json=plain, timeout=60)
    body = r.json()
    assert r.status_code == 200 and body["content"] == _expected(engine, 8) and body["stop"] is True
    assert body["timings"]["predicted_n"] == body["tokens_predicted"]
    with httpx.stream("POST", server.url + "/infill", json={**plain, "stream": True}, timeout=60) as s:
        events = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: ")]
    assert "".join(e["content"] for e in events) == body["content"]
    assert events[-1]["stop"] is True and all(e["stop"] is False for e in events[:-1])


def test_infill_errors_have_llama_cpp_shape(server: LiveServer) -> None:
    r = httpx.post(server.url + "/infill", content=b'{"input_prefix": 3}', timeout=30)
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == 400 and "input_prefix" in err["message"]


def test_continue_ollama_autocomplete(server: LiveServer, engine: Engine) -> None:
    # Continue asks /api/show once: FIM is on when the template mentions .Suffix, and it parses
    # each parameters line with this pattern (a line it cannot parse throws)
    show = httpx.post(server.url + "/api/show", json={"name": engine.model_id}, timeout=30).json()
    assert ".Suffix" in show["template"]
    for line in show["parameters"].split("\n"):
        assert re.match(r"^(\S+)\s+((?:\".*\")|\S+)$", line), line
    tags = httpx.get(server.url + "/api/tags", timeout=30).json()
    assert [m["name"] for m in tags["models"]] == [engine.model_id]
    # its _getGenerateOptions body, streamed as NDJSON and read line by line
    body = {
        "model": engine.model_id,
        "prompt": PREFIX_LINES + CUR_LINE,
        "suffix": SUFFIX,
        "raw": True,
        "options": {"temperature": 0.0, "num_predict": 10, "stop": ["\n\n"], "num_ctx": 4096},
        "keep_alive": 1800,
        "stream": True,
    }
    with httpx.stream("POST", server.url + "/api/generate", json=body, timeout=60) as s:
        assert s.headers["content-type"].startswith("application/x-ndjson")
        chunks = [json.loads(line) for line in s.iter_lines() if line.strip()]
    assert all("error" not in c for c in chunks)
    text = "".join(c.get("response") or "" for c in chunks)
    want = engine.infill_until(PREFIX_LINES + CUR_LINE, SUFFIX, ["\n\n"], max_tokens=10).text
    assert text == want and chunks[-1]["done"] is True and chunks[-1]["eval_count"] <= 10
    one = httpx.post(server.url + "/api/generate", json={**body, "stream": False}, timeout=60).json()
    assert one["response"] == want and one["done"] is True


def test_ollama_errors_have_ollama_shape(server: LiveServer) -> None:
    r = httpx.post(server.url + "/api/generate", json={"model": "no-such-model", "prompt": "x"}, timeout=30)
    assert r.status_code == 404 and isinstance(r.json()["error"], str)


def test_compat_endpoints_need_the_key(engine: Engine) -> None:
    with LiveServer(engine, config=ServerConfig(api_key="k")) as srv:
        assert httpx.post(srv.url + "/infill", json={"input_prefix": "x"}, timeout=30).status_code == 401
        ok = httpx.post(
            srv.url + "/infill",
            json={"input_prefix": "x", "n_predict": 2},
            headers={"Authorization": "Bearer k"},
            timeout=60,
        )
        assert ok.status_code == 200
