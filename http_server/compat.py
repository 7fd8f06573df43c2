"""The endpoints of the servers editors already talk to, served by the same engine and batcher.

- llama.cpp's ``POST /infill`` (llama.vim, llama.vscode): ``input_prefix`` + ``prompt`` (the
  cursor line so far) is the text before the cursor, ``input_suffix`` after it, ``input_extra``
  chunks of other files go before the prefix; ``n_predict``, ``stop``, ``stream``,
  ``response_fields`` (``"timings/prompt_n"`` style paths, answered as flat keys, as llama.cpp
  does). Sampling fields Diffill has no use for (``top_k``, ``samplers``, ``n_indent``,
  ``cache_prompt`` -- the context K/V is always reused) are accepted and ignored.
- Ollama's ``POST /api/generate`` with ``prompt`` + ``suffix`` (Continue's autocomplete),
  ``options.num_predict`` / ``temperature`` / ``top_p`` / ``stop``, NDJSON streaming;
  ``POST /api/show`` (Continue reads ``template`` to decide whether a model does FIM: it must
  contain ``.Suffix``) and ``GET /api/tags``.

Errors keep each API's own shape: llama.cpp answers ``{"error": {"code", "message", "type"}}``,
Ollama ``{"error": "message"}``. Limits (body size, tokens, per-client work) are the OpenAI
endpoint's.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from diffusion_core.engine import Completion, InfillRequest

__all__ = ["compat_routes"]

_encoder = msgspec.json.Encoder()


class ExtraChunk(msgspec.Struct, kw_only=True):
    text: str = ""
    filename: str | None = None
    time: float | None = None


class InfillBody(msgspec.Struct, kw_only=True):
    input_prefix: str = ""
    input_suffix: str = ""
    input_extra: list[ExtraChunk] = []
    prompt: str = ""
    n_predict: int = -1
    stop: list[str] = []
    stream: bool = False
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    response_fields: list[str] | None = None
    # llama.cpp's FIM time limit (llama.vim sends it): here counted from when the engine takes the
    # request, and then the suggestion ends at the next line end (diffusion_core/stopping.py)
    # (0 or less, llama.cpp's default -1, means no limit)
    t_max_predict_ms: float | None = None


class OllamaOptions(msgspec.Struct, kw_only=True):
    num_predict: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None


class GenerateBody(msgspec.Struct, kw_only=True):
    model: str | None = None
    prompt: str = ""
    suffix: str | None = None
    stream: bool = True  # Ollama streams unless told not to
    options: OllamaOptions | None = None
    raw: bool | None = None


class ShowBody(msgspec.Struct, kw_only=True):
    name: str | None = None
    model: str | None = None


def _extra_text(chunks: list[ExtraChunk]) -> str:
    """Other files' chunks as plain text before the prefix (as the language server's ring buffer
    puts them), each headed by its file name."""
    parts = []
    for c in chunks:
        head = f"# {c.filename}\n" if c.filename else ""
        parts.append(head + c.text.rstrip("\n") + "\n\n")
    return "".join(parts)


def _flatten(body: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    """llama.cpp's ``response_fields``: ``"a/b"`` picks ``body["a"]["b"]`` under the key ``"a/b"``."""
    out: dict[str, Any] = {}
    for path in fields:
        node: Any = body
        for part in path.split("/"):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            out[path] = node
    return out


