"""`diffill serve` as a real subprocess over stdio, driven by pygls' LanguageClient, tiny model."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lsprotocol import types

from .conftest import LspSession, plain
from .test_documents import ALPHABET, ref_lines, ref_offset

URIS = (f"file:///work/doc{i}.py" for i in itertools.count())

# contexts where a completion can be offered (end of line / indented empty line)
CANDIDATES = [
    ("def add(a, b):\n    \n", (1, 4)),
    ("import os\n\ndef main():\n    path = \n", (3, 11)),
    ("class Stack:\n    def push(self, item):\n        \n", (2, 8)),
    ("for i in range(10):\n    \n", (1, 4)),
    ("x = 1\ny = \n", (1, 4)),
]


def first_shown(lsp: LspSession) -> tuple[str, tuple[int, int], types.InlineCompletionItem]:
    """Open candidate documents until the (random-weight) model offers a non-empty item."""
    for text, pos in CANDIDATES:
        uri = next(URIS)
        lsp.open(uri, text)
        res = lsp.inline(uri, *pos)
        # two characters to type on the same line, and something left to offer after them
        text = res.items[0].insert_text if res.items else ""
        if len(text) >= 4 and not set("\r\n") & set(text[:2]):
            return uri, pos, res.items[0]
    pytest.fail("the tiny model offered nothing in any candidate context")


def test_capabilities_progress_and_model_ready(lsp: LspSession):
    caps = lsp.init_result.capabilities
    assert caps.inline_completion_provider is not None
    assert caps.completion_provider is not None  # this client has no inline completion support
    assert caps.text_document_sync.change == types.TextDocumentSyncKind.Incremental
    assert list(caps.execute_command_provider.commands) == ["diffill.accepted"]
    st_ = lsp.stats()
    assert st_["state"] == "ready" and st_["modelId"] == "diffill-tiny"
    assert st_["positionEncoding"] == "utf-16"
    kinds = [p.value["kind"] for m, p in lsp.notifications if m == types.PROGRESS]
    assert kinds[0] == "begin" and kinds[-1] == "end"
    assert ("diffill/status", "ready") in [
        (m, plain(p)["state"]) for m, p in lsp.notifications if m == "diffill/status"
    ]


def test_open_change_complete_accept(lsp: LspSession):
    uri = next(URIS)
    lsp.open(uri, "def greet(name):\n    return name\n")
    # incremental edits: rename the parameter, then start a new line inside the function
    lsp.change(uri, 2, (0, 10), (0, 14), "person")
    lsp.change(uri, 3, (1, 11), (1, 15), "person")
    lsp.change(uri, 4, (1, 17), (1, 17), "\n    ")
    assert lsp.document(uri)["text"] == "def greet(person):\n    return person\n    \n"
    assert isinstance(lsp.inline(uri, 2, 4), types.InlineCompletionList)
    # a place where the (random-weight) model does offer text: the items' shape, not just types
    uri, (line, col), item = first_shown(lsp)
    at = types.Range(types.Position(line, col), types.Position(line, col))
    assert item.insert_text.strip() and item.range == at
    assert item.command.command == "diffill.accepted"
    # the completion fallback: one item carrying the same text as an edit at the cursor
    comp = lsp.run(
        lsp.client.text_document_completion_async(
            types.CompletionParams(
                text_document=types.TextDocumentIdentifier(uri), position=types.Position(line, col)
            )
        )
    )
    assert comp.is_incomplete is True
    assert [i.text_edit.new_text for i in comp.items] == [item.insert_text]
    assert comp.items[0].text_edit.range == at
    assert comp.items[0].insert_text_mode == types.InsertTextMode.AsIs
    before = lsp.stats()["accepted"]
    lsp.run(
        lsp.client.workspace_execute_command_async(
            types.ExecuteCommandParams(
                command="diffill.accepted", arguments=[{"id": "1", "uri": uri, "line": line}]
            )
        )
    )
    assert lsp.stats()["accepted"] == before + 1


def test_cache_hit_and_typed_through_make_no_model_call(lsp: LspSession):
    uri, (line, col), item = first_shown(lsp)
    calls = lsp.stats()["modelCalls"]
    again = lsp.inline(uri, line, col)
    assert again.items[0].insert_text == item.insert_text
    # type the first two characters of the ghost text: the rest comes back at once
    typed = item.insert_text[:2]
    lsp.change(uri, 2, (line, col), (line, col), typed)
    rest = lsp.inline(uri, line, col + len(typed.encode("utf-16-le")) // 2, invoked=False)
    st_ = lsp.stats()
    assert st_["modelCalls"] == calls
    assert st_["cacheHits"] >= 1 and st_["typedThroughHits"] >= 1
    if item.insert_text[2:].strip():
        assert rest.items[0].insert_text == item.insert_text[2:]


def test_prefetch_makes_accept_then_continue_a_cache_hit(lsp: LspSession):
    lsp.notify(
        types.WORKSPACE_DID_CHANGE_CONFIGURATION,
        types.DidChangeConfigurationParams(settings={"diffill": {"prefetch": True}}),
    )
    try:
        uri, (line, col), item = first_shown(lsp)
        deadline = 200
        while lsp.stats()["prefetches"] < 1 and deadline:
            lsp.run(asyncio.sleep(0.05))
            deadline -= 1
        before = lsp.stats()
        lsp.change(uri, 2, (line, col), (line, col), item.insert_text)  # the editor applies the item
        end = lsp.document(uri)["text"]
        lines = ref_lines(end)
        # the cursor is now at the end of the inserted text
        cut = end.index(item.insert_text) + len(item.insert_text)
        row = max(i for i, (start, _) in enumerate(lines) if start <= cut)
        char = len(end[lines[row][0] : cut].encode("utf-16-le")) // 2
        lsp.inline(uri, row, char, invoked=False)
        after = lsp.stats()
        # answered from the prefetched entry (the next prefetch may already be running: that is the point)
        assert after["prefetchHits"] == before["prefetchHits"] + 1
        assert after["cacheHits"] == before["cacheHits"] + 1
    finally:
        lsp.notify(
            types.WORKSPACE_DID_CHANGE_CONFIGURATION,
            types.DidChangeConfigurationParams(settings={"diffill": {"prefetch": False}}),
        )


def test_cancel_request_stops_the_model_between_steps(lsp: LspSession):
    lsp.notify(
        types.WORKSPACE_DID_CHANGE_CONFIGURATION,
        types.DidChangeConfigurationParams(settings={"diffill": {"maxTokens": 128, "quality": 1.0}}),
    )
    try:
        uri = next(URIS)
        lsp.open(uri, "def long_function(a, b, c):\n" * 40 + "    \n")
        before = lsp.stats()
        params = types.InlineCompletionParams(
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
            text_document=types.TextDocumentIdentifier(uri),
            position=types.Position(40, 4),
        )

        async def go() -> Exception | object:
            proto = lsp.client.protocol
            fut = asyncio.wrap_future(
                proto.send_request(types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id="cancel-me")
            )
            while True:  # wait until the model is running, then cancel
                st_ = plain(await proto.send_request_async("diffill/stats", {}))
                if st_["modelCalls"] > before["modelCalls"]:
                    break
            proto.notify(types.CANCEL_REQUEST, types.CancelParams(id="cancel-me"))
            try:
                return await asyncio.wait_for(fut, 30)
            except Exception as exc:  # noqa: BLE001
                return exc

        outcome = lsp.run(go())
        assert getattr(outcome, "code", None) == types.LSPErrorCodes.RequestCancelled, outcome
        for _ in range(200):
            if lsp.stats()["cancelled"] > before["cancelled"]:
                break
            lsp.run(asyncio.sleep(0.02))
        assert lsp.stats()["cancelled"] == before["cancelled"] + 1
        assert lsp.document(uri)["version"] == 1  # and the server still answers
    finally:
        lsp.notify(
            types.WORKSPACE_DID_CHANGE_CONFIGURATION,
            types.DidChangeConfigurationParams(settings={"diffill": {"maxTokens": 16, "quality": 0.5}}),
        )


def test_bad_settings_are_reported_per_field_and_good_ones_apply(lsp: LspSession):
    seen = len(lsp.notifications)
    lsp.notify(
        types.WORKSPACE_DID_CHANGE_CONFIGURATION,
        types.DidChangeConfigurationParams(
            settings={"diffill": {"maxTokens": "lots", "quality": 3, "debounce": 5, "maxLines": 4}}
        ),
    )
    cfg = lsp.stats()["settings"]
    assert cfg["maxLines"] == 4 and cfg["maxTokens"] == 16 and cfg["quality"] == 0.5
    msgs = [p for m, p in lsp.notifications[seen:] if m == types.WINDOW_SHOW_MESSAGE]
    assert len(msgs) == 1 and msgs[0].type == types.MessageType.Warning
    text = msgs[0].message
    assert "diffill.maxTokens" in text and "diffill.quality" in text and "diffill.debounce:" in text


def test_model_path_change_reloads(lsp: LspSession, tmp_path: Path, tiny_model: Path):
    from model_fixtures import make_tiny_model_dir

    other = make_tiny_model_dir(tmp_path / "other", model_id="diffill-tiny-b", seed=1)
    try:
        lsp.notify(
            types.WORKSPACE_DID_CHANGE_CONFIGURATION,
            types.DidChangeConfigurationParams(settings={"diffill": {"modelPath": str(other)}}),
        )
        for _ in range(400):
            st_ = lsp.stats()
            if st_["modelId"] == "diffill-tiny-b" and st_["state"] == "ready":
                break
            lsp.run(asyncio.sleep(0.05))
        assert (st_["state"], st_["modelId"]) == ("ready", "diffill-tiny-b")
        assert st_["cacheEntries"] == 0  # the old model's answers are gone
    finally:
        lsp.notify(
            types.WORKSPACE_DID_CHANGE_CONFIGURATION,
            types.DidChangeConfigurationParams(settings={"diffill": {"modelPath": str(tiny_model)}}),
        )
        for _ in range(400):
            st_ = lsp.stats()
            if st_["modelId"] == "diffill-tiny" and st_["state"] == "ready":
                break
            lsp.run(asyncio.sleep(0.05))


edit_pos = st.tuples(st.integers(0, 5), st.integers(0, 10))


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    initial=st.text(ALPHABET, max_size=30),
    edits=st.lists(st.tuples(edit_pos, edit_pos, st.text(ALPHABET, max_size=6)), max_size=8),
    probe=edit_pos,
)
def test_fuzzed_incremental_edits_keep_the_server_document_exact(lsp: LspSession, initial, edits, probe):
    uri = next(URIS)
    lsp.open(uri, initial)
    ref = initial
    for version, ((sl, sc), (el, ec), new) in enumerate(edits, start=2):
        a, b = sorted((ref_offset(ref, sl, sc, "utf-16"), ref_offset(ref, el, ec, "utf-16")))
        ref = ref[:a] + new + ref[b:]
        lsp.change(uri, version, (sl, sc), (el, ec), new)
    assert lsp.document(uri)["text"] == ref
    res = lsp.inline(uri, *probe)  # anywhere, even past the end: a list, never a crash
    assert isinstance(res, types.InlineCompletionList)
    lsp.client.text_document_did_close(types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(uri)))


def test_soak_thousands_of_requests_with_bounded_memory(lsp: LspSession):
    uri = next(URIS)
    lsp.open(uri, "def f(x):\n    y = x\n    \n")
    lsp.inline(uri, 2, 4)

    async def burst(n: int) -> None:
        proto = lsp.client.protocol
        reqs = []
        for i in range(n):
            params = types.InlineCompletionParams(
                context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
                text_document=types.TextDocumentIdentifier(uri),
                position=types.Position(2, 4),
            )
            reqs.append(proto.send_request_async(types.TEXT_DOCUMENT_INLINE_COMPLETION, params))
            if i % 10 == 0:
                reqs.append(proto.send_request_async("diffill/stats", {}))
        await asyncio.gather(*reqs)

    lsp.run(burst(300))
    base = lsp.rss_kb()
    for _ in range(8):
        lsp.run(burst(300), timeout=120)
    grown_mb = (lsp.rss_kb() - base) / 1024
    print(f"soak: base RSS {base / 1024:.0f} MB, growth {grown_mb:.1f} MB over 2400 requests")
    st_ = lsp.stats()
    assert st_["requests"] >= 2700 and st_["errors"] == 0
    assert grown_mb < 40, f"RSS grew {grown_mb:.1f} MB over 2400 requests"
