"""`diffill serve-http` as users start it: a real process, a real port, a clean shutdown."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import openai
import pytest

from diffusion_core.engine import Engine

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_serve_http_process(tiny_model_dir: Path, engine: Engine, stop: signal.Signals) -> None:
    env = {**os.environ, "DIFFILL_API_KEY": "from-env", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "diffill.cli",
        "serve-http",
        "--model",
        str(tiny_model_dir),
        "--port",
        "0",
        "--device",
        "cpu",
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        found: list[re.Match] = []

        def wait_for_address() -> None:  # log lines may come first; the address line is printed once
            for line in proc.stdout:
                m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
                if m:
                    found.append(m)
                    return

        reader = threading.Thread(target=wait_for_address, daemon=True)
        reader.start()
        reader.join(120)
        assert found, "the server never printed its address"
        m = found[0]
        url = f"http://127.0.0.1:{m.group(1)}"
        assert httpx.get(url + "/health", timeout=30).json()["status"] == "ok"
        assert httpx.get(url + "/v1/models", timeout=30).status_code == 401
        client = openai.OpenAI(base_url=url + "/v1", api_key="from-env", max_retries=0, timeout=60)
        resp = client.completions.create(model=engine.model_id, prompt="import ", suffix="\n", max_tokens=6)
        assert resp.choices[0].text == engine.infill("import ", "\n", max_tokens=6).text
    finally:
        proc.send_signal(stop)
        try:
            rc = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert rc == 0  # graceful shutdown, not death by signal


def test_serve_http_reports_a_bad_model_dir(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "diffill.cli",
        "serve-http",
        "--model",
        str(tmp_path / "nope"),
        "--port",
        "0",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "cannot load the model" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--api-key", ""], {}, "--api-key is empty"),
        ([], {"DIFFILL_API_KEY": ""}, "$DIFFILL_API_KEY is empty"),
        (["--api-key-file", "EMPTY"], {}, "is empty; an empty API key would turn authentication off"),
        (["--api-key-file", "MISSING"], {}, "cannot read --api-key-file"),
    ],
)
def test_an_empty_or_unreadable_api_key_is_refused(
    tmp_path: Path, tiny_model_dir: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    (tmp_path / "EMPTY").write_text("\n")
    args = [str(tmp_path / a) if a in ("EMPTY", "MISSING") else a for a in args]
    environ = {k: v for k, v in os.environ.items() if k != "DIFFILL_API_KEY"} | env
    cmd = [
        sys.executable,
        "-m",
        "diffill.cli",
        "serve-http",
        "--model",
        str(tiny_model_dir),
        "--port",
        "0",
        *args,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=environ)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_the_api_key_file_is_read(tmp_path: Path, tiny_model_dir: Path) -> None:
    from diffill.commands.serve_http import read_api_key

    (tmp_path / "key").write_text("  s3cret-from-file \n")
    assert read_api_key(None, str(tmp_path / "key")) == "s3cret-from-file"
    assert read_api_key("flag-wins", str(tmp_path / "key")) == "flag-wins"
