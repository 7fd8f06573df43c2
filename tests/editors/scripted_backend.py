"""A team server that always answers the same middle: the editors' exact-ghost-text tests.

With a real model nobody knows the suggestion in advance, so an editor test can only check that
*some* text appeared. Pointing the language server at this loopback OpenAI-compatible server
(``diffill.backendUrl``) makes the suggestion known character for character, unicode included,
so the test can assert that the editor shows exactly it and inserts exactly it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# multi-character, accented letters, an arrow (BMP) and an emoji (a UTF-16 surrogate pair)
SCRIPTED = '(2, "héllo → wörld 🙂")'
MODEL = "scripted"


@contextmanager
def scripted_backend(text: str = SCRIPTED) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Serve ``text`` as every completion; yields the base URL and the request bodies seen."""
    bodies: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

        def _send(self, obj: object, status: int = 200) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/v1/models":
                return self._send({"object": "list", "data": [{"id": MODEL, "object": "model"}]})
            self._send({"error": {"message": "not found"}}, 404)

        def do_POST(self) -> None:
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            choice = {"index": 0, "text": text, "finish_reason": "stop"}
            self._send({"object": "text_completion", "model": MODEL, "choices": [choice]})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", bodies
    finally:
        server.shutdown()
        server.server_close()
