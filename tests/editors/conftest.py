"""Shared by the editor-integration tests: where the editors and tools are, and the test model.

`editors/ci.sh install` puts everything in place (nvim and pynvim from pip, the VS Code extension's
node_modules, code-server in a cache folder, Chromium from apt). Where something is missing these
tests skip with the reason, except in CI (`CI=true`) or with DIFFILL_REQUIRE_EDITORS=1, where a
missing piece is a failure: an editor test never silently does not run there.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VSCODE_DIR = REPO / "editors" / "vscode"
NEOVIM_DIR = REPO / "editors" / "neovim"

REQUIRED = os.environ.get("DIFFILL_REQUIRE_EDITORS") == "1" or os.environ.get("CI", "").lower() == "true"


def missing(what: str) -> None:
    """Skip for `what` locally; fail in CI or when DIFFILL_REQUIRE_EDITORS=1."""
    if REQUIRED:
        pytest.fail(f"{what} -- run `bash editors/ci.sh install` (editor tests must run here)", pytrace=False)
    pytest.skip(f"{what} (run `bash editors/ci.sh install`)")


def editors_cache() -> Path:
    """Where editors/ci.sh installs code-server (keep in step with it)."""
    if os.environ.get("DIFFILL_EDITORS_CACHE"):
        return Path(os.environ["DIFFILL_EDITORS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "diffill-editors"


def find_code_server() -> str | None:
    if os.environ.get("CODE_SERVER"):
        return os.environ["CODE_SERVER"]
    linked = editors_cache() / "bin" / "code-server"
    if linked.exists():
        return str(linked)
    return shutil.which("code-server")


def find_chromium() -> str | None:
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return shutil.which("chromium") or shutil.which("chromium-browser")


def editor_env() -> dict[str, str]:
    """The environment for editors and the server they start: this checkout first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight model in the project's format (or DIFFILL_TEST_MODEL when given)."""
    if os.environ.get("DIFFILL_TEST_MODEL"):
        return Path(os.environ["DIFFILL_TEST_MODEL"])
    from model_fixtures import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("editors-model") / "tiny")
