"""Made-up HumanEval-Infilling problems for tests (the harness's and ``eval --compare``'s)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

# made-up problems in the benchmark's format (no benchmark text is copied into the repository)
PROBLEMS = [
    {
        "task_id": "Toy/0",
        "entry_point": "double",
        "prompt": "def double(x):\n",
        "canonical_solution": "    return 2 * x\n",
        "suffix": "",
        "test": "def check(f):\n    assert f(2) == 4\n    assert f(-3) == -6\n",
    },
    {
        "task_id": "Toy/1",
        "entry_point": "count_vowels",
        "prompt": "def count_vowels(s):\n    n = 0\n    for ch in s:\n",
        "canonical_solution": "        if ch in 'aeiou':\n",
        "suffix": "            n += 1\n    return n\n",
        "test": "def check(f):\n    assert f('banana') == 3\n    assert f('xyz') == 0\n",
    },
]


def write_data(tmp: Path) -> Path:
    d = tmp / "data"
    d.mkdir()
    with gzip.open(d / "HumanEval-SingleLineInfilling.jsonl.gz", "wt") as fh:
        for p in PROBLEMS:
            fh.write(json.dumps(p) + "\n")
    return d
