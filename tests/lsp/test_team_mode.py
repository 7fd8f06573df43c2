"""Team mode: `diffill serve` completing on a real `diffill serve-http` process instead of a local model.

Everything runs on loopback: one HTTP server (tiny model, API key) for the module, the local
``lsp`` server from conftest as the reference, and team-mode language servers started per test.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lsprotocol import types

from lsp_server.settings import Settings, merge_settings

from .conftest import REPO, LspSession, plain
from .test_server import CANDIDATES, URIS

KEY = "team-secret-4711"


@pytest.fixture(scope="module")
def team_server(tiny_model: Path) -> Iterator[str]:
    """`diffill serve-http` on 127.0.0.1 with a free port and an API key; yields its base URL."""
    env = {k: v for k, v in os.environ.items() if k != "DIFFILL_API_KEY"}
    env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable,
        "-m",
        "diffill.cli",
        "serve-http",
        "--model",
        str(tiny_model),
        "--device",
        "cpu",
        "--port",
        "0",
        "--api-key",
        KEY,
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    found = threading.Event()
    lines: list[str] = []

    def read() -> None:  # keeps draining after the address, so the server never blocks on a full pipe
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if re.search(r"listening on http://127\.0\.0\.1:\d+", line):
                found.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert found.wait(120), f"serve-http never printed its address: {''.join(lines)}"
        port = next(m.group(1) for m in map(re.compile(r"127\.0\.0\.1:(\d+)").search, lines) if m)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def closed_port_url() -> str:
    """A loopback URL nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


OPTIONS = {"debounceMs": 0, "prefetch": False, "maxTokens": 16}  # as the conftest `lsp` server


def texts(session: LspSession, uri: str, pos: tuple[int, int]) -> list[str]:
    return [item.insert_text for item in session.inline(uri, *pos).items]


def same_as_local(team: LspSession, lsp: LspSession) -> int:
    """Open every candidate document in both servers; the editor must see the same ghost text.
    Returns how many contexts got a non-empty completion (so the comparison is not vacuous)."""
    shown = 0
    for text, pos in CANDIDATES:
        uri = next(URIS)
        lsp.open(uri, text)
        team.open(uri, text)
        want = texts(lsp, uri, pos)
        assert texts(team, uri, pos) == want, text
        shown += bool(want)
    return shown


def messages(session: LspSession) -> list[types.ShowMessageParams]:
    return [p for m, p in session.notifications if m == types.WINDOW_SHOW_MESSAGE]


def test_team_mode_completes_like_the_local_model_without_loading_torch(lsp: LspSession, team_server: str):
    # the --backend flag and the key from the environment, as a team's launcher script would set them
    team = LspSession(["--backend", team_server], env={"DIFFILL_API_KEY": KEY})
    try:
        team.initialize(init_options={"diffill": OPTIONS})
        st = team.wait_state("ready", "failed")
        assert (st["state"], st["modelId"], st["error"]) == ("ready", "diffill-tiny", None)
        assert same_as_local(team, lsp) >= 1
        assert team.stats()["modelCalls"] >= 1
        # the one message: where the code goes (nothing went wrong)
        (told,) = messages(team)
        assert told.type == types.MessageType.Info and team_server in told.message
        assert "the code around your cursor is sent there" in told.message
        maps = Path(f"/proc/{team.pid}/maps")
        if maps.exists():  # the point of team mode on a laptop: no torch in the editor's server
            assert "libtorch" not in maps.read_text()
    finally:
        assert team.close() == 0


def test_wrong_key_is_reported_once_and_fixing_it_recovers_without_restart(lsp: LspSession, team_server: str):
    # flags name a dead server and the right key; the client's settings win over both
    team = LspSession(["--backend", closed_port_url(), "--api-key", KEY])
    try:
        team.initialize(
            init_options={"diffill": {**OPTIONS, "backendUrl": team_server, "backendApiKey": "wrong-key"}}
        )
        st = team.wait_state("failed", "ready")
        assert st["state"] == "failed" and "401" in st["error"]
        team.wait_notification("diffill/status", lambda p: plain(p)["state"] == "failed")
        (msg,) = messages(team)
        assert msg.type == types.MessageType.Error
        assert team_server in msg.message and "401" in msg.message and "backendApiKey" in msg.message
        assert "wrong-key" not in msg.message and team.stats()["settings"]["backendApiKey"] == "***"

        uri = next(URIS)
        text, pos = CANDIDATES[0]
        team.open(uri, text)
        assert texts(team, uri, pos) == [] and texts(team, uri, pos) == []
        assert len(messages(team)) == 1  # reported once, not per request

        team.notify(
            types.WORKSPACE_DID_CHANGE_CONFIGURATION,
            types.DidChangeConfigurationParams(settings={"diffill": {"backendApiKey": KEY}}),
        )
        assert team.wait_state("ready")["modelId"] == "diffill-tiny"
        assert same_as_local(team, lsp) >= 1
        # the error once, then where the code goes now that it is sent there
        assert [m.type for m in messages(team)] == [types.MessageType.Error, types.MessageType.Info]

        # a malformed URL is a settings warning naming the field; the working connection stays
        team.notify(
            types.WORKSPACE_DID_CHANGE_CONFIGURATION,
            types.DidChangeConfigurationParams(settings={"diffill": {"backendUrl": "gpu-box:8000"}}),
        )
        warning = team.wait_notification(
            types.WINDOW_SHOW_MESSAGE, lambda p: p.type == types.MessageType.Warning
        )
        assert "diffill.backendUrl" in warning.message and "http://" in warning.message
        assert team.stats()["state"] == "ready"

        # an unreachable server fails fast at connect time, reported once more, then empty results
        dead = closed_port_url()
        t0 = time.monotonic()
        team.notify(
            types.WORKSPACE_DID_CHANGE_CONFIGURATION,
            types.DidChangeConfigurationParams(settings={"diffill": {"backendUrl": dead}}),
        )
        err = team.wait_notification(types.WINDOW_SHOW_MESSAGE, lambda p: dead in p.message)
        assert err.type == types.MessageType.Error and time.monotonic() - t0 < 20
        assert team.wait_state("failed")["error"]
        assert texts(team, uri, pos) == []
    finally:
        assert team.close() == 0


def test_backend_settings_are_validated_per_field():
    s, errors = merge_settings(
        Settings(), {"diffill": {"backendUrl": "ftp://gpu-box", "backendModel": "m", "maxTokens": 8}}
    )
    assert len(errors) == 1 and errors[0].startswith(
        "diffill.backendUrl: expected an http:// or https:// URL"
    )
    assert (s.backend_url, s.backend_model, s.max_tokens) == (None, "m", 8)
    proc = subprocess.run(
        [sys.executable, "-m", "diffill.cli", "serve", "--backend", "gpu-box:8000"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "--backend: expected an http:// or https:// URL" in proc.stderr


def test_backend_model_must_be_one_the_server_serves(team_server: str):
    from lsp_server.backend import make_backend
    from lsp_server.remote import RemoteError

    with pytest.raises(RemoteError, match="does not serve model 'nope'.*diffill-tiny"):
        make_backend(None, None, None, team_server, KEY, "nope")
    backend = make_backend(None, None, None, team_server + "/v1", KEY, "diffill-tiny")
    try:
        assert backend.model_id == "diffill-tiny"
    finally:
        backend.close()
