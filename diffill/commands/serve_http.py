"""`diffill serve-http`: the OpenAI-compatible HTTP server with dynamic batching (team mode)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading

from ._model_args import add_model_arguments

HELP = "serve an OpenAI-compatible HTTP API (/v1/completions with suffix, /v1/chat/completions)"

API_KEY_ENV = "DIFFILL_API_KEY"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument(
        "--api-key-file",
        metavar="PATH",
        help=f"require 'Authorization: Bearer KEY' with KEY read from this file (or set ${API_KEY_ENV}); "
        "neither = no auth, allowed on loopback only with a warning elsewhere",
    )
    p.add_argument(
        "--api-key",
        default=None,
        help="the key itself (visible to other users in `ps`: prefer --api-key-file or the variable)",
    )
    p.add_argument("--served-model-name", default=None, help="model id reported by /v1/models")
    p.add_argument(
        "--max-batch", type=int, default=16, help="most requests in one batched run (1 = no batching)"
    )
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=5.0,
        help="how long the worker may wait for company under concurrent load (default 5)",
    )
    p.add_argument("--max-pending", type=int, default=1024, help="queued requests before answering 503")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body limit (default 1 MiB)")
    p.add_argument("--max-tokens-limit", type=int, default=1024, help="largest max_tokens accepted")
    p.add_argument(
        "--max-request-tokens", type=int, default=4096, help="most work (choices x max_tokens) in one request"
    )
    p.add_argument(
        "--max-client-inflight",
        type=int,
        default=16,
        help="most choices one client (key or address) may have running",
    )
    p.add_argument(
        "--share-prefix-cache",
        action="store_true",
        help="reuse cached context K/V for requests without an X-Diffill-Cache-Scope header too, "
        "per client (key or address): faster typing for third-party plugins on a server one person "
        "uses; clients sharing a key could then time each other's contexts",
    )
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def read_api_key(flag: str | None, path: str | None) -> str | None:
    """The key from --api-key, --api-key-file or $DIFFILL_API_KEY (in that order); a given but
    empty key (an unset shell variable, an empty file) is refused instead of meaning "no auth"."""
    if flag is not None:
        source, key = "--api-key", flag
    elif path is not None:
        try:
            source, key = f"--api-key-file {path}", open(path, encoding="utf-8").read()
        except OSError as exc:
            raise ValueError(f"cannot read --api-key-file {path}: {exc.strerror}") from None
    elif API_KEY_ENV in os.environ:
        source, key = f"${API_KEY_ENV}", os.environ[API_KEY_ENV]
    else:
        return None
    key = key.strip()
    if not key:
        raise ValueError(
            f"{source} is empty; an empty API key would turn authentication off (leave it unset)"
        )
    return key


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from diffill_http.app import ServerConfig, create_app
    from diffill_http.chat import load_chat_template
    from diffusion_core.batcher import Batcher
    from diffusion_core.engine import Engine, resolve_model_path

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    log = logging.getLogger("diffill.http")
    try:
        api_key = read_api_key(args.api_key, args.api_key_file)
    except ValueError as exc:
        print(f"diffill serve-http: {exc}", file=sys.stderr)
        return 2
    if args.api_key is not None:
        log.warning(
            "--api-key is visible to every user of this machine in `ps`; use --api-key-file or $%s",
            API_KEY_ENV,
        )
    if args.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        log.warning(
            "listening on %s without an API key: anyone who can reach it can use the model", args.host
        )

    if args.max_batch < 1 or args.batch_wait_ms < 0 or args.max_pending < 1 or args.max_body_bytes < 1:
        print(
            "diffill serve-http: --max-batch, --max-pending, --max-body-bytes must be >= 1 and "
            "--batch-wait-ms >= 0",
            file=sys.stderr,
        )
        return 2
    model_dir = resolve_model_path(args.model)
    try:
        engine = Engine.from_pretrained(model_dir, device=args.device, dtype=args.dtype, base=args.base)
    except (ValueError, OSError) as exc:  # CheckpointError names the missing or invalid file
        print(f"diffill serve-http: cannot load the model from {model_dir}: {exc}", file=sys.stderr)
        return 1
    try:
        chat_template = load_chat_template(model_dir)
    except Exception as exc:  # a broken template disables chat, not the server
        log.error("chat template of %s is unusable (%s); /v1/chat/completions disabled", model_dir, exc)
        chat_template = None
    config = ServerConfig(
        api_key=api_key,
        served_model_name=args.served_model_name,
        max_body_bytes=args.max_body_bytes,
        max_tokens_limit=args.max_tokens_limit,
        max_request_tokens=args.max_request_tokens,
        max_client_inflight=args.max_client_inflight,
        shared_prefix_cache=args.share_prefix_cache,
    )
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        sock.close()
        print(f"diffill serve-http: cannot bind {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    sock.listen(2048)  # accept connections (queued) from the moment the address is printed
    port = sock.getsockname()[1]
    batcher = Batcher(
        engine, max_batch=args.max_batch, wait_ms=args.batch_wait_ms, max_pending=args.max_pending
    )
    try:
        app = create_app(engine, batcher, config, chat_template)
        server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=5))
        shown = f"[{args.host}]" if family == socket.AF_INET6 else args.host
        print(f"diffill serve-http: {engine.model_id} listening on http://{shown}:{port}", flush=True)
        if threading.current_thread() is threading.main_thread():
            # uvicorn shuts down gracefully, then re-raises the signal: make that a clean exit
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:
            pass
    finally:
        batcher.close()
        sock.close()
    return 0
