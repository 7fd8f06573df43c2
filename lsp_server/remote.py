"""Team mode: fill the middle on a remote OpenAI-compatible server instead of a local model.

Why: a team shares one GPU box (``diffill serve-http``, or several behind a load balancer, or any
inference server whose ``/v1/completions`` accepts ``suffix``), and every editor's language
server talks to it. :class:`RemoteBackend` is a :class:`diffusion_core.interface.Backend`, as the
local engine is -- ``infill_batch`` with the same requests, results and ``Cancelled`` exception --
so the language server cannot tell the two apart.

Cancellation is real: requests run on a private asyncio loop, and a cancel closes the HTTP
connection, which makes a Diffill server drop the request from its batch.

Nothing here imports torch (the engine's value types come from ``diffusion_core.interface``), so
a language server in team mode starts fast and stays small.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Sequence
from typing import Any

import httpx

from diffusion_core.interface import (
    CACHE_SCOPE_HEADER,
    CancelCheck,
    Cancelled,
    Completion,
    InfillRequest,
    SamplingOptions,
    cut_prefix,
    cut_suffix,
)

__all__ = ["RemoteBackend", "RemoteError"]


_POLL_S = 0.01  # how often a waiting caller's cancel check is polled


class RemoteError(RuntimeError):
    """The server could not be reached or answered with an error (``status`` is None for the former)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _base_url(url: str) -> str:
    """Accept ``http://host:8000``, ``.../v1`` or ``.../v1/completions``; return ``.../v1``."""
    base = url.strip().rstrip("/")
    if base.endswith("/completions"):
        base = base[: -len("/completions")]
    return base if base.endswith("/v1") else base + "/v1"


