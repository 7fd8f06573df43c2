"""The OpenAI-compatible HTTP API (Starlette app; served by uvicorn from ``diffill serve-http``).

Why this shape: every model call goes through a :class:`~diffusion_core.batcher.Batcher`, so
concurrent HTTP requests share batched denoising runs; handlers only parse, validate, submit
and format. Every bad request gets a 4xx with an OpenAI-style error body, and no request can
take the process down: validation is msgspec, unexpected failures become a 500 body.

Differences from OpenAI worth knowing: ``temperature`` defaults to 0 (greedy -- what editors
want from fill-in-the-middle); streaming sends each choice as one chunk when it is done,
because a diffusion model fills the whole middle at once rather than left to right.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from diffusion_core.batcher import Batcher, BatcherClosed, Cancelled, Overloaded
from diffusion_core.engine import Completion, InfillRequest, SamplingOptions
from diffusion_core.interface import CACHE_SCOPE_HEADER, OptionError
from diffusion_core.length import resolve_length

from .chat import ChatTemplate, ChatTemplateError
from .compat import compat_routes
from .schemas import ChatRequest, CompletionRequest

__all__ = ["ApiError", "ServerConfig", "create_app"]

log = logging.getLogger("diffill.http")

_JSON = "application/json"
MODEL_ALIAS = "diffill"
_encoder = msgspec.json.Encoder()


class EngineLike(Protocol):
    """What the HTTP layer reads from the engine besides the batcher (tokenizer-side helpers)."""

    model_id: str
    default_options: SamplingOptions

    def fit_context(self, prefix: str, suffix: str) -> tuple[list[int], list[int]]: ...

    def count_tokens(self, text: str) -> int: ...


@dataclass
class ServerConfig:
    """Limits and identity of one server; the defaults suit a shared workstation."""

    api_key: str | None = None
    served_model_name: str | None = None  # defaults to the engine's model_id
    max_body_bytes: int = 1 << 20
    max_tokens_limit: int = 1024
    default_max_tokens: int = 16  # OpenAI's legacy default for /v1/completions
    default_chat_max_tokens: int = 256
    max_n: int = 16
    max_choices: int = 64  # prompts x n in one request
    max_stop: int = 4
    # work one request may ask for (choices x max_tokens) and choices one client may have in
    # flight: one client cannot hold the single engine for minutes or crowd out the others
    max_request_tokens: int = 4096
    max_client_inflight: int = 16
    # lend cached context K/V to requests without the X-Diffill-Cache-Scope header too, per client
    # (bearer key, else address): typing-speed reuse for third-party plugins, for a server one
    # person uses (clients sharing a key could time each other's contexts); see _cache_scope
    shared_prefix_cache: bool = False


class ApiError(Exception):
    """An error with an HTTP status and an OpenAI-style body."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> Response:
        headers = {"Retry-After": "1"} if self.status == 503 else None
        if self.status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return Response(
            _encoder.encode(self.body()), status_code=self.status, media_type=_JSON, headers=headers
        )


def _json(data: Any, status: int = 200) -> Response:
    return Response(_encoder.encode(data), status_code=status, media_type=_JSON)


# ------------------------------------------------------------------------------------ auth
class _BearerAuth:
    """Pure ASGI middleware: every path except /health needs ``Authorization: Bearer <key>``."""

    def __init__(
        self, app: ASGIApp, api_key: str, open_paths: frozenset[str] = frozenset({"/health"})
    ) -> None:
        self.app = app
        self.key = api_key.encode()
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.open_paths:
            auth = b""
            for name, value in scope["headers"]:
                if name == b"authorization":
                    auth = value
                    break
            scheme, _, token = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                err = ApiError(401, "Incorrect or missing API key.", code="invalid_api_key")
                await err.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


