"""`diffill eval --compare` on the tiny test coder: every decoder answers the same tasks and the
table's rows say what ran, the prompt-only row included (the floor every decoder's latency sits
on: the prompt and one answer token)."""

from __future__ import annotations

import json
from pathlib import Path

from humaneval_toys import PROBLEMS, write_data

from diffill.cli import main


def test_compare_runs_every_decoder_and_the_prompt_floor(tmp_path: Path, coder_dirs: tuple[Path, Path]):
    base, adapter = coder_dirs
    data = write_data(tmp_path)
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
