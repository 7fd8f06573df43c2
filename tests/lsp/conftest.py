"""A real `diffill serve` process driven by pygls' own LanguageClient, from synchronous tests.

The client's event loop runs in a background thread, so one server process (torch import and
model load paid once) can serve a whole test module.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lsprotocol import types
from pygls.lsp.client import LanguageClient

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 60.0


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_fixtures import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("lsp-model") / "tiny")


def plain(value: Any) -> Any:
    """pygls' client turns untyped JSON objects into namedtuples; tests want dicts."""
    if hasattr(value, "_asdict"):
        return {k: plain(v) for k, v in value._asdict().items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


class LspSession:
    """One server subprocess plus a pygls client, usable from synchronous test code."""

    def __init__(
        self, args: list[str], config: dict[str, Any] | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.args = args
        self.config = config or {}
        self.env = env or {}  # extra environment variables for the server process
        self.notifications: list[tuple[str, Any]] = []
        self.stderr = b""
        self.init_result: types.InitializeResult | None = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.client = self.run(self._start())

    # ------------------------------------------------------------------ plumbing
    def run(self, coro: Any, timeout: float = TIMEOUT) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> LanguageClient:
        client = LanguageClient("diffill-tests", "0")
        session = self

        @client.feature(types.WORKSPACE_CONFIGURATION)
        def configuration(params: types.ConfigurationParams) -> list[Any]:
            return [session.config for _ in params.items]

        @client.feature(types.WINDOW_WORK_DONE_PROGRESS_CREATE)
        def progress_create(params: types.WorkDoneProgressCreateParams) -> None:
            session.notifications.append(("create", params.token))

        for method in (types.PROGRESS, types.WINDOW_SHOW_MESSAGE, types.WINDOW_LOG_MESSAGE, "diffill/status"):
            client.feature(method)(self._recorder(method))

        env = dict(os.environ, PYTHONPATH=str(REPO), **self.env)
        await client.start_io(
            sys.executable, "-m", "diffill.cli", "serve", *self.args, cwd=str(REPO), env=env
        )
        return client

    def _recorder(self, method: str) -> Callable[[Any], None]:
        def record(params: Any) -> None:
            self.notifications.append((method, params))

        return record

    @property
    def pid(self) -> int:
        return self.client._server.pid

    def request(self, method: str, params: Any = None, timeout: float = TIMEOUT) -> Any:
        async def go() -> Any:
            return await asyncio.wait_for(self.client.protocol.send_request_async(method, params), timeout)

        return plain(self.run(go(), timeout + 5))

    def notify(self, method: str, params: Any = None) -> None:
        self.loop.call_soon_threadsafe(self.client.protocol.notify, method, params)

    def send_raw(self, body: bytes) -> None:
        """Write a framed message straight to the server's stdin (for malformed input)."""
        stdin = self.client._server.stdin

        def write() -> None:
            stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)

        self.loop.call_soon_threadsafe(write)

    def write_bytes(self, data: bytes) -> None:
        """Write bytes as they are (no framing added) to the server's stdin."""
        stdin = self.client._server.stdin
        self.loop.call_soon_threadsafe(stdin.write, data)

    def raw_request(self, body: bytes, msg_id: str | int | None, timeout: float = 15.0) -> Any:
        """Send hand-written bytes as a request and return the answer to ``msg_id`` (a result, or
        the JsonRpcException the client raised for an error answer)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()

        def register_and_write() -> None:
            self.client.protocol._request_futures[msg_id] = fut
            self.client._server.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)

        self.loop.call_soon_threadsafe(register_and_write)
        try:
            return plain(fut.result(timeout))
        except Exception as exc:  # noqa: BLE001 - error answers are what these tests look at
            return exc

    # ------------------------------------------------------------------ LSP helpers
    def initialize(
        self,
        init_options: dict[str, Any] | None = None,
        encodings: list[str] | None = None,
        progress: bool = True,
        configuration: bool = True,
    ) -> types.InitializeResult:
        caps = types.ClientCapabilities(
            general=types.GeneralClientCapabilities(position_encodings=encodings) if encodings else None,
            window=types.WindowClientCapabilities(work_done_progress=progress),
            workspace=types.WorkspaceClientCapabilities(configuration=configuration),
        )
        params = types.InitializeParams(
            capabilities=caps, process_id=os.getpid(), initialization_options=init_options
        )
        result = self.run(self.client.initialize_async(params))
        self.client.initialized(types.InitializedParams())
        return result

    def stats(self) -> dict[str, Any]:
        return self.request("diffill/stats", {})

    def wait_state(self, *states: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            st = self.stats()
            if st["state"] in states:
                return st
            if time.monotonic() > deadline:
                raise AssertionError(f"server state {st['state']!r}, wanted {states}: {st}")
            time.sleep(0.05)

    def wait_notification(
        self, method: str, pred: Callable[[Any], bool] = lambda p: True, timeout: float = TIMEOUT
    ) -> Any:
        """The first notification of ``method`` whose params satisfy ``pred`` (waits for it)."""
        deadline = time.monotonic() + timeout
        while True:
            for m, p in list(self.notifications):
                if m == method and pred(p):
                    return p
            if time.monotonic() > deadline:
                raise AssertionError(f"no {method} notification: {self.notifications}")
            time.sleep(0.02)

    def open(self, uri: str, text: str, language: str = "python", version: int = 1) -> None:
        self.client.text_document_did_open(
            types.DidOpenTextDocumentParams(
                text_document=types.TextDocumentItem(
                    uri=uri, language_id=language, version=version, text=text
                )
            )
        )

    def change(self, uri: str, version: int, start: tuple[int, int], end: tuple[int, int], text: str) -> None:
        self.client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
                content_changes=[
                    types.TextDocumentContentChangePartial(
                        range=types.Range(types.Position(*start), types.Position(*end)), text=text
                    )
                ],
            )
        )

    def inline(
        self, uri: str, line: int, character: int, invoked: bool = True, timeout: float = TIMEOUT
    ) -> types.InlineCompletionList:
        kinds = types.InlineCompletionTriggerKind
        kind = kinds.Invoked if invoked else kinds.Automatic
        params = types.InlineCompletionParams(
            context=types.InlineCompletionContext(trigger_kind=kind),
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line, character),
        )
        return self.run(self.client.text_document_inline_completion_async(params), timeout)

    def document(self, uri: str) -> dict[str, Any] | None:
        return self.request("diffill/documentState", {"uri": uri})

    def rss_kb(self) -> int:
        with open(f"/proc/{self.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def close(self) -> int | None:
        """shutdown + exit; returns the server's exit code."""
        try:
            if not self.client.stopped and self.client._server.returncode is None:
                self.run(self.client.shutdown_async(None), 15)
                self.client.exit(None)
                self.run(asyncio.wait_for(self.client._server.wait(), 15), 20)
        except Exception:  # noqa: BLE001 - a dead server is reported by the test that killed it
            pass
        proc = self.client._server
        if proc.returncode is None:
            proc.kill()
            self.run(proc.wait(), 10)
        try:
            self.run(self.client.stop(), 10)
        except Exception:  # noqa: BLE001
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        return proc.returncode


@pytest.fixture(scope="module")
def lsp(tiny_model: Path) -> Iterator[LspSession]:
    """A ready server on the tiny model (module-scoped: one process per test module)."""
    s = LspSession(["--model", str(tiny_model)])
    options = {"diffill": {"debounceMs": 0, "prefetch": False, "maxTokens": 16}}
    s.init_result = s.initialize(init_options=options)
    # the status notification goes out after the progress end: both have arrived after this
    s.wait_notification("diffill/status", lambda p: plain(p)["state"] == "ready")
    yield s
    s.close()
