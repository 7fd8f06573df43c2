"""Team mode against servers that are not Diffill: a fake of the OpenAI-compatible completions
API as vLLM / SGLang / llama.cpp's server speak it (``/v1/models``, ``/v1/completions`` with
``suffix``), strict about fields it does not know, with its own error shape."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer
from typing import Any

import pytest
from json_handler import JsonHandler

from diffusion_core.interface import InfillRequest, SamplingOptions
from lsp_server.backend import make_backend
from lsp_server.remote import RemoteBackend

STANDARD = {"model", "prompt", "suffix", "max_tokens", "temperature", "top_p", "stop", "seed", "n", "stream"}
MODEL = "Qwen/Qwen2.5-Coder-1.5B"


class GenericServer:
    """Answers ``<middle for prompt/suffix>``; refuses unknown fields (400, vLLM-style error)."""

    def __init__(self, strict: bool) -> None:
        self.bodies: list[dict[str, Any]] = []
        outer = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:
                if self.path == "/v1/models":
                    return self.send_json(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})
                self.send_json(404, {"object": "error", "message": "Not Found", "code": 404})

            def do_POST(self) -> None:
                body = self.json_body()
                outer.bodies.append(body)
                unknown = sorted(set(body) - STANDARD)
                if strict and unknown:
                    msg = f"Unrecognized request argument supplied: {', '.join(unknown)}"
                    return self.send_json(400, {"object": "error", "message": msg, "type": "BadRequestError"})
                text = f"<{body['prompt'][-6:]}|{body['suffix'][:6]}>"
                self.send_json(
                    200,
                    {
                        "object": "text_completion",
                        "model": body["model"],
                        "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
                        "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
                    },
                )

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "lenient"])
def test_remote_backend_completes_against_a_generic_server(strict: bool) -> None:
    srv = GenericServer(strict)
    try:
        with RemoteBackend(srv.url) as remote:
            assert remote.check() == MODEL
            req = InfillRequest(
                "def add(a, b):\n    ",
                "\n\nprint(add(1, 2))\n",
                16,
                SamplingOptions(),
                stop=("\n",),
                time_budget_ms=500,
            )
            first = remote.infill_batch([req])[0]
            again = remote.infill_batch([req])[0]
    finally:
        srv.close()
    assert first.text == again.text == f"<{req.prefix[-6:]}|{req.suffix[:6]}>"
    assert first.tokens == 4
    sent = srv.bodies[-1]
    assert sent["model"] == MODEL and sent["suffix"].startswith("\n\nprint") and sent["stop"] == ["\n"]
    if strict:  # refused once with the extensions, then never sent them again
        assert "quality" in srv.bodies[0] and set(srv.bodies[-1]) <= STANDARD and len(srv.bodies) == 3
    else:  # Diffill's extensions, the time budget among them, reach a server that takes them
        assert len(srv.bodies) == 2 and sent["time_budget_ms"] == 500 and "quality" in sent


def test_the_language_server_backend_uses_a_generic_server() -> None:
    srv = GenericServer(strict=True)
    try:
        backend = make_backend(None, None, None, srv.url, None, None)
        try:
            assert backend.model_id == MODEL
            (out,) = backend.infill_batch([InfillRequest("x = compute(", ")\n", 16)], lambda: False)
        finally:
            backend.close()
    finally:
        srv.close()
    assert out.text == "<mpute(|)\n>"


def test_a_budget_without_options_is_still_greedy() -> None:
    srv = GenericServer(strict=False)
    try:
        with RemoteBackend(srv.url) as remote:
            remote.infill_batch([InfillRequest("x = ", "\n", 4, time_budget_ms=9)])
    finally:
        srv.close()
    assert srv.bodies[-1]["temperature"] == 0.0 and srv.bodies[-1]["time_budget_ms"] == 9
