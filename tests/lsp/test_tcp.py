"""`diffill serve --tcp`: a per-start token, one editor at a time, each session its own."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import stat
import sys
from pathlib import Path

import pytest
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.lsp.client import LanguageClient

from .conftest import REPO, plain

URI = "file:///secret/project.py"
TEXT = "API_KEY = 'hunter2'\n\ndef add(a, b):\n    return a + b\n"


class TcpServer:
    def __init__(self, proc: asyncio.subprocess.Process, port: int, token_file: Path) -> None:
        self.proc, self.port, self.token_file = proc, port, token_file

    @property
    def token(self) -> str:
        return self.token_file.read_text().strip()


async def start(
    tiny_model: Path, tmp_path: Path, *extra: str, env: dict[str, str] | None = None
) -> TcpServer:
    environ = dict(os.environ, PYTHONPATH=str(REPO), XDG_RUNTIME_DIR=str(tmp_path / "run"), **(env or {}))
    (tmp_path / "run").mkdir(exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "diffill.cli",
        "serve",
        "--tcp",
        "0",
        "--model",
        str(tiny_model),
        *extra,
        cwd=str(REPO),
        env=environ,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    port = token_file = None
    while port is None or token_file is None:
        line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
        assert line, "server exited before listening"
        if m := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
            port = int(m.group(1))
        if m := re.search(r"token file (\S+)", line):
            token_file = Path(m.group(1))
    return TcpServer(proc, port, token_file)


async def stop(server: TcpServer) -> None:
    if server.proc.returncode is None:
        server.proc.kill()
        await server.proc.wait()


async def client_for(server: TcpServer, token: str | None) -> tuple[LanguageClient, types.InitializeResult]:
    client = LanguageClient("tcp-test", "0")
    await client.start_tcp("127.0.0.1", server.port)
    opts = {"token": token, "diffill": {"debounceMs": 0, "prefetch": False}} if token else None
    caps = types.ClientCapabilities(
        text_document=types.TextDocumentClientCapabilities(
            inline_completion=types.InlineCompletionClientCapabilities()
        )
    )
    res = await asyncio.wait_for(
        client.initialize_async(types.InitializeParams(capabilities=caps, initialization_options=opts)), 120
    )
    client.initialized(types.InitializedParams())
    return client, res


async def raw_exchange(port: int, data: bytes, timeout: float = 30.0) -> bytes:
    """Send bytes, return whatever comes back until the server closes (or the timeout)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), timeout):
            out += chunk
    except asyncio.TimeoutError:
        out += b"<still open>"
    except ConnectionResetError:  # closed with our bytes unread: refused all the same
        pass
    writer.close()
    return out


def frame(obj: dict) -> bytes:
    body = json.dumps(obj).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def test_token_file_is_owner_only_and_the_session_speaks_lsp(tiny_model: Path, tmp_path: Path) -> None:
    async def main() -> int:
        server = await start(tiny_model, tmp_path)
        try:
            mode = stat.S_IMODE(server.token_file.stat().st_mode)
            assert mode == 0o600 and len(server.token) >= 32
            client, res = await client_for(server, server.token)
            assert res.capabilities.inline_completion_provider is not None
            assert res.capabilities.completion_provider is None
            await client.shutdown_async(None)
            client.exit(None)
            return await asyncio.wait_for(server.proc.wait(), 60)
        finally:
            await stop(server)

    assert asyncio.run(main()) == 0


def test_wrong_token_no_token_and_non_lsp_bytes_are_refused(tiny_model: Path, tmp_path: Path) -> None:
    async def main() -> None:
        server = await start(tiny_model, tmp_path)
        try:
            with pytest.raises(JsonRpcException, match="Unauthorized"):
                await client_for(server, "x" * 40)
            with pytest.raises(JsonRpcException, match="Unauthorized"):
                await client_for(server, None)
            # any other first message: refused before it is handled
            init = {"jsonrpc": "2.0", "id": 1, "method": "diffill/documentState", "params": {"uri": URI}}
            answer = await raw_exchange(server.port, frame(init))
            assert b"Unauthorized" in answer and b"<still open>" not in answer
            # a browser's no-cors POST is not an LSP header: the connection is closed, unanswered
            post = (
                b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
                b"Content-Length: 2\r\n\r\n{}"
            )
            assert await raw_exchange(server.port, post) == b""
            # the server still serves its editor
            client, _ = await client_for(server, server.token)
            await client.shutdown_async(None)
            client.exit(None)
            assert await asyncio.wait_for(server.proc.wait(), 60) == 0
        finally:
            await stop(server)

    asyncio.run(main())


