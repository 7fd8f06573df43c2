"""The README's first command, as a new user runs it, on the real default model.

It needs the base weights from the registry (installed with the package; `.ci/run` installs them)
and converts them into the user's cache on first use, so it is skipped, saying why, where the
weights packages are missing.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from diffusion_core.coder.base import base_installed

REPO = Path(__file__).resolve().parents[2]


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not base_installed(), reason="Diffill-Coder's base weights are not installed"),
]


def readme_first_command() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    first = next(ln for ln in block.splitlines() if ln.strip() and not ln.lstrip().startswith("#"))
    part = next(p for p in first.split("&&") if p.strip().startswith("diffill "))
    return shlex.split(part)


def test_the_readme_command_completes_hello_py() -> None:
    cmd = readme_first_command()
    assert cmd[:2] == ["diffill", "complete"] and "examples/hello.py" in cmd
    r = subprocess.run(
        [sys.executable, "-m", "diffill.cli", *cmd[1:]],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        # as a user runs it: window and weight format measured
        env={k: v for k, v in os.environ.items() if k not in ("DIFFILL_WINDOW", "DIFFILL_WEIGHTS")},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "return n", (r.stdout, r.stderr[-2000:])