# ------------------------------------------------------------------------------------ helpers
async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ApiError(400, "Invalid Content-Length header.") from None
        if size > limit:
            raise ApiError(
                413,
                f"Request body of {size} bytes exceeds the limit of {limit} bytes.",
                code="request_too_large",
            )
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ApiError(413, f"Request body exceeds the limit of {limit} bytes.", code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(body: bytes, kind: type) -> Any:
    if not body.strip():
        raise ApiError(400, "Request body is empty; expected a JSON object.")
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        param = msg.rsplit("`$.", 1)[1].rstrip("`") if "`$." in msg else None
        raise ApiError(400, f"Invalid request: {msg}", param=param) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"Request body is not valid JSON: {exc}") from None


def _stops(stop: str | list[str] | None, limit: int) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > limit:
        raise ApiError(400, f"At most {limit} stop sequences are allowed.", param="stop")
    return [s for s in stops if s]


def _apply_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def _client(request: Request) -> str:
    """Who is asking, for per-client limits: the bearer key when there is one, else the address."""
    auth = request.headers.get("authorization", "")
    if auth:
        return "key:" + hmac.new(b"diffill", auth.encode(), "sha256").hexdigest()[:16]
    return "addr:" + (request.client.host if request.client else "?")


MIN_SCOPE_CHARS = 16


def _cache_scope(request: Request, client: str, shared: bool) -> str | None:
    """Whose cached context K/V the request may reuse (``InfillRequest.cache_scope``): with the
    X-Diffill-Cache-Scope header, the requests of the same ``client`` that send the same secret
    (the language server's remote backend sends one per editor session); without it, none, so
    one client's latency never tells whether another sent a context recently, unless the server
    was started with ``shared`` (one person's server): then every request of the same client."""
    token = request.headers.get(CACHE_SCOPE_HEADER)
    if token is None:
        return client if shared else None
    token = token.strip()
    if len(token) < MIN_SCOPE_CHARS:
        raise ApiError(
            400,
            f"{CACHE_SCOPE_HEADER} must be a secret of at least {MIN_SCOPE_CHARS} characters.",
            param=CACHE_SCOPE_HEADER,
        )
    return "scope:" + hmac.new(b"diffill-scope", f"{client}\0{token}".encode(), "sha256").hexdigest()


def _cancel_all(futures: Sequence[Future]) -> None:
    for f in futures:
        f.cancel()


@dataclass
class _Choice:
    text: str
    finish_reason: str
    tokens: int


