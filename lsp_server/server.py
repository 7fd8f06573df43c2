"""pygls wiring: LSP messages in, completer calls out. No completion logic lives here.

Requests the server answers (besides the LSP lifecycle and document sync):

- ``textDocument/inlineCompletion`` (LSP 3.18), even when the client did not advertise it: one
  item with an explicit range (empty at the cursor, or the selected suggestion's range) and the
  ``diffill.accepted`` command, or an empty list;
- ``textDocument/completion``: the same text as one item with a ``textEdit`` (``isIncomplete`` is
  true so the client asks again as the user types, which typed-through answers instantly);
- ``workspace/executeCommand`` ``diffill.accepted`` (arguments: ``[{"id", "uri", "line"}]``);
- ``diffill/stats``: local counters, model state and settings, for a status bar;
- ``diffill/documentState`` ``{"uri"}``: the server's copy of a document (for debugging sync).

Notifications the server sends: ``$/progress`` while the model loads (when the client supports
``window.workDoneProgress``), one ``window/showMessage`` when it fails to load (in team mode: the
server is unreachable or rejects the key) or a setting is invalid, and ``diffill/status``
``{"state", "modelId", "error"}`` whenever the model state changes (``state``: loading | ready |
failed).

Handlers are coroutines, so ``$/cancelRequest`` cancels them; the engine call runs in the worker
thread and polls the request's cancel flag between denoising steps.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Generator
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method

from diffusion_core.interface import QueueFactory

from . import __version__
from .backend import ModelDefaults, make_backend
from .completer import Completer, Suggestion
from .documents import DocumentStore
from .settings import SECTION, Settings, is_for_us, merge_settings
from .stats import ACCEPT_COMMAND, Stats
from .worker import BackendFactory, EngineWorker, LoadFailed

__all__ = ["DiffillProtocol", "DiffillServer", "create_server"]

log = logging.getLogger(__name__)

STATS_REQUEST = "diffill/stats"
DOCUMENT_STATE_REQUEST = "diffill/documentState"
STATUS_NOTIFICATION = "diffill/status"
_CLIENT_TIMEOUT_S = 5.0


class _Malformed:
    """A request whose params did not match the LSP types: answered with InvalidParams."""

    def __init__(self, msg_id: int | str, method: str, error: Exception) -> None:
        self.id = msg_id
        self.method = method
        self.error = error


class _RefusedEdit:
    """A didChange whose params did not validate (a negative position, say): applying nothing
    would leave the server's text different from the editor's, so the document is desynced."""

    def __init__(self, data: dict[str, Any], error: Exception) -> None:
        params = data.get("params") if isinstance(data.get("params"), dict) else {}
        td = params.get("textDocument") if isinstance(params.get("textDocument"), dict) else {}
        self.uri = td.get("uri") if isinstance(td.get("uri"), str) else None
        self.reason = _leaf_message(error.__cause__ or error)


def _leaf_message(exc: BaseException) -> str:
    """The innermost message of a validation error (cattrs nests one group per level)."""
    while getattr(exc, "exceptions", None):
        exc = exc.exceptions[0]  # type: ignore[attr-defined]
    return str(exc) or type(exc).__name__


class DiffillProtocol(LanguageServerProtocol):
    """pygls' protocol with the edges a long-running editor server needs.

    - requests before ``initialize`` get ServerNotInitialized, after ``shutdown`` InvalidRequest
      (pygls would leave the client waiting forever);
    - a request whose params fail validation gets InvalidParams instead of no answer;
    - unparsable JSON gets a ParseError with a null id;
    - documents live in :class:`DocumentStore`, not in pygls' workspace, so each edit is applied once.
    """

    def __init__(self, server: LanguageServer, converter: Any) -> None:
        super().__init__(server, converter)
        self.initialize_seen = False

    def _execute_handler(
        self, msg_id: Any, handler: Any, callback: Any, args: Any = None, kwargs: Any = None
    ) -> None:
        """pygls 2.1 files the future of every notification handler (and of each step of a
        generator handler) under a fresh uuid in ``_request_futures`` and never removes it: ~1 KB
        per keystroke for as long as the server runs. Drop each entry when its future is done."""
        super()._execute_handler(msg_id, handler, callback, args, kwargs)
        future = self._request_futures.get(msg_id)
        if future is not None:

            def forget(done: Any, key: Any = msg_id) -> None:
                if self._request_futures.get(key) is done:
                    del self._request_futures[key]

            future.add_done_callback(forget)

    @lsp_method(types.SHUTDOWN)
    def lsp_shutdown(self, *args: Any) -> Generator:
        """pygls' shutdown, but cancelling over a snapshot of the pending futures: a cancelled
        future's done callback (``forget`` above) removes its entry, which made pygls' own loop
        fail with "dictionary changed size during iteration" and the client's shutdown with an
        internal error."""
        if (handler := self.fm.features.get(types.SHUTDOWN)) is not None:
            yield handler, args, None
        current = self.msg_id
        for msg_id, future in list(self._request_futures.items()):
            if msg_id != current and not future.done():
                future.cancel()
        self._shutdown = True
        return None

    def structure_message(self, data: dict[str, Any]) -> Any:
        try:
            return super().structure_message(data)
        except JsonRpcException as exc:
            msg_id = data.get("id")
            if "method" in data and isinstance(msg_id, (int, str)) and not isinstance(msg_id, bool):
                return _Malformed(msg_id, str(data.get("method")), exc)
            if data.get("method") == types.TEXT_DOCUMENT_DID_CHANGE:
                return _RefusedEdit(data, exc)
            raise

    def handle_message(self, message: Any) -> None:
        if isinstance(message, _RefusedEdit):
            self._server.refuse_edit(message.uri, message.reason)
            return
        if isinstance(message, _Malformed):
            cause = message.error.__cause__ or message.error
            err = JsonRpcInvalidParams(f"Invalid params for {message.method}: {cause}")
            self._send_response(message.id, error=err.to_response_error())
            return
        method = getattr(message, "method", None)
        is_request = method is not None and hasattr(message, "id")
        if method == types.INITIALIZE:
            self.initialize_seen = True
        elif method is not None and method != types.EXIT:
            if not self.initialize_seen:
                if is_request:
                    self._send_response(
                        message.id,
                        error=types.ResponseError(
                            code=types.ErrorCodes.ServerNotInitialized, message="Server not initialized"
                        ),
                    )
                return
            if self._shutdown and is_request:
                self._send_response(
                    message.id,
                    error=types.ResponseError(
                        code=types.ErrorCodes.InvalidRequest, message="Server is shutting down"
                    ),
                )
                return
        super().handle_message(message)

    @lsp_method(types.INITIALIZE)
    def lsp_initialize(self, params: types.InitializeParams) -> Generator:
        result = yield from super().lsp_initialize(params)
        mode = self._server.settings.completion_provider
        inline_client = (
            params.capabilities.text_document is not None
            and params.capabilities.text_document.inline_completion is not None
        )
        if mode == "off" or (mode == "auto" and inline_client):
            result.capabilities.completion_provider = None
        return result

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: types.DidOpenTextDocumentParams) -> Generator:
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_OPEN)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams) -> Generator:
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_CHANGE)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: types.DidCloseTextDocumentParams) -> Generator:
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_CLOSE)) is not None:
            yield handler, (params,), None


class DiffillServer(LanguageServer):
    """The language server: owns the documents, the settings and the engine worker."""

    def __init__(
        self,
        defaults: ModelDefaults | None = None,
        factory: BackendFactory = make_backend,
        worker: EngineWorker | None = None,
        queue: QueueFactory | None = None,
    ) -> None:
        super().__init__(
            "diffill",
            __version__,
            protocol_cls=DiffillProtocol,
            text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
        )
        self.defaults = defaults or ModelDefaults()
        self.settings = Settings()
        self.stats = Stats()
        self.store = DocumentStore()
        # a TCP server's sessions share one worker (one model), each with its own documents
        self.worker = worker or EngineWorker(self.stats, factory, queue=queue)
        self.completer = Completer(
            self.store, self.worker, self.stats, lambda: self.settings, report=self._completion_failed
        )
        self.exit_code: int | None = None
        self.watch_client_process = True  # exit when the editor process is gone (stdio)
        self._tasks: set[asyncio.Task] = set()
        self._loaded_key: tuple | None = None
        self._progress_ids = 0

    # ---------------------------------------------------------------- helpers
    def spawn(self, coro: Any) -> asyncio.Task:
        """Run a background coroutine, keeping a reference so it is not collected mid-flight."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def report_server_error(self, error: Exception, source: Any) -> None:
        """Log instead of popping a message box per malformed message; answer bad JSON."""
        log.warning("protocol error (%s): %s", getattr(source, "__name__", source), error)
        if isinstance(error, (json.JSONDecodeError, UnicodeDecodeError)):
            # a plain dict: the typed message would drop the null id that JSON-RPC requires here
            self.protocol._send_data(
                {
                    "jsonrpc": "2.0",
                    "id": None,
                    "error": {"code": int(types.ErrorCodes.ParseError), "message": f"Parse error: {error}"},
                }
            )

    def refuse_edit(self, uri: str | None, reason: str) -> None:
        """Tell the user an edit could not be applied and stop completing from a text that is
        no longer the editor's; a full-text change or reopening the file brings it back."""
        log.warning("refused didChange for %s: %s", uri, reason)
        if uri is not None and self.store.desync(uri) is not None:
            self.completer.closed(uri)
        self.window_show_message(
            types.ShowMessageParams(
                type=types.MessageType.Warning,
                message=f"Diffill: an edit to {uri or 'a document'} was invalid ({reason}); completions "
                "for it are paused until the editor sends its whole text again (reopen the file).",
            )
        )

    def send_error_dict(self, message: dict[str, Any]) -> None:
        """A raw JSON-RPC error answer (framing faults have no typed message to answer)."""
        self.protocol._send_data(message)

    def start_io(self, stdin: Any = None, stdout: Any = None) -> None:
        """LSP over stdio, read through :mod:`lsp_server.framing` (never deaf after a bad frame)."""
        from pygls.io_ import StdoutWriter

        from . import framing

        self._stop_event = threading.Event()
        stdin = stdin or sys.stdin.buffer
        self.protocol.set_writer(StdoutWriter(stdout or sys.stdout.buffer))
        read_chunk = getattr(stdin, "read1", None) or (lambda n: stdin.read(1))

        async def main() -> None:
            loop = asyncio.get_running_loop()
            reason = await framing.serve(
                lambda: loop.run_in_executor(self.thread_pool, read_chunk, 1 << 16),
                self.protocol,
                self._stop_event.is_set,
                self.send_error_dict,
            )
            log.info("stdio input ended (%s)", reason)

        try:
            asyncio.run(main())
        except BrokenPipeError:
            log.error("the client closed the connection")
        except (KeyboardInterrupt, SystemExit):
            pass

    def model_args(self) -> tuple[str | None, ...]:
        """What :func:`make_backend` gets: ``(model_path, device, dtype, backend_url, api_key,
        remote_model)``; settings win over the ``diffill serve`` flags. In team mode the local
        fields are None (and vice versa), so editing an unused field does not reconnect."""
        s, d = self.settings, self.defaults
        url = s.backend_url or d.backend_url
        if url:
            key = s.backend_api_key or d.api_key or os.environ.get("DIFFILL_API_KEY") or None
            return (None, None, None, url.strip(), key, s.backend_model or None)
        return (s.model_path or d.model_path, s.device or d.device, s.dtype or d.dtype, None, None, None)

    @staticmethod
    def _describe(args: tuple[str | None, ...]) -> str:
        """The model or server named in progress and error messages (never the key)."""
        return f"team server {args[3]}" if args[3] else f"model {args[0] or '(embedded default)'}"

    def apply_settings(self, payload: Any, origin: str) -> None:
        """Merge a client payload, report bad fields once, reload the model if it changed."""
        self.settings, errors = merge_settings(self.settings, payload)
        self.completer.configure(self.settings)
        if errors:
            log.warning("invalid settings from %s: %s", origin, "; ".join(errors))
            self.window_show_message(
                types.ShowMessageParams(
                    type=types.MessageType.Warning,
                    message="Diffill: ignored invalid settings:\n" + "\n".join(errors),
                )
            )
        if self._loaded_key is not None and self.model_args() != self._loaded_key:
            self.spawn(self.load_model())

    def _completion_failed(self, error: str) -> None:
        self.window_show_message(
            types.ShowMessageParams(
                type=types.MessageType.Warning, message=f"Diffill: completion failed: {error}"
            )
        )

    def send_status(self) -> None:
        self.protocol.notify(
            STATUS_NOTIFICATION,
            {"state": self.worker.state, "modelId": self.worker.model_id, "error": self.worker.error},
        )

    async def pull_configuration(self) -> None:
        caps = self.client_capabilities.workspace
        if caps is None or not caps.configuration:
            return
        try:
            params = types.ConfigurationParams(items=[types.ConfigurationItem(section=SECTION)])
            result = await asyncio.wait_for(self.workspace_configuration_async(params), _CLIENT_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - a client that cannot answer keeps the old settings
            log.warning("workspace/configuration failed: %s", exc)
            return
        if result:
            self.apply_settings(result[0], "workspace/configuration")

    async def load_model(self) -> None:
        """Load in the worker thread, with $/progress when the client supports it."""
        args = self._loaded_key = self.model_args()
        if self.worker.ready and self.worker.loaded_args == args:  # a new TCP session, same model
            self.completer.model_changed()
            self.send_status()
            return
        self.worker.start()
        self.worker.state = "loading"
        remote = bool(args[3])
        token = await self._progress_begin(
            ("Connecting to " if remote else "Loading ") + self._describe(args)
        )
        self.send_status()
        self.worker.load_progress = self._reporter(token)
        try:
            model_id = await self.worker.load(*args)
        except LoadFailed as exc:
            if self._loaded_key != args:  # superseded: the newer load reports for itself
                self._progress_end(token, "Superseded by newer settings")
                return
            self._progress_end(token, "Model failed to load")
            if remote:
                message = (
                    f"Diffill: could not use the {self._describe(args)}: {exc}. Completions stay "
                    "off until it answers; check diffill.backendUrl and diffill.backendApiKey."
                )
            else:
                message = (
                    f"Diffill: could not load the model ({args[0] or 'embedded default'}): {exc}. "
                    "Completions stay off until the model loads."
                )
            self.window_show_message(types.ShowMessageParams(type=types.MessageType.Error, message=message))
            self.send_status()  # last: clients (and tests) may take it as "the load is reported"
            return
        if self._loaded_key != args:  # a newer load was requested meanwhile; it reports for itself
            self._progress_end(token, "Superseded by newer settings")
            return
        self.completer.model_changed()
        self._progress_end(token, f"Model ready: {model_id}")
        if remote:  # code leaves this machine: say where it goes
            self.window_show_message(
                types.ShowMessageParams(
                    type=types.MessageType.Info,
                    message=f"Diffill: completions come from the team server {args[3]}; the code "
                    "around your cursor is sent there with each request.",
                )
            )
        self.send_status()

    async def _progress_begin(self, message: str) -> str | None:
        window = self.client_capabilities.window
        if window is None or not window.work_done_progress:
            return None
        self._progress_ids += 1
        token = f"diffill-load-{self._progress_ids}"
        try:
            await asyncio.wait_for(self.work_done_progress.create_async(token), _CLIENT_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - progress is a nicety
            log.info("progress not available: %s", exc)
            return None
        self.work_done_progress.begin(token, types.WorkDoneProgressBegin(title="Diffill", message=message))
        return token

    def _reporter(self, token: str | None) -> Callable[[str], None] | None:
        """Progress messages from the worker thread (a hub download), relayed on the loop."""
        if token is None:
            return None
        loop = asyncio.get_running_loop()

        def report(message: str) -> None:
            loop.call_soon_threadsafe(
                self.work_done_progress.report, token, types.WorkDoneProgressReport(message=message)
            )

        return report

    def _progress_end(self, token: str | None, message: str) -> None:
        if token is not None:
            self.work_done_progress.end(token, types.WorkDoneProgressEnd(message=message))

    def ensure_loading(self) -> None:
        """A client that never sent ``initialized`` still gets a model on its first request."""
        if self._loaded_key is None:
            self.spawn(self.load_model())

    async def watch_parent(self, pid: int) -> None:
        """Exit when the editor that started us is gone (it cannot send exit any more)."""
        while True:
            await asyncio.sleep(3.0)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                log.warning("parent process %d is gone; exiting", pid)
                os._exit(1)
            except PermissionError:
                pass


def _item_command(sug: Suggestion, uri: str) -> types.Command:
    return types.Command(
        title="Diffill: accepted",
        command=ACCEPT_COMMAND,
        arguments=[{"id": sug.id, "uri": uri, "line": sug.end.line}],
    )


def create_server(
    defaults: ModelDefaults | None = None,
    factory: BackendFactory = make_backend,
    worker: EngineWorker | None = None,
    queue: QueueFactory | None = None,
) -> DiffillServer:
    """Build the server with every handler registered (``worker``: share a loaded model;
    ``queue``: the request queue's constructor, ``diffusion_core.batcher.Batcher``, which the
    command line hands in because the server reaches the engine only through the seam)."""
    ls = DiffillServer(defaults, factory, worker, queue)

    @ls.feature(types.INITIALIZE)
    def initialize(params: types.InitializeParams) -> None:
        ls.store.set_encoding(ls.workspace.position_encoding)
        if params.initialization_options is not None:
            ls.apply_settings(params.initialization_options, "initializationOptions")
        if params.process_id and ls.watch_client_process:
            ls.spawn(ls.watch_parent(params.process_id))

    @ls.feature(types.INITIALIZED)
    async def initialized(params: types.InitializedParams) -> None:
        async def startup() -> None:
            await ls.pull_configuration()
            if ls._loaded_key is None:
                await ls.load_model()

        ls.spawn(startup())

    @ls.feature(types.SHUTDOWN)
    def shutdown(params: Any) -> None:
        ls.completer.scheduler.cancel_all()

    @ls.feature(types.EXIT)
    def exit_(params: Any) -> None:
        ls.exit_code = 0 if ls.protocol._shutdown else 1
        ls.worker.stop(timeout=1.0)

    @ls.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    async def did_change_configuration(params: types.DidChangeConfigurationParams) -> None:
        if is_for_us(params.settings):
            ls.apply_settings(params.settings, "workspace/didChangeConfiguration")
        else:
            await ls.pull_configuration()

    @ls.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(params: types.DidOpenTextDocumentParams) -> None:
        td = params.text_document
        ls.store.open(td.uri, td.text, td.language_id, td.version)
        ls.completer.opened(td.uri)

    @ls.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(params: types.DidChangeTextDocumentParams) -> None:
        td = params.text_document
        try:
            doc = ls.store.change(td.uri, td.version, params.content_changes)
        except (ValueError, IndexError) as exc:
            ls.refuse_edit(td.uri, str(exc))
            return
        if doc is None:
            log.warning("didChange for a document that is not open: %s", params.text_document.uri)

    @ls.feature(types.TEXT_DOCUMENT_DID_SAVE)
    def did_save(params: types.DidSaveTextDocumentParams) -> None:
        ls.completer.saved(params.text_document.uri)

    @ls.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(params: types.DidCloseTextDocumentParams) -> None:
        ls.store.close(params.text_document.uri)
        ls.completer.closed(params.text_document.uri)

    @ls.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(params: types.InlineCompletionParams) -> types.InlineCompletionList:
        ls.ensure_loading()
        uri = params.text_document.uri
        sug = await ls.completer.complete(
            uri,
            params.position,
            params.context.trigger_kind == types.InlineCompletionTriggerKind.Invoked,
            params.context.selected_completion_info,
        )
        if sug is None:
            return types.InlineCompletionList(items=[])
        item = types.InlineCompletionItem(
            insert_text=sug.text, range=types.Range(sug.start, sug.end), command=_item_command(sug, uri)
        )
        return types.InlineCompletionList(items=[item])

    @ls.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(resolve_provider=False))
    async def completion(params: types.CompletionParams) -> types.CompletionList:
        ls.ensure_loading()
        uri = params.text_document.uri
        invoked = params.context is None or params.context.trigger_kind == types.CompletionTriggerKind.Invoked
        sug = await ls.completer.complete(uri, params.position, invoked)
        if sug is None:
            return types.CompletionList(is_incomplete=True, items=[])
        first = next((ln for ln in sug.text.splitlines() if ln.strip()), sug.text).strip()
        doc = ls.store.get(uri)
        lang = doc.language_id if doc is not None else ""
        item = types.CompletionItem(
            label=first if len(first) <= 60 else first[:57] + "...",
            kind=types.CompletionItemKind.Text,
            detail="Diffill",
            documentation=types.MarkupContent(
                kind=types.MarkupKind.Markdown, value=f"```{lang}\n{sug.text}\n```"
            ),
            sort_text="0",
            preselect=True,
            insert_text_format=types.InsertTextFormat.PlainText,
            insert_text_mode=types.InsertTextMode.AsIs,
            text_edit=types.TextEdit(range=types.Range(sug.start, sug.end), new_text=sug.text),
            command=_item_command(sug, uri),
        )
        return types.CompletionList(is_incomplete=True, items=[item])

    @ls.command(ACCEPT_COMMAND)
    def accepted(*args: Any) -> None:
        info = args[0] if args and isinstance(args[0], dict) else {}
        line = info.get("line")
        ls.completer.accepted(
            info.get("uri") if isinstance(info.get("uri"), str) else None,
            line if isinstance(line, int) else None,
        )

    @ls.feature(STATS_REQUEST)
    def stats(params: Any) -> dict[str, Any]:
        return {
            **ls.stats.snapshot(),
            "state": ls.worker.state,
            "modelId": ls.worker.model_id,
            "error": ls.worker.error,
            "cacheEntries": len(ls.completer.cache),
            "openDocuments": len(ls.store),
            "positionEncoding": ls.store.encoding,
            "settings": ls.settings.to_json(),  # the API key masked
            "engine": ls.worker.backend_stats(),
        }

    @ls.feature(DOCUMENT_STATE_REQUEST)
    def document_state(params: Any) -> dict[str, Any] | None:
        uri = params.get("uri") if isinstance(params, dict) else getattr(params, "uri", None)
        if not isinstance(uri, str):
            raise JsonRpcInvalidParams('expected {"uri": string}')
        doc = ls.store.get(uri)
        if doc is None:
            return None
        return {
            "uri": doc.uri,
            "version": doc.version,
            "languageId": doc.language_id,
            "lineCount": doc.line_count,
            "inSync": doc.in_sync,
            "text": doc.text,
        }

    return ls
