"""The fenced code blocks of README.md and docs/*.md, for the tests that run them as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


def diffill_commands(path: Path) -> list[str]:
    """Every ``diffill ...`` invocation in the shell blocks, one per command (split at ``&&``,
    ``;``, a trailing ``&`` and comments; environment prefixes dropped). Synopsis lines (with
    ``[optional]`` or ``a | b``) are not runnable as written and are left out."""
    out = []
    for lang in ("bash", "sh"):
        for block in blocks(path, lang):
            for line in block.splitlines():
                line = line.split(" #", 1)[0].strip()
                if not line or line.startswith("#") or "[" in line or " | " in line:
                    continue
                for part in re.split(r"&&|;", line):
                    words = shlex.split(part.strip().rstrip("&"))
                    while words and re.match(r"^[A-Z_]+=", words[0]):
                        words = words[1:]
                    if words and words[0] == "diffill":
                        out.append(shlex.join(words))
    return out