class CompatApi:
    """llama.cpp and Ollama shapes on top of the OpenAI handlers' validation and batching."""

    def __init__(self, api: Any) -> None:
        self.api = api  # http_server.app._Api

    # -------------------------------------------------------------------------- llama.cpp
    async def infill(self, request: Request) -> Response:
        from .app import ApiError, _decode, _read_body

        try:
            req: InfillBody = _decode(await _read_body(request, self.api.config.max_body_bytes), InfillBody)
            max_tokens = self.api._max_tokens(req.n_predict if req.n_predict >= 0 else None, 64)
            stops = self.api._stops_list(req.stop)
            options = self.api._options_from(req.temperature, req.top_p, req.seed)
            prefix = _extra_text(req.input_extra) + req.input_prefix + req.prompt
            futures = self.api._submit(
                [
                    InfillRequest(
                        prefix,
                        req.input_suffix,
                        max_tokens,
                        options,
                        stop=tuple(stops),
                        time_budget_ms=req.t_max_predict_ms if (req.t_max_predict_ms or 0) > 0 else None,
                    )
                ],
                request,
            )
        except ApiError as exc:
            return _llama_error(exc.status, exc.message)
        t0 = time.perf_counter()
        if req.stream:

            async def events() -> AsyncIterator[bytes]:
                results = await self.api._gather(request, futures)
                if results is None:
                    return
                body = self._infill_body(prefix, req.input_suffix, results[0], t0)
                yield b"data: " + _encoder.encode({"content": body["content"], "stop": False}) + b"\n\n"
                yield b"data: " + _encoder.encode({**body, "content": ""}) + b"\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        try:
            results = await self.api._gather(request, futures)
        except ApiError as exc:
            return _llama_error(exc.status, exc.message)
        if results is None:
            return Response(status_code=499)
        body = self._infill_body(prefix, req.input_suffix, results[0], t0)
        if req.response_fields:
            body = _flatten(body, req.response_fields)
        return Response(_encoder.encode(body), media_type="application/json")

    def _infill_body(self, prefix: str, suffix: str, c: Completion, t0: float) -> dict[str, Any]:
        prompt_n = self.api.engine.count_tokens(prefix) + self.api.engine.count_tokens(suffix)
        ms = (time.perf_counter() - t0) * 1000.0
        stopped_eos = c.stop_reason == "eos"
        return {
            "content": c.text,
            "model": self.api.model_name,
            "stop": True,
            "stopped_eos": stopped_eos,
            "stopped_word": c.stop_reason == "stop",
            "stopped_limit": c.stop_reason in ("length", "time"),  # llama.cpp: its time limit too
            "tokens_predicted": c.tokens,
            "tokens_evaluated": prompt_n,
            "truncated": False,
            # the engine times the whole request; it is reported as prediction time
            "timings": {
                "prompt_n": prompt_n,
                "prompt_ms": 0.0,
                "prompt_per_token_ms": 0.0,
                "prompt_per_second": 0.0,
                "predicted_n": c.tokens,
                "predicted_ms": round(ms, 3),
                "predicted_per_token_ms": round(ms / max(c.tokens, 1), 3),
                "predicted_per_second": round(1000.0 * c.tokens / max(ms, 1e-6), 3),
            },
        }

    # -------------------------------------------------------------------------- Ollama
    async def generate(self, request: Request) -> Response:
        from .app import ApiError, _decode, _read_body

        try:
            req: GenerateBody = _decode(
                await _read_body(request, self.api.config.max_body_bytes), GenerateBody
            )
            self.api._check_model(req.model)
            o = req.options or OllamaOptions()
            num = o.num_predict if o.num_predict is not None and o.num_predict >= 0 else None
            max_tokens = self.api._max_tokens(num, 64)
            stops = self.api._stops_list(o.stop)
            options = self.api._options_from(o.temperature, o.top_p, o.seed)
            suffix = req.suffix or ""
            futures = self.api._submit(
                [InfillRequest(req.prompt, suffix, max_tokens, options, stop=tuple(stops))], request
            )
        except ApiError as exc:
            return Response(
                _encoder.encode({"error": exc.message}), status_code=exc.status, media_type="application/json"
            )
        t0 = time.perf_counter()

        def final(c: Completion) -> dict[str, Any]:
            ns = int((time.perf_counter() - t0) * 1e9)
            return {
                "model": req.model or self.api.model_name,
                "created_at": _now(),
                "response": "",
                "done": True,
                "done_reason": "length" if c.stop_reason in ("length", "time") else "stop",
                "total_duration": ns,
                "load_duration": 0,
                "prompt_eval_count": self.api.engine.count_tokens(req.prompt)
                + self.api.engine.count_tokens(suffix),
                "prompt_eval_duration": 0,
                "eval_count": c.tokens,
                "eval_duration": ns,
            }

        if req.stream:

            async def lines() -> AsyncIterator[bytes]:
                try:
                    results = await self.api._gather(request, futures)
                except ApiError as exc:
                    yield _encoder.encode({"error": exc.message}) + b"\n"
                    return
                if results is None:
                    return
                c = results[0]
                part = {
                    "model": req.model or self.api.model_name,
                    "created_at": _now(),
                    "response": c.text,
                    "done": False,
                }
                yield _encoder.encode(part) + b"\n"
                yield _encoder.encode(final(c)) + b"\n"

            return StreamingResponse(lines(), media_type="application/x-ndjson")
        try:
            results = await self.api._gather(request, futures)
        except ApiError as exc:
            return Response(
                _encoder.encode({"error": exc.message}), status_code=exc.status, media_type="application/json"
            )
        if results is None:
            return Response(status_code=499)
        body = final(results[0]) | {"response": results[0].text}
        return Response(_encoder.encode(body), media_type="application/json")

    async def show(self, request: Request) -> Response:
        from .app import ApiError, _decode, _read_body

        try:
            req: ShowBody = _decode(await _read_body(request, self.api.config.max_body_bytes), ShowBody)
            self.api._check_model(req.model or req.name)
        except ApiError as exc:
            return Response(
                _encoder.encode({"error": exc.message}), status_code=exc.status, media_type="application/json"
            )
        body = {
            # Continue decides a model does FIM when its template mentions .Suffix
            "template": "{{ .Prompt }}<fill-in-the-middle>{{ .Suffix }}",
            "parameters": "num_ctx 4096",
            "details": {"family": "diffill", "format": "safetensors"},
            "model_info": {"general.architecture": "diffill"},
        }
        return Response(_encoder.encode(body), media_type="application/json")

    async def tags(self, request: Request) -> Response:
        name = self.api.model_name
        card = {
            "name": name,
            "model": name,
            "modified_at": _now(),
            "size": 0,
            "digest": "",
            "details": {"family": "diffill", "format": "safetensors"},
        }
        return Response(_encoder.encode({"models": [card]}), media_type="application/json")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def _llama_error(status: int, message: str) -> Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"code": status, "message": message, "type": kind}}
    return Response(_encoder.encode(body), status_code=status, media_type="application/json")


def compat_routes(api: Any) -> list[Route]:
    c = CompatApi(api)
    return [
        Route("/infill", c.infill, methods=["POST"]),
        Route("/api/generate", c.generate, methods=["POST"]),
        Route("/api/show", c.show, methods=["POST"]),
        Route("/api/tags", c.tags, methods=["GET"]),
    ]
