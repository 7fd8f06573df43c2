"""Test helpers for the HTTP server tests: a real server on a loopback socket in a thread."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

from diffill_http.app import ServerConfig, create_app
from diffill_http.chat import ChatTemplate
from diffusion_core.batcher import Batcher

# ChatML-style, written for these tests.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'tool' %}{{ raise_exception('tool messages are not supported') }}{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class LiveServer:
    """uvicorn on a real 127.0.0.1 socket in a background thread, with its own batcher."""

    def __init__(
        self,
        engine: Any,
        config: ServerConfig | None = None,
        chat_template: ChatTemplate | None = None,
        max_batch: int = 16,
        wait_ms: float = 3.0,
        max_pending: int = 1024,
    ) -> None:
        self.engine = engine
        self.batcher = Batcher(engine, max_batch=max_batch, wait_ms=wait_ms, max_pending=max_pending)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(engine, self.batcher, config, chat_template)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.batcher.close()
        self.sock.close()
