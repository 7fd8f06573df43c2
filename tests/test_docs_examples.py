"""The examples in README.md and docs/ as a user would copy them.

Every ``diffill`` command line parses with the real command-line parser (so a renamed flag or
command breaks this test, not a user), the files and folders it names in this repository exist,
and the README's library example runs on the default model. The team server's examples run
against a live server in tests/http/test_team_server_doc.py.
"""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest
from docs_blocks import DOCS, REPO, blocks, diffill_commands

from diffill.cli import build_parser
from diffusion_core.coder.base import base_installed


def test_every_doc_names_some_commands() -> None:
    found = {p.name: diffill_commands(p) for p in DOCS}
    assert found["README.md"], "no diffill command found in the README's shell blocks"
    assert found["team-server.md"], "no diffill command found in docs/team-server.md"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_diffill_command_in_the_docs_parses(doc) -> None:
    parser = build_parser()
    for line in diffill_commands(doc):
        argv = shlex.split(line)[1:]
        try:
            parser.parse_args(argv)
        except SystemExit as e:
            pytest.fail(f"{doc.name}: `{line}` does not parse (exit {e.code})")
        for word in argv:
            if word.startswith(("examples/", "bench/", "editors/")):
                assert (REPO / word).exists(), f"{doc.name}: `{line}` names {word}, which does not exist"


@pytest.mark.slow
@pytest.mark.skipif(not base_installed(), reason="Diffill-Coder's base weights are not installed")
def test_the_readme_library_example_runs_on_the_default_model() -> None:
    (code,) = [b for b in blocks(REPO / "README.md", "python") if "Engine.from_pretrained" in b]
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    text, tokens, steps, latency = r.stdout.strip().rsplit(" ", 3)
    assert "return a + b" in text, r.stdout
    assert int(tokens) > 0 and int(steps) > 0 and float(latency) > 0
