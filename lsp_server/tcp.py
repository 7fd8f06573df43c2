"""``diffill serve --tcp``: the language server for one editor at a time over TCP.

What it protects against (another user or process on the same machine, or on the network when
bound beyond loopback):

- **a per-start secret**: the first message must be ``initialize`` carrying
  ``initializationOptions.token``; anything else, a wrong token, or a connection whose first bytes
  are not an LSP header (a browser's request, say) is dropped before the server reads it. The
  token is written to an owner-only file (its path is printed) or taken from
  ``$DIFFILL_TCP_TOKEN`` (an empty one is refused);
- **one session at a time**: while an editor is connected, other connections are closed at once;
  each session has its own documents, settings and replies, so nothing one editor opened or set
  (``backendUrl`` included) is seen or changed by another; when an editor disconnects without
  ``exit`` the next one gets a fresh session on the same loaded model;
- **loopback by default**: another host is bound only when asked, with a warning.

What it does not protect: traffic is not encrypted (use stdio, an SSH tunnel, or loopback), and
anyone who can read the token file (the same user, root) can connect.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import secrets
import sys
import threading
from pathlib import Path
from typing import Any

from diffusion_core.interface import QueueFactory

from . import framing
from .backend import ModelDefaults, make_backend
from .stats import Stats
from .worker import BackendFactory, EngineWorker

__all__ = ["TOKEN_ENV", "TcpTokenError", "make_token", "serve_tcp", "token_file_path", "write_token_file"]

log = logging.getLogger(__name__)

TOKEN_ENV = "DIFFILL_TCP_TOKEN"
LOOPBACK = ("127.0.0.1", "::1", "localhost")


class TcpTokenError(ValueError):
    """The configured token cannot be used (empty or too short)."""


def make_token() -> str:
    """``$DIFFILL_TCP_TOKEN`` when set (at least 16 characters), else a fresh random secret."""
    if TOKEN_ENV in os.environ:
        token = os.environ[TOKEN_ENV]
        if len(token.strip()) < 16:
            raise TcpTokenError(
                f"${TOKEN_ENV} must hold at least 16 characters (an empty secret protects nothing)"
            )
        return token.strip()
    return secrets.token_urlsafe(32)


def token_file_path(port: int) -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    root = Path(runtime) / "diffill" if runtime else Path.home() / ".cache" / "diffill"
    return root / f"tcp-{port}.token"


def write_token_file(path: Path, token: str) -> Path:
    """Write the token readable by its owner only (the folder too)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, token.encode() + b"\n")
    finally:
        os.close(fd)
    return path


def _admit(token: str):  # noqa: ANN202
    def check(obj: dict[str, Any]) -> str | None:
        if obj.get("method") != "initialize":
            return "Unauthorized: the first message must be initialize with initializationOptions.token"
        params = obj.get("params") if isinstance(obj.get("params"), dict) else {}
        opts = params.get("initializationOptions")
        opts = opts if isinstance(opts, dict) else {}
        given = opts.get("token")
        if given is None and isinstance(opts.get("diffill"), dict):
            given = opts["diffill"].get("token")
        if not isinstance(given, str) or not hmac.compare_digest(given.encode(), token.encode()):
            return "Unauthorized: wrong or missing initializationOptions.token"
        return None

    return check


def serve_tcp(
    host: str,
    port: int,
    defaults: ModelDefaults | None = None,
    factory: BackendFactory = make_backend,
    token: str | None = None,
    token_file: Path | None = None,
    queue: QueueFactory | None = None,
) -> int:
    """Serve editors one at a time until one sends ``exit``; returns the exit code."""
    from .server import create_server

    token = token or make_token()
    if host not in LOOPBACK:
        print(
            f"diffill: WARNING: listening on {host}: other machines can connect (the token is still "
            "required, but traffic is not encrypted)",
            file=sys.stderr,
            flush=True,
        )
    worker = EngineWorker(Stats(), factory, queue=queue)
    result: dict[str, int] = {}

    async def main() -> None:
        finished = asyncio.Event()
        busy = asyncio.Lock()

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = writer.get_extra_info("peername")
            if busy.locked():
                log.warning("refused a second connection from %s: one editor at a time", peer)
                writer.close()
                return
            async with busy:
                ls = create_server(defaults, factory, worker)
                ls.watch_client_process = False  # a TCP client's process id means nothing here
                ls._stop_event = threading.Event()
                ls.protocol.set_writer(writer)
                try:
                    why = await framing.serve(
                        lambda: reader.read(1 << 16),
                        ls.protocol,
                        ls._stop_event.is_set,
                        ls.send_error_dict,
                        require_header=True,
                        admit=_admit(token),
                    )
                    log.info("session from %s ended: %s", peer, why)
                finally:
                    ls.completer.scheduler.cancel_all()
                    for task in list(ls._tasks):
                        task.cancel()
                    try:
                        writer.close()
                    except Exception:  # noqa: BLE001 - the peer may be gone already
                        pass
                if ls.exit_code is not None:  # LSP exit ends the server, not just the session
                    result["code"] = ls.exit_code
                    finished.set()

        server = await asyncio.start_server(on_client, host, port)
        bound = server.sockets[0].getsockname()
        path = write_token_file(token_file or token_file_path(bound[1]), token)
        print(f"diffill: listening on {bound[0]}:{bound[1]}", file=sys.stderr, flush=True)
        print(
            f"diffill: token file {path} (owner-only; pass its content as initializationOptions.token)",
            file=sys.stderr,
            flush=True,
        )
        async with server:
            await finished.wait()

    try:
        asyncio.run(main())
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        worker.stop(timeout=1.0)
    return result.get("code", 0)
