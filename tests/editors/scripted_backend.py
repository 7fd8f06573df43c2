"""A team server that always answers the same middle: the editors' exact-ghost-text tests.

With a real model nobody knows the suggestion in advance, so an editor test can only check that
*some* text appeared. Pointing the language server at this loopback OpenAI-compatible server
(``diffill.backendUrl``) makes the suggestion known character for character, unicode included,
so the test can assert that the editor shows exactly it and inserts exactly it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from typing import Any

from json_handler import JsonHandler

# multi-character, accented letters, an arrow (BMP) and an emoji (a UTF-16 surrogate pair)
SCRIPTED = '(2, "héllo → wörld 🙂")'
MODEL = "scripted"


@contextmanager
def scripted_backend(text: str = SCRIPTED) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Serve ``text`` as every completion; yields the base URL and the request bodies seen."""
    bodies: list[dict[str, Any]] = []

    class Handler(JsonHandler):
        def do_GET(self) -> None:
            if self.path == "/v1/models":
                return self.send_json(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})
            self.send_json(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:
            bodies.append(self.json_body())
            choice = {"index": 0, "text": text, "finish_reason": "stop"}
            self.send_json(200, {"object": "text_completion", "model": MODEL, "choices": [choice]})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", bodies
    finally:
        server.shutdown()
        server.server_close()
