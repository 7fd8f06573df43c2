"""What editors and broken clients do to a server: bad input, no model, other encodings, TCP."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

from lsprotocol import types
from pygls.lsp.client import LanguageClient

from .conftest import REPO, LspSession, plain

INLINE = types.TEXT_DOCUMENT_INLINE_COMPLETION


def body(msg_id: object, method: str, params: object) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params}).encode()


def inline_params(uri: str, line: object, character: object) -> dict:
    return {
        "context": {"triggerKind": 1},
        "textDocument": {"uri": uri},
        "position": {"line": line, "character": character},
    }


def code(answer: object) -> int | None:
    return getattr(answer, "code", None)


def test_malformed_input_battery_each_answered_and_the_server_keeps_working(tiny_model: Path):
    lsp = LspSession(["--model", str(tiny_model)])
    try:
        uri = "file:///work/battery.py"
        # before initialize: an error for requests, notifications dropped
        assert code(lsp.raw_request(body(1, INLINE, inline_params(uri, 0, 0)), 1)) == -32002
        lsp.send_raw(
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "method": "textDocument/didOpen",
                    "params": {
                        "textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": "early"}
                    },
                }
            ).encode()
        )
        result = lsp.initialize(
            init_options={"debounceMs": 0, "maxTokens": 8, "prefetch": False}, encodings=["utf-8", "utf-16"]
        )
        assert result.capabilities.position_encoding == "utf-8"
        assert lsp.document(uri) is None
        lsp.wait_state("ready")

        # utf-8 columns: the emoji is four code units
        lsp.open(uri, "x = '😀'\n")
        lsp.change(uri, 2, (0, 9), (0, 9), "!")
        assert lsp.document(uri)["text"] == "x = '😀!'\n"

        def still_works() -> None:
            assert isinstance(lsp.inline(uri, 1, 0), types.InlineCompletionList)

        battery = [
            # unknown document → empty result
            (body(10, INLINE, inline_params("file:///nope.py", 0, 0)), 10, {"items": []}),
            # position past the end → clamped, a list
            (body(11, INLINE, inline_params(uri, 999, 999)), 11, "list"),
            # negative numbers, wrong types, missing params → InvalidParams
            (body(12, INLINE, inline_params(uri, -1, 0)), 12, -32602),
            (body(13, INLINE, inline_params(uri, "one", None)), 13, -32602),
            (body(14, INLINE, {"textDocument": {"uri": 5}}), 14, -32602),
            (json.dumps({"jsonrpc": "2.0", "id": 15, "method": INLINE}).encode(), 15, -32602),
            (body(16, "diffill/documentState", {"uri": 7}), 16, -32602),
            # unknown method → MethodNotFound
            (body(17, "diffill/noSuchThing", {}), 17, -32601),
            # garbage JSON → ParseError with a null id
            (b"{this is not json", None, -32700),
        ]
        for raw, msg_id, expected in battery:
            answer = lsp.raw_request(raw, msg_id)
            if expected == "list":
                assert isinstance(answer, dict) and isinstance(answer["items"], list), answer
            elif isinstance(expected, int):
                assert code(answer) == expected, (raw, answer)
            else:
                assert answer == expected, (raw, answer)
            still_works()
        # notifications that cannot be applied are dropped, the server goes on
        unknown_change = {
            "jsonrpc": "2.0",
            "method": "textDocument/didChange",
            "params": {
                "textDocument": {"uri": "file:///nope.py", "version": 2},
                "contentChanges": [{"text": "x"}],
            },
        }
        for junk in (b"[1, 2, 3]", b'"just a string"', json.dumps(unknown_change).encode()):
            lsp.send_raw(junk)
            still_works()
        # no error popped up in the editor for any of that
        assert not [p for m, p in lsp.notifications if m == types.WINDOW_SHOW_MESSAGE]

        lsp.run(lsp.client.shutdown_async(None))
        after = lsp.raw_request(body(30, INLINE, inline_params(uri, 0, 0)), 30)
        assert code(after) == -32600  # InvalidRequest after shutdown, not silence
        lsp.client.exit(None)
        assert lsp.run(lsp.client._server.wait(), 20) == 0
    finally:
        lsp.close()


def test_model_load_failure_is_shown_once_and_the_server_stays_up(tmp_path: Path, tiny_model: Path):
    missing = tmp_path / "no-such-model"
    lsp = LspSession(["--model", str(missing)])
    try:
        lsp.initialize(init_options={"debounceMs": 0, "prefetch": False})
        st = lsp.wait_state("failed")
        assert "no-such-model" in st["error"]
        lsp.wait_notification("diffill/status", lambda p: plain(p)["state"] == "failed")
        errors = [p for m, p in lsp.notifications if m == types.WINDOW_SHOW_MESSAGE]
        assert len(errors) == 1 and errors[0].type == types.MessageType.Error
        assert "no-such-model" in errors[0].message
        uri = "file:///work/a.py"
        lsp.open(uri, "def f():\n    \n")
        assert list(lsp.inline(uri, 1, 4).items) == []
        assert len([m for m, _ in lsp.notifications if m == types.WINDOW_SHOW_MESSAGE]) == 1
        # fixing the setting loads the model without a restart
        lsp.notify(
            types.WORKSPACE_DID_CHANGE_CONFIGURATION,
            types.DidChangeConfigurationParams(settings={"diffill": {"modelPath": str(tiny_model)}}),
        )
        assert lsp.wait_state("ready")["modelId"] == "diffill-tiny"
    finally:
        assert lsp.close() == 0


def test_a_setting_the_model_cannot_honour_is_shown_once_and_fixing_it_recovers(tiny_model: Path):
    # length "expand" needs a DreamOn checkpoint; the tiny model has no expand token
    lsp = LspSession(["--model", str(tiny_model)])
    try:
        lsp.initialize(init_options={"diffill": {"debounceMs": 0, "prefetch": False, "length": "expand"}})
        lsp.wait_state("ready")
        uri = "file:///work/len.py"
        lsp.open(uri, "def add(a, b):\n    return \n")
        for _ in range(2):
            assert list(lsp.inline(uri, 1, 11).items) == []
        shown = [p for m, p in lsp.notifications if m == types.WINDOW_SHOW_MESSAGE]
        assert len(shown) == 1 and shown[0].type == types.MessageType.Warning
        assert "expand token" in shown[0].message
        lsp.notify(
            types.WORKSPACE_DID_CHANGE_CONFIGURATION,
            types.DidChangeConfigurationParams(settings={"diffill": {"length": "fixed"}}),
        )
        deadline = time.monotonic() + 30
        while lsp.stats()["settings"]["length"] != "fixed" and time.monotonic() < deadline:
            time.sleep(0.05)
        before = lsp.stats()
        assert before["errors"] >= 1
        lsp.inline(uri, 1, 11)  # answered by the model now (the tiny model may well write nothing)
        after = lsp.stats()
        assert after["modelCalls"] > before["modelCalls"] and after["errors"] == before["errors"]
        assert len([m for m, _ in lsp.notifications if m == types.WINDOW_SHOW_MESSAGE]) == 1
    finally:
        assert lsp.close() == 0


def test_server_exits_when_the_editor_process_dies():
    async def main() -> int:
        editor = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(60)")
        env = dict(os.environ, PYTHONPATH=str(REPO))
        client = LanguageClient("watch-test", "0")
        await client.start_io(sys.executable, "-m", "diffill.cli", "serve", "--stdio", cwd=str(REPO), env=env)
        # no `initialized`: the model never starts loading, so this process stays light
        await client.initialize_async(
            types.InitializeParams(capabilities=types.ClientCapabilities(), process_id=editor.pid)
        )
        editor.kill()
        await editor.wait()
        code = await asyncio.wait_for(client._server.wait(), 30)
        await client.stop()
        return code

    assert asyncio.run(main()) == 1


def test_an_invalid_edit_is_reported_and_the_document_resyncs_on_its_full_text(tiny_model: Path):
    """A didChange with a negative position cannot be applied: the user is told, nothing is
    completed from a text that is no longer the editor's, and a full-text change restores it."""
    lsp = LspSession(["--model", str(tiny_model)])
    try:
        lsp.initialize(init_options={"diffill": {"debounceMs": 0, "prefetch": False, "maxTokens": 4}})
        lsp.wait_state("ready")
        uri = "file:///sync.py"
        lsp.open(uri, "def f():\n    return 1\n")
        bad = {
            "jsonrpc": "2.0",
            "method": "textDocument/didChange",
            "params": {
                "textDocument": {"uri": uri, "version": 2},
                "contentChanges": [
                    {"range": {"start": {"line": -1, "character": 0}, "end": {"line": 0, "character": 2}},
                     "text": "zz"}
                ],
            },
        }  # fmt: skip
        lsp.send_raw(json.dumps(bad).encode())
        warning = lsp.wait_notification(types.WINDOW_SHOW_MESSAGE, lambda p: "was invalid" in p.message)
        assert uri in warning.message and warning.type == types.MessageType.Warning
        assert lsp.document(uri)["inSync"] is False
        assert not lsp.inline(uri, 1, 4).items  # nothing from a diverged text
        lsp.change(uri, 3, (1, 11), (1, 12), "2")  # further ranged edits are not applied blindly
        assert lsp.document(uri)["inSync"] is False
        lsp.client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=4),
                content_changes=[
                    types.TextDocumentContentChangeWholeDocument(text="def g():\n    return 3\n")
                ],
            )
        )
        state = lsp.document(uri)
        assert state["inSync"] is True and state["text"] == "def g():\n    return 3\n"
        assert isinstance(lsp.inline(uri, 1, 4), types.InlineCompletionList)
    finally:
        lsp.close()
