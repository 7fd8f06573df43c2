"""`diffill eval --compare` on the tiny test coder: every decoder answers the same tasks and the
table's rows say what ran, the prompt-only row included (the floor every decoder's latency sits
on: the prompt and one answer token)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from diffill.cli import main

# made-up problems in the benchmark's format (no benchmark text is copied into the repository)
PROBLEMS = [
    {
        "task_id": "Toy/0",
        "entry_point": "double",
        "prompt": "def double(x):\n",
        "canonical_solution": "    return 2 * x\n",
        "suffix": "",
        "test": "def check(f):\n    assert f(2) == 4\n",
    },
    {
        "task_id": "Toy/1",
        "entry_point": "inc",
        "prompt": "def inc(x):\n    y = x + 1\n",
        "canonical_solution": "    return y\n",
        "suffix": "",
        "test": "def check(f):\n    assert f(1) == 2\n",
    },
]


def test_compare_runs_every_decoder_and_the_prompt_floor(tmp_path: Path, coder_dirs: tuple[Path, Path]):
    base, adapter = coder_dirs
    data = tmp_path / "data"
    data.mkdir()
    with gzip.open(data / "HumanEval-SingleLineInfilling.jsonl.gz", "wt") as fh:
        fh.writelines(json.dumps(p) + "\n" for p in PROBLEMS)
    out = tmp_path / "out"
    args = ["eval", "humaneval-infilling", "--subset", "single-line", "--data", str(data)]
    args += ["--model", str(adapter), "--base", str(base), "--device", "cpu", "--dtype", "float32"]
    rc = main([*args, "--timeout", "5", "--compare", "q0.7,ar,prompt", "--out-dir", str(out)])
    assert rc == 0
    rows = {r["decoder"].split(" ")[0]: r for r in json.loads((out / "single-line.json").read_text())["rows"]}
    assert set(rows) == {"diffill-coder-test", "AR", "prompt"}
    assert all(r["n"] == len(PROBLEMS) for r in rows.values())
    # the floor decodes one answer token per task, the others their whole line
    assert rows["prompt"]["mean_tokens"] <= 1.0 < rows["AR"]["mean_tokens"]
    samples = [json.loads(line) for line in (out / "single-line.samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 * len(PROBLEMS)
