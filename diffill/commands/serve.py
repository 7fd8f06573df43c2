"""`diffill serve`: the language server editors start (LSP over stdio, or TCP with --tcp)."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from pathlib import Path

from ._model_args import add_model_arguments

HELP = "run the Diffill language server (LSP over stdio by default)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stdio", action="store_true", help="speak LSP over stdin/stdout (the default)")
    p.add_argument(
        "--tcp",
        metavar="[HOST:]PORT",
        help="listen on TCP instead, for one editor at a time holding the per-start token (see "
        "README: what --tcp protects); HOST defaults to 127.0.0.1, PORT 0 picks one (the address "
        "and the token file are printed to stderr)",
    )
    p.add_argument(
        "--token-file",
        metavar="PATH",
        help="with --tcp: write the token here, owner-only (default: $XDG_RUNTIME_DIR/diffill/"
        "tcp-PORT.token or ~/.cache/diffill/tcp-PORT.token; $DIFFILL_TCP_TOKEN sets the token)",
    )
    add_model_arguments(p)
    p.add_argument(
        "--backend",
        metavar="URL",
        help="team mode: complete on this OpenAI-compatible server (e.g. http://gpu-box:8000, a "
        "`diffill serve-http`) instead of loading a model; the diffill.backendUrl setting wins",
    )
    p.add_argument(
        "--api-key",
        metavar="KEY",
        help="bearer key for --backend (default: $DIFFILL_API_KEY); diffill.backendApiKey wins",
    )
    p.add_argument("--log-file", metavar="PATH", help="write the log here instead of stderr")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    # vscode-languageclient passes this to servers it starts; the LSP initialize request carries it too
    p.add_argument("--clientProcessId", help=argparse.SUPPRESS)


def parse_tcp(value: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[IPv6]:PORT`` → (host, port); host defaults to loopback."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "", value
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--tcp expects [HOST:]PORT, got {value!r}")
    return host, int(port)


def _setup_logging(path: str | None, level: str) -> None:
    handler: logging.Handler = (
        logging.FileHandler(path, encoding="utf-8") if path else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pygls logs every message body at INFO: keep that for --log-level debug only
    logging.getLogger("pygls").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)


def local_engine(model_path: str | None, device: str | None, dtype: str | None):  # noqa: ANN201
    """The local engine for the language server (imported here, in the worker thread, so the
    server starts without torch and in team mode never loads it)."""
    from diffusion_core.engine import Engine

    return Engine.from_pretrained(model_path, device=device, dtype=dtype)


def run(args: argparse.Namespace) -> int:
    try:
        tcp = parse_tcp(args.tcp) if args.tcp else None
    except ValueError as exc:
        print(f"diffill serve: {exc}", file=sys.stderr)
        return 2
    if args.backend:
        from lsp_server.settings import check_backend_url

        try:
            check_backend_url(args.backend)
        except ValueError as exc:
            print(f"diffill serve: --backend: {exc}", file=sys.stderr)
            return 2
    _setup_logging(args.log_file, args.log_level)

    from diffusion_core.batcher import Batcher  # the one request queue (the HTTP server's too)
    from lsp_server.backend import ModelDefaults, make_backend
    from lsp_server.server import create_server

    factory = functools.partial(make_backend, load_local=local_engine)

    if args.base:  # Diffill-Coder's base: read where the engine resolves it (coder/load.py)
        os.environ["DIFFILL_BASE"] = args.base
    defaults = ModelDefaults(args.model, args.device, args.dtype, args.backend, args.api_key)
    if tcp is not None:
        from lsp_server.tcp import TcpTokenError, serve_tcp

        try:
            token_file = Path(args.token_file) if args.token_file else None
            code = serve_tcp(*tcp, defaults, factory=factory, token_file=token_file, queue=Batcher)
        except TcpTokenError as exc:
            print(f"diffill serve: {exc}", file=sys.stderr)
            return 2
        logging.shutdown()
        sys.stderr.flush()
        os._exit(code)
    server = create_server(defaults, factory, queue=Batcher)
    # stdout is the protocol channel: give the server its own copy of the descriptor and point
    # fd 1 at stderr, so a stray print (ours, a library's, a C extension's) cannot corrupt it.
    lsp_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    server.start_io(sys.stdin.buffer, lsp_out)
    code = server.exit_code if server.exit_code is not None else (0 if server.protocol._shutdown else 1)
    logging.shutdown()
    sys.stderr.flush()
    # pygls' stdin reader thread may still block in read(): leave without waiting for it
    os._exit(code)
