"""The VS Code extension's Node tests, run from pytest so that `python3 -m pytest` covers them.

- `npm test`: unit tests of the settings builder, then the extension's side of the protocol against
  the real `diffill serve` (editors/vscode/test/server.test.mjs);
- `npm run test:e2e`: the packaged .vsix in a real VS Code (code-server + headless Chromium):
  ghost text appears, Tab accepts it, accept-next-word, the status bar toggle, and the
  notifications for a missing Python or missing dependencies (editors/vscode/test/e2e.test.mjs).

The extension is compiled and packaged here first, so the tests check the current sources. Needs
`npm ci` in editors/vscode, code-server and Chromium (`bash editors/ci.sh install`); without them
these tests skip locally and fail in CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import VSCODE_DIR, editor_env, find_chromium, find_code_server, missing


def _run(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=VSCODE_DIR, env=env, capture_output=True, text=True, timeout=timeout)
    sys.stdout.write(proc.stdout[-6000:])
    return proc


@pytest.fixture(scope="module")
def npm_env(tiny_model: Path) -> dict[str, str]:
    if shutil.which("node") is None or shutil.which("npm") is None:
        missing("node/npm not found")
    if not (VSCODE_DIR / "node_modules" / "vscode-languageclient").is_dir():
        missing("editors/vscode/node_modules is missing (npm ci)")
    env = editor_env()
    env.update(DIFFILL_PYTHON=sys.executable, DIFFILL_TEST_MODEL=str(tiny_model), NO_COLOR="1")
    return env


@pytest.fixture(scope="module")
def built(npm_env: dict[str, str]) -> Path:
    """Compile (tsc + esbuild) and package the extension from the current sources."""
    for script in ("compile", "package"):
        proc = _run(["npm", "run", "--silent", script], npm_env, 300)
        assert proc.returncode == 0, f"npm run {script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    vsix = VSCODE_DIR / "diffill.vsix"
    assert vsix.is_file() and vsix.stat().st_size > 0
    return vsix


def _check(proc: subprocess.CompletedProcess[str], what: str) -> None:
    output = f"{proc.stdout[-8000:]}\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, f"{what} failed (exit {proc.returncode}):\n{output}"
    assert "ℹ fail 0" in proc.stdout, proc.stdout[-3000:]
    assert "ℹ pass 0" not in proc.stdout, "no test ran"


def test_extension_protocol_and_settings(built: Path, npm_env: dict[str, str]) -> None:
    """npm test: settings builder unit tests + the real server spoken to as the extension does."""
    _check(_run(["npm", "test", "--silent"], npm_env, 600), "npm test")


def test_extension_in_real_vscode(built: Path, npm_env: dict[str, str]) -> None:
    """npm run test:e2e: code-server + Chromium, the user-visible behaviour of the extension."""
    code_server = find_code_server()
    if code_server is None:
        missing("code-server not found (set CODE_SERVER)")
    chromium = find_chromium()
    if chromium is None:
        missing("chromium not found (apt-get install chromium)")
    env = dict(npm_env, CODE_SERVER=code_server, CHROMIUM=chromium, DIFFILL_VSIX=str(built))
    if os.environ.get("DIFFILL_E2E_SCREENSHOT"):
        env["DIFFILL_E2E_SCREENSHOT"] = os.environ["DIFFILL_E2E_SCREENSHOT"]
    _check(_run(["npm", "run", "--silent", "test:e2e"], env, 900), "npm run test:e2e")
