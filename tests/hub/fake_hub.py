"""A loopback HTTP server speaking the part of the Hugging Face hub API that huggingface_hub
uses to download a model: repo info (``/api/models/{repo}/revision/{rev}``), the file tree
(``/api/models/{repo}/tree/{rev}``) and file resolution (``/{repo}/resolve/{rev}/{path}``,
HEAD and GET, with the commit and etag headers). Every request is recorded."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    branch: str = "main"
    wrong_sha: set[str] = field(default_factory=set)  # files whose listed sha256 is wrong

    @classmethod
    def from_dir(cls, root: Path, **extra: bytes) -> FakeRepo:
        files = {
            p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
        }
        files.update(extra)
        return cls(files)

    def sha256(self, name: str) -> str:
        digest = hashlib.sha256(self.files[name]).hexdigest()
        return ("0" * 64) if name in self.wrong_sha else digest

    def lfs(self, name: str) -> bool:
        return name.endswith((".safetensors", ".bin"))

    def entry(self, name: str) -> dict:
        data = self.files[name]
        e = {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
        if self.lfs(name):
            e["lfs"] = {"oid": self.sha256(name), "size": len(data), "pointerSize": 134}
        return e


class FakeHub:
    def __init__(self, repos: dict[str, FakeRepo]) -> None:
        self.repos = repos
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                hub._handle(self, body=False)

            def do_GET(self) -> None:
                hub._handle(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def fetched_files(self) -> list[str]:
        return [
            p.split("/resolve/", 1)[1].split("/", 1)[1]
            for m, p in self.requests
            if m == "GET" and "/resolve/" in p
        ]

    def _repo(self, name: str, rev: str) -> FakeRepo | None:
        repo = self.repos.get(name)
        if repo is None or rev not in (repo.commit, repo.branch):
            return None
        return repo

    def _missing(self, h: BaseHTTPRequestHandler, name: str, body: bool) -> None:
        """404 as the hub words it: no such repository, or no such revision of one."""
        code = "RevisionNotFound" if name in self.repos else "RepoNotFound"
        self._send(h, 404, {"error": code}, body, {"X-Error-Code": code})

    def _handle(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        self.requests.append((h.command, path))
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
            repo = self._repo(m[1], m[2] or "main")
            if repo is None:
                return self._missing(h, m[1], body)
            info = {
                "id": m[1],
                "modelId": m[1],
                "sha": repo.commit,
                "private": False,
                "siblings": [
                    {
                        "rfilename": n,
                        "size": len(d),
                        **(
                            {"lfs": {"sha256": repo.sha256(n), "size": len(d), "pointerSize": 134}}
                            if repo.lfs(n)
                            else {}
                        ),
                    }
                    for n, d in repo.files.items()
                ],
            }
            return self._send(h, 200, info, body)
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path):
            repo = self._repo(m[1], m[2])
            if repo is None:
                return self._missing(h, m[1], body)
            return self._send(h, 200, [repo.entry(n) for n in repo.files], body)
        if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            repo = self._repo(m[1], m[2])
            if repo is None or m[3] not in repo.files:
                return self._send(
                    h, 404, {"error": "Entry not found"}, body, {"X-Error-Code": "EntryNotFound"}
                )
            data = repo.files[m[3]]
            etag = repo.sha256(m[3]) if repo.lfs(m[3]) else hashlib.sha1(data).hexdigest()
            headers = {
                "X-Repo-Commit": repo.commit,
                "ETag": f'"{etag}"',
                "Content-Type": "application/octet-stream",
            }
            return self._send_bytes(h, 200, data, body, headers)
        self._send(h, 404, {"error": f"unknown path {path}"}, body)

    def _send(
        self, h: BaseHTTPRequestHandler, status: int, obj: object, body: bool, headers: dict | None = None
    ) -> None:
        self._send_bytes(
            h, status, json.dumps(obj).encode(), body, {"Content-Type": "application/json", **(headers or {})}
        )

    @staticmethod
    def _send_bytes(h: BaseHTTPRequestHandler, status: int, data: bytes, body: bool, headers: dict) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)