class _Api:
    """Request handlers; one instance per app."""

    def __init__(
        self, engine: EngineLike, batcher: Batcher, config: ServerConfig, chat_template: ChatTemplate | None
    ) -> None:
        self.engine = engine
        self.batcher = batcher
        self.config = config
        self.chat_template = chat_template
        self.model_name = config.served_model_name or engine.model_id
        self.created = int(time.time())
        self._inflight: dict[str, int] = {}  # choices in flight per client (key, else address)

    # -------------------------------------------------------------------------- validation
    def _check_model(self, model: str | None) -> None:
        # "diffill" names whatever this server serves (one model per server), so clients and the
        # docs' examples need not know a checkpoint's id
        if model is not None and model not in (self.model_name, self.engine.model_id, MODEL_ALIAS):
            raise ApiError(
                404,
                f"The model `{model}` does not exist; this server serves `{self.model_name}`.",
                param="model",
                code="model_not_found",
            )

    def _max_tokens(self, value: int | None, default: int) -> int:
        mt = default if value is None else value
        if not 0 <= mt <= self.config.max_tokens_limit:
            raise ApiError(
                400, f"max_tokens must be between 0 and {self.config.max_tokens_limit}.", param="max_tokens"
            )
        return mt

    def _stops_list(self, stop: str | list[str] | None) -> list[str]:
        return _stops(stop, self.config.max_stop)

    def _options(self, req: CompletionRequest | ChatRequest) -> SamplingOptions:
        return self._options_from(
            req.temperature, req.top_p, req.seed, req.quality, getattr(req, "length", None)
        )

    def _options_from(
        self,
        temperature: float | None,
        top_p: float | None,
        seed: int | None,
        quality: float | None = None,
        length: str | None = None,
    ) -> SamplingOptions:
        """Sampling options from a request's fields, validated by ``SamplingOptions`` itself
        (the one schema, shared with the language server's settings and the library)."""
        temperature = 0.0 if temperature is None else temperature
        top_p = 1.0 if top_p is None else top_p
        changes: dict[str, Any] = {"temperature": temperature, "top_p": top_p}
        if temperature > 0:
            # without a seed each request samples afresh, as OpenAI's API does
            changes["seed"] = seed if seed is not None else random.getrandbits(31)
        if quality is not None:
            changes["quality"] = quality
        if length is not None:
            changes["length"] = length
        try:
            opts = dataclasses.replace(self.engine.default_options, **changes)
            family = getattr(self.engine, "family", None)
            if family is not None:
                resolve_length(opts, family)  # e.g. "expand" on a model without an expand token
            return opts
        except OptionError as exc:
            raise ApiError(400, f"{exc}.", param=exc.field) from None
        except (ValueError, TypeError) as exc:
            raise ApiError(400, f"Invalid sampling options: {exc}") from None

    def _check_n(self, n: int, prompts: int) -> None:
        if not 1 <= n <= self.config.max_n:
            raise ApiError(400, f"n must be between 1 and {self.config.max_n}.", param="n")
        if n * prompts > self.config.max_choices:
            raise ApiError(
                400, f"At most {self.config.max_choices} choices (prompts x n) per request.", param="n"
            )

    def _admit(self, reqs: list[InfillRequest], client: str) -> None:
        work = sum(r.max_tokens for r in reqs)
        if work > self.config.max_request_tokens:
            raise ApiError(
                400,
                f"This request asks for {work} tokens of work (choices x max_tokens); the limit is "
                f"{self.config.max_request_tokens} per request.",
                param="max_tokens",
                code="request_too_large",
            )
        busy = self._inflight.get(client, 0)
        if busy + len(reqs) > self.config.max_client_inflight:
            raise ApiError(
                429,
                f"Too many completions in flight for this client ({busy} running, at most "
                f"{self.config.max_client_inflight}); retry when they finish.",
                type_="rate_limit_error",
                code="too_many_requests",
            )

    def _track(self, futures: list[Future], client: str) -> None:
        self._inflight[client] = self._inflight.get(client, 0) + len(futures)

        def done(_: Future) -> None:
            left = self._inflight.get(client, 1) - 1
            if left > 0:
                self._inflight[client] = left
            else:
                self._inflight.pop(client, None)

        for f in futures:
            f.add_done_callback(done)

    def _submit(self, reqs: list[InfillRequest], request: Request) -> list[Future]:
        """Queue ``reqs`` for the client behind ``request``, in its cache scope."""
        client = _client(request)
        scope = _cache_scope(request, client, self.config.shared_prefix_cache)
        self._admit(reqs, client)
        futures: list[Future] = []
        try:
            for r in reqs:
                futures.append(self.batcher.submit(dataclasses.replace(r, cache_scope=scope)))
        except Overloaded:
            _cancel_all(futures)
            raise ApiError(
                503, "The server is overloaded; retry shortly.", type_="server_error", code="overloaded"
            ) from None
        except BatcherClosed:
            _cancel_all(futures)
            raise ApiError(
                503, "The server is shutting down.", type_="server_error", code="unavailable"
            ) from None
        self._track(futures, client)
        return futures

    def _submit_choices(
        self, base: list[InfillRequest], n: int, request: Request
    ) -> tuple[list[Future], list[int]]:
        """Submit ``n`` choices per request; return the futures and, per choice, its future's index.

        Greedy decoding is deterministic, so ``n`` greedy choices are computed once and shared."""
        opts = base[0].options
        reps = 1 if opts is not None and opts.temperature == 0 else n
        futures = self._submit([r for r in base for _ in range(reps)], request)
        slots = [(i // n) * reps + (i % n if reps > 1 else 0) for i in range(len(base) * n)]
        return futures, slots

    def _choice(self, c: Completion, stops: Sequence[str], echo: str = "") -> _Choice:
        text, stopped = _apply_stop(c.text, stops)
        tokens = self.engine.count_tokens(text) if stopped else c.tokens
        reason = "stop" if stopped or c.stop_reason in ("eos", "stop") else "length"
        return _Choice(echo + text, reason, tokens)

    @staticmethod
    def _engine_error(exc: BaseException) -> ApiError:
        if isinstance(exc, ApiError):
            return exc
        if isinstance(exc, ValueError):
            return ApiError(400, f"Invalid request: {exc}")
        if isinstance(exc, BatcherClosed):
            return ApiError(503, "The server is shutting down.", type_="server_error", code="unavailable")
        log.error("engine failed: %r", exc, exc_info=exc)
        return ApiError(500, "The model failed to produce a completion.", type_="server_error")

    async def _gather(self, request: Request, futures: list[Future]) -> list[Completion] | None:
        """All results in order, or None when the client went away (the work is cancelled)."""
        waiter = asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        watcher = asyncio.ensure_future(_wait_disconnect(request.receive))
        try:
            done, _ = await asyncio.wait({waiter, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if waiter not in done:
                log.info("client disconnected; cancelling %d request(s)", len(futures))
                waiter.cancel()
                return None
            return list(waiter.result())
        except Cancelled:
            return None
        except Exception as exc:
            raise self._engine_error(exc) from None
        finally:
            watcher.cancel()
            _cancel_all(futures)  # no-op for finished ones

    async def _usage_prompt_tokens(self, prompts: Sequence[tuple[str, str]]) -> int:
        def count() -> int:
            return sum(len(p) + len(s) for p, s in (self.engine.fit_context(a, b) for a, b in prompts))

        return await asyncio.to_thread(count)

    # -------------------------------------------------------------------------- endpoints
    async def health(self, request: Request) -> Response:
        stats = self.batcher.stats()
        ok = self.batcher.alive
        return _json(
            {
                "status": "ok" if ok else "unavailable",
                "model": self.model_name,
                "pending": stats.pending,
                "requests": stats.requests,
                "batches": stats.batches,
            },
            200 if ok else 503,
        )

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "diffill"}

    async def models(self, request: Request) -> Response:
        return _json({"object": "list", "data": [self._model_card()]})

    async def model(self, request: Request) -> Response:
        self._check_model(request.path_params["model"])
        return _json(self._model_card())

    async def completions(self, request: Request) -> Response:
        req: CompletionRequest = _decode(
            await _read_body(request, self.config.max_body_bytes), CompletionRequest
        )
        self._check_model(req.model)
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if not prompts:
            raise ApiError(400, "prompt must not be an empty list.", param="prompt")
        self._check_n(req.n, len(prompts))
        max_tokens = self._max_tokens(req.max_tokens, self.config.default_max_tokens)
        stops = _stops(req.stop, self.config.max_stop)
        options = self._options(req)
        suffix = req.suffix or ""
        budget = req.time_budget_ms
        futures, slots = self._submit_choices(
            [InfillRequest(p, suffix, max_tokens, options, tuple(stops), budget) for p in prompts],
            req.n,
            request,
        )
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        pairs = [(p, suffix) for p in prompts]

        def choice_body(i: int, ch: _Choice) -> dict[str, Any]:
            return {"index": i, "text": ch.text, "logprobs": None, "finish_reason": ch.finish_reason}

        def echo_of(i: int) -> str:
            return prompts[i // req.n] if req.echo else ""

        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)

            def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> dict[str, Any]:
                body: dict[str, Any] = {
                    "id": rid,
                    "object": "text_completion",
                    "created": created,
                    "model": self.model_name,
                    "choices": choices,
                }
                if usage is not None:
                    body["usage"] = usage
                return body

            return self._stream(
                futures,
                slots,
                stops,
                echo_of,
                lambda i, ch: chunk([choice_body(i, ch)]),
                (lambda u: chunk([], u)) if include_usage else None,
                pairs,
            )

        results = await self._gather(request, futures)
        if results is None:
            return Response(status_code=499)
        choices = [self._choice(results[k], stops, echo_of(i)) for i, k in enumerate(slots)]
        prompt_tokens = await self._usage_prompt_tokens(pairs)
        completion_tokens = sum(ch.tokens for ch in choices)
        return _json(
            {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": self.model_name,
                "choices": [choice_body(i, ch) for i, ch in enumerate(choices)],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )

    async def chat_completions(self, request: Request) -> Response:
        req: ChatRequest = _decode(await _read_body(request, self.config.max_body_bytes), ChatRequest)
        self._check_model(req.model)
        if self.chat_template is None:
            raise ApiError(
                400,
                f"`{self.model_name}` is not an instruct model (its checkpoint has no chat "
                "template); use /v1/completions with prompt and suffix instead.",
                param="model",
                code="not_an_instruct_model",
            )
        if not req.messages:
            raise ApiError(400, "messages must not be empty.", param="messages")
        self._check_n(req.n, 1)
        limit = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        max_tokens = self._max_tokens(
            limit, min(self.config.default_chat_max_tokens, self.config.max_tokens_limit)
        )
        stops = _stops(req.stop, self.config.max_stop)
        options = self._options(req)
        messages = []
        for m in req.messages:
            content = m.content
            if isinstance(content, list):
                content = "".join(p.text or "" for p in content if p.type == "text")
            msg: dict[str, Any] = {"role": m.role, "content": content or ""}
            if m.name:
                msg["name"] = m.name
            messages.append(msg)
        try:
            prompt = self.chat_template.render(messages, add_generation_prompt=True)
        except ChatTemplateError as exc:
            raise ApiError(400, f"The chat template rejected the messages: {exc}", param="messages") from None
        futures, slots = self._submit_choices(
            [InfillRequest(prompt, "", max_tokens, options, stop=tuple(stops))], req.n, request
        )
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        pairs = [(prompt, "")]

        def envelope(obj: str, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> dict:
            body: dict[str, Any] = {
                "id": rid,
                "object": obj,
                "created": created,
                "model": self.model_name,
                "choices": choices,
            }
            if usage is not None:
                body["usage"] = usage
            return body

        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)

            def chunks(i: int, ch: _Choice) -> list[dict[str, Any]]:
                return [
                    envelope(
                        "chat.completion.chunk",
                        [
                            {
                                "index": i,
                                "delta": {"role": "assistant", "content": ""},
                                "logprobs": None,
                                "finish_reason": None,
                            }
                        ],
                    ),
                    envelope(
                        "chat.completion.chunk",
                        [
                            {
                                "index": i,
                                "delta": {"content": ch.text},
                                "logprobs": None,
                                "finish_reason": None,
                            }
                        ],
                    ),
                    envelope(
                        "chat.completion.chunk",
                        [{"index": i, "delta": {}, "logprobs": None, "finish_reason": ch.finish_reason}],
                    ),
                ]

            return self._stream(
                futures,
                slots,
                stops,
                lambda i: "",
                chunks,
                (lambda u: envelope("chat.completion.chunk", [], u)) if include_usage else None,
                pairs,
            )

        results = await self._gather(request, futures)
        if results is None:
            return Response(status_code=499)
        choices = [self._choice(results[k], stops) for k in slots]
        prompt_tokens = await self._usage_prompt_tokens(pairs)
        completion_tokens = sum(ch.tokens for ch in choices)
        return _json(
            envelope(
                "chat.completion",
                [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": ch.text},
                        "logprobs": None,
                        "finish_reason": ch.finish_reason,
                    }
                    for i, ch in enumerate(choices)
                ],
                {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            )
        )

    # -------------------------------------------------------------------------- streaming
    def _stream(
        self,
        futures: list[Future],
        slots: list[int],
        stops: Sequence[str],
        echo_of: Callable[[int], str],
        render: Callable[[int, _Choice], dict[str, Any] | list[dict[str, Any]]],
        usage_chunk: Callable[[dict[str, int]], dict[str, Any]] | None,
        pairs: Sequence[tuple[str, str]],
    ) -> StreamingResponse:
        """Server-sent events: each choice as soon as it is done, then usage (if asked), then [DONE]."""
        choices_of: dict[int, list[int]] = {}
        for i, k in enumerate(slots):
            choices_of.setdefault(k, []).append(i)

        async def events() -> AsyncIterator[bytes]:
            index = {asyncio.wrap_future(f): k for k, f in enumerate(futures)}
            waiting = set(index)
            completion_tokens = 0
            try:
                while waiting:
                    done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                    for fut in sorted(done, key=index.__getitem__):
                        try:
                            result = fut.result()
                        except Cancelled:
                            return
                        except Exception as exc:
                            yield b"data: " + _encoder.encode(self._engine_error(exc).body()) + b"\n\n"
                            yield b"data: [DONE]\n\n"
                            return
                        for i in choices_of[index[fut]]:
                            ch = self._choice(result, stops, echo_of(i))
                            completion_tokens += ch.tokens
                            out = render(i, ch)
                            for item in out if isinstance(out, list) else [out]:
                                yield b"data: " + _encoder.encode(item) + b"\n\n"
                if usage_chunk is not None:
                    prompt_tokens = await self._usage_prompt_tokens(pairs)
                    usage = {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                    }
                    yield b"data: " + _encoder.encode(usage_chunk(usage)) + b"\n\n"
                yield b"data: [DONE]\n\n"
            finally:
                _cancel_all(futures)  # client gone or finished: nothing left should run

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


# ------------------------------------------------------------------------------------ app
def _wrap(handler: Any) -> Any:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as exc:
            return exc.response()

    return endpoint


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    message = {404: f"Unknown path {request.url.path}.", 405: f"Method {request.method} not allowed."}.get(
        status, str(exc.detail)
    )
    code = {404: "not_found", 405: "method_not_allowed"}.get(status)
    return ApiError(status, message, code=code).response()


async def _server_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s", request.url.path, exc_info=exc)
    return ApiError(500, "Internal server error.", type_="server_error").response()


def create_app(
    engine: EngineLike,
    batcher: Batcher,
    config: ServerConfig | None = None,
    chat_template: ChatTemplate | None = None,
) -> ASGIApp:
    """The ASGI app. The caller owns ``batcher`` (and closes it after the server stops)."""
    config = config or ServerConfig()
    api = _Api(engine, batcher, config, chat_template)
    routes = [
        Route("/health", _wrap(api.health), methods=["GET"]),
        Route("/v1/models", _wrap(api.models), methods=["GET"]),
        Route("/v1/models/{model:path}", _wrap(api.model), methods=["GET"]),
        Route("/v1/completions", _wrap(api.completions), methods=["POST"]),
        Route("/v1/chat/completions", _wrap(api.chat_completions), methods=["POST"]),
        *compat_routes(api),  # llama.cpp's /infill, Ollama's /api/generate (http_server/compat.py)
    ]
    app: ASGIApp = Starlette(
        routes=routes, exception_handlers={HTTPException: _http_error, Exception: _server_error}
    )
    if config.api_key:
        app = _BearerAuth(app, config.api_key)
    return app