def test_two_clients_are_isolated(tiny_model: Path, tmp_path: Path) -> None:
    """While one editor is connected a second connection (even with the token) is closed; after
    the first disconnects, the next session sees none of its documents or settings."""

    async def main() -> None:
        server = await start(tiny_model, tmp_path)
        try:
            first, _ = await client_for(server, server.token)
            first.text_document_did_open(
                types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(URI, "python", 1, TEXT))
            )
            first.workspace_did_change_configuration(
                types.DidChangeConfigurationParams(settings={"diffill": {"maxLines": 3}})
            )
            state = plain(await first.protocol.send_request_async("diffill/documentState", {"uri": URI}))
            assert state["text"] == TEXT
            # a second editor, token and all, while the first is connected: closed, unanswered
            init = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {"capabilities": {}, "initializationOptions": {"token": server.token}},
            }
            assert await raw_exchange(server.port, frame(init)) == b""
            assert (
                plain(await first.protocol.send_request_async("diffill/documentState", {"uri": URI}))["text"]
                == TEXT
            )
            first.protocol.writer.close()  # the editor goes away without exit: the server keeps serving
            await asyncio.wait_for(first.stop(), 60)
            second, _ = await client_for(server, server.token)
            assert await second.protocol.send_request_async("diffill/documentState", {"uri": URI}) is None
            stats = plain(await second.protocol.send_request_async("diffill/stats", {}))
            assert stats["openDocuments"] == 0 and stats["settings"]["maxLines"] != 3
            await second.shutdown_async(None)
            second.exit(None)
            assert await asyncio.wait_for(server.proc.wait(), 60) == 0
        finally:
            await stop(server)

    asyncio.run(main())


def test_an_empty_token_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    async def main() -> tuple[int, bytes]:
        env = dict(os.environ, PYTHONPATH=str(REPO), DIFFILL_TCP_TOKEN="")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "diffill.cli",
            "serve",
            "--tcp",
            "0",
            "--model",
            str(tiny_model),
            cwd=str(REPO),
            env=env,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode, err

    code, err = asyncio.run(main())
    assert code == 2 and b"DIFFILL_TCP_TOKEN must hold at least 16 characters" in err


def test_binding_beyond_loopback_warns(tiny_model: Path, tmp_path: Path) -> None:
    async def main() -> bytes:
        with socket.socket() as s:
            s.bind(("0.0.0.0", 0))
            port = s.getsockname()[1]
        env = dict(os.environ, PYTHONPATH=str(REPO), XDG_RUNTIME_DIR=str(tmp_path))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "diffill.cli",
            "serve",
            "--tcp",
            f"0.0.0.0:{port}",
            "--model",
            str(tiny_model),
            cwd=str(REPO),
            env=env,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            first = await asyncio.wait_for(proc.stderr.readline(), 60)
        finally:
            proc.kill()
            await proc.wait()
        return first

    assert b"WARNING: listening on 0.0.0.0" in asyncio.run(main())


ZERO = {"context_tokens": 0, "reused_context_tokens": 0}  # the engine's stats before it loads
CODE = "".join(f"def handler_{i}(request, value={i}):\n    return request.get(value)\n" for i in range(12))


def test_a_later_session_reuses_none_of_an_earlier_sessions_context(
    coder_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    """Within one editor session the engine reuses cached context K/V (here: the same context in
    a second file); the next editor on the same server, same loaded model, computes its context
    afresh, so its latency cannot tell it what the last one was editing."""
    base, adapter = coder_dirs

    async def session(server: TcpServer) -> list[int]:
        """Context tokens reused by a completion in each of two files with the same text."""
        client, _ = await client_for(server, server.token)
        client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"diffill": {"cacheSize": 0}})
        )
        reused = []
        for uri in ("file:///p/a.py", "file:///p/b.py"):
            before = plain(await client.protocol.send_request_async("diffill/stats", {}))["engine"] or ZERO
            client.text_document_did_open(
                types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(uri, "python", 1, CODE))
            )
            params = types.InlineCompletionParams(
                context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
                text_document=types.TextDocumentIdentifier(uri=uri),
                position=types.Position(CODE.count("\n"), 0),
            )
            await asyncio.wait_for(client.text_document_inline_completion_async(params), 120)
            after = plain(await client.protocol.send_request_async("diffill/stats", {}))["engine"]
            assert after["context_tokens"] > before["context_tokens"]  # the engine ran
            reused.append(after["reused_context_tokens"] - before["reused_context_tokens"])
        client.protocol.writer.close()  # gone without exit: the server keeps the model
        await asyncio.wait_for(client.stop(), 60)
        return reused

    async def main() -> tuple[list[int], list[int]]:
        server = await start(adapter, tmp_path, "--base", str(base))
        try:
            return await session(server), await session(server)
        finally:
            await stop(server)

    first, second = asyncio.run(main())
    assert first[0] == 0 and first[1] > 100  # the session's own context, reused
    assert second == first  # nothing of the first session's, then its own again