class RemoteBackend:
    """An OpenAI-compatible ``/v1/completions`` client with the engine's ``infill`` interface."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float = 30.0,
        connect_retries: int = 1,
        send_extensions: bool = True,
        max_prefix_tokens: int = 65_536,
        max_suffix_tokens: int = 32_768,
    ) -> None:
        """``model``: the id to ask for (default: the first one the server lists).
        ``send_extensions``: also send Diffill's ``quality`` and ``length`` fields (turn
        off for servers that reject unknown fields).
        The token budgets (counted with :meth:`count_tokens`' estimate) cut the context the way
        the engine cuts it, at line boundaries, to keep request bodies bounded; they are the
        language server's largest settings, so its own cut (same function, same counter) is never
        undone here. The server may cut further to its own budget."""
        self.url = _base_url(url)
        self.api_key = api_key
        self._model = model
        self.timeout = timeout
        self.connect_retries = connect_retries
        self.send_extensions = send_extensions
        self.max_prefix_tokens = max_prefix_tokens
        self.max_suffix_tokens = max_suffix_tokens
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: httpx.AsyncClient | None = None

    # ------------------------------------------------------------------------- Backend
    def count_tokens(self, text: str) -> int:
        """An estimate (the remote tokenizer is not here): about 3 UTF-8 bytes per token, on the
        high side for code, so a context cut to the budget fits the server's."""
        return len(text.encode("utf-8", "surrogatepass")) // 3 + 1

    @property
    def model_id(self) -> str:
        """The model the requests name (asks ``/v1/models`` once when not given)."""
        if self._model is None:
            data = self._call(self._get("/models"), None)
            models = data.get("data") or []
            if not models:
                raise RemoteError(f"{self.url}/models lists no model")
            self._model = str(models[0]["id"])
        return self._model

    def check(self) -> str:
        """Ask ``/v1/models`` now and return the model id the requests will name.

        Why: a bad URL or a rejected key should fail at load time, once, rather than as a silent
        empty result on every keystroke. A server without ``/v1/models`` (404) is accepted when
        ``model`` was given; a given ``model`` the server does not list is an error.
        """
        try:
            data = self._call(self._get("/models"), None)
        except RemoteError as exc:
            if exc.status == 404 and self._model is not None:
                return self._model
            raise
        listed = [str(m.get("id")) for m in data.get("data") or [] if isinstance(m, dict)]
        if self._model is None:
            if not listed:
                raise RemoteError(f"{self.url}/models lists no model")
            self._model = listed[0]
        elif listed and self._model not in listed:
            raise RemoteError(
                f"{self.url} does not serve model {self._model!r} (it lists: {', '.join(listed)})"
            )
        return self._model

    def infill(
        self,
        prefix: str,
        suffix: str = "",
        max_tokens: int = 64,
        options: SamplingOptions | None = None,
        cancel: CancelCheck | None = None,
    ) -> Completion:
        """Same contract as ``Engine.infill``: raises ``Cancelled`` when ``cancel()`` turns True."""
        return self.infill_batch([InfillRequest(prefix, suffix, max_tokens, options)], cancel)[0]

    def infill_batch(
        self, requests: Sequence[InfillRequest], cancel: CancelCheck | None = None
    ) -> list[Completion]:
        """Send the requests concurrently (the server batches them); results in order."""
        if not requests:
            return []
        model = self.model_id

        async def all_of() -> list[Completion]:
            return list(await asyncio.gather(*(self._complete(model, r) for r in requests)))

        return self._call(all_of(), cancel)

    def health(self) -> bool:
        """True when the server answers ``GET /health`` (the root, not under /v1) with 200."""
        root = self.url[: -len("/v1")]
        try:
            self._call(self._get(root + "/health", absolute=True), None)
            return True
        except RemoteError:
            return False

    def close(self) -> None:
        """Close connections and stop the private loop thread."""
        with self._lock:
            loop, thread, client = self._loop, self._thread, self._client
            self._loop = self._thread = self._client = None
        if loop is None:
            return
        if client is not None:
            asyncio.run_coroutine_threadsafe(client.aclose(), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=5)
        loop.close()

    def __enter__(self) -> RemoteBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------- internals
    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="diffill-remote", daemon=True)
                thread.start()
                headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

                async def make() -> httpx.AsyncClient:
                    return httpx.AsyncClient(
                        headers=headers,
                        # an unreachable host fails the load quickly; slow completions may still take long
                        timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
                        transport=httpx.AsyncHTTPTransport(retries=self.connect_retries),
                    )

                self._client = asyncio.run_coroutine_threadsafe(make(), loop).result()
                self._loop, self._thread = loop, thread
            return self._loop

    def _call(self, coro: Any, cancel: CancelCheck | None) -> Any:
        """Run ``coro`` on the private loop; poll ``cancel`` while waiting."""
        loop = self._ensure_loop()
        fut = asyncio.run_coroutine_threadsafe(coro, loop)
        while True:
            try:
                return fut.result(timeout=_POLL_S if cancel is not None else None)
            except concurrent.futures.TimeoutError:
                if cancel is not None and cancel():
                    fut.cancel()  # cancels the task: httpx closes the connection
                    raise Cancelled() from None
            except concurrent.futures.CancelledError:
                raise Cancelled() from None

    async def _request(
        self,
        method: str,
        url: str,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        assert self._client is not None
        try:
            resp = await self._client.request(method, url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise RemoteError(f"{method} {url} failed: {exc!r}") from exc
        if resp.status_code >= 400:
            try:
                message = resp.json()["error"]["message"]
            except Exception:
                message = resp.text[:500]
            raise RemoteError(f"{method} {url}: HTTP {resp.status_code}: {message}", resp.status_code)
        try:
            data = resp.json()
        except ValueError as exc:
            raise RemoteError(f"{method} {url}: the answer is not JSON") from exc
        if not isinstance(data, dict):
            raise RemoteError(f"{method} {url}: unexpected answer {data!r:.200}")
        return data

    def _get(self, path: str, absolute: bool = False) -> Any:
        return self._request("GET", path if absolute else self.url + path)

    def _body(self, model: str, r: InfillRequest) -> dict[str, Any]:
        prefix = cut_prefix(r.prefix, self.max_prefix_tokens, self.count_tokens)
        suffix = cut_suffix(r.suffix, self.max_suffix_tokens, self.count_tokens)
        body: dict[str, Any] = {
            "model": model,
            "prompt": prefix,
            "suffix": suffix,
            "max_tokens": r.max_tokens,
        }
        if r.stop:
            body["stop"] = list(r.stop)
        o = r.options
        if o is not None:
            body["temperature"] = o.temperature
            body["top_p"] = o.top_p
            if o.seed is not None:
                body["seed"] = o.seed
            if self.send_extensions:
                body["quality"] = o.quality
                if o.length != "auto":
                    body["length"] = o.length
        else:
            body["temperature"] = 0.0  # greedy, as the local engine's default
        if self.send_extensions and r.time_budget_ms is not None:
            body["time_budget_ms"] = r.time_budget_ms
        return body

    async def _complete(self, model: str, r: InfillRequest) -> Completion:
        t0 = time.perf_counter()
        body = self._body(model, r)
        # a Diffill server then reuses this session's context K/V across its keystrokes (and
        # lends it to no other client); other servers ignore the header
        headers = {CACHE_SCOPE_HEADER: r.cache_scope} if r.cache_scope else None
        try:
            data = await self._request("POST", self.url + "/completions", body, headers)
        except RemoteError as exc:
            # a server that refuses fields it does not know (OpenAI's own API answers 400,
            # FastAPI-based servers with extra="forbid" 422): Diffill's extensions are the only
            # non-standard fields, so ask again without them, and from now on
            extensions = [k for k in ("quality", "length", "time_budget_ms") if k in body]
            if exc.status not in (400, 422) or not extensions:
                raise
            self.send_extensions = False
            data = await self._request("POST", self.url + "/completions", self._body(model, r), headers)
        try:
            choice = data["choices"][0]
            text = str(choice.get("text") or "")
            finish = choice.get("finish_reason")
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise RemoteError(f"malformed completion answer: {data!r:.300}") from exc
        usage = data.get("usage") or {}
        tokens = usage.get("completion_tokens")
        return Completion(
            text=text,
            tokens=int(tokens) if isinstance(tokens, int) else 0,
            steps=0,  # not reported by the OpenAI API
            latency_ms=(time.perf_counter() - t0) * 1000.0,
            stop_reason="length" if finish == "length" else "eos",
        )
