"""The HumanEval-Infilling harness passes right answers, fails wrong ones, and contains programs."""

from __future__ import annotations

import json
from pathlib import Path

from humaneval_toys import PROBLEMS, write_data

from diffill.cli import main
from diffusion_core.evaluation.humaneval import (
    FAILED,
    PASSED,
    TIMED_OUT,
    load_problems,
    run_program,
    score,
    spread,
)


def run_cli(tmp: Path, *extra: str) -> dict:
    out = tmp / "summary.json"
    rc = main(
        [
            "eval",
            "humaneval-infilling",
            "--subset",
            "single-line",
            "--data",
            str(write_data(tmp)),
            "--out",
            str(out),
            "--timeout",
            "5",
            *extra,
        ]
    )
    assert rc == 0
    return json.loads(out.read_text())


def write_samples(path: Path, completions: list[str]) -> Path:
    with open(path, "w") as fh:
        for p, c in zip(PROBLEMS, completions, strict=True):
            fh.write(json.dumps({"task_id": p["task_id"], "completion": c}) + "\n")
    return path


def test_correct_samples_pass(tmp_path: Path) -> None:
    samples = write_samples(tmp_path / "good.jsonl", [p["canonical_solution"] for p in PROBLEMS])
    s = run_cli(tmp_path, "--samples", str(samples))
    assert (s["passed"], s["failed"], s["timed_out"], s["pass@1"]) == (2, 0, 0, 100.0)


def test_wrong_samples_fail(tmp_path: Path) -> None:
    samples = write_samples(tmp_path / "bad.jsonl", ["    return x + 2\n", "        if ch in 'xyz':\n"])
    s = run_cli(tmp_path, "--samples", str(samples))
    assert (s["passed"], s["failed"]) == (0, 2)


def test_empty_control_fails(tmp_path: Path) -> None:
    s = run_cli(tmp_path, "--control", "empty")
    assert s["passed"] == 0 and s["source"] == "control:empty"


def test_timeout_and_missing_completion() -> None:
    problems = [dict(PROBLEMS[0], task_id="Toy/loop"), dict(PROBLEMS[0], task_id="Toy/missing")]
    res = score(problems, {"Toy/loop": "    while True:\n        pass\n"}, "single-line", timeout=1.0)
    assert res.per_task == {"Toy/loop": TIMED_OUT, "Toy/missing": FAILED}


def test_program_is_isolated(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("DIFFILL_TEST_SECRET", "hunter2")
    monkeypatch.chdir(tmp_path)
    # no inherited secrets, a throwaway working directory, and no way to start processes (when not root)
    probe = (
        "import os, tempfile\n"
        "assert 'DIFFILL_TEST_SECRET' not in os.environ\n"
        f"assert os.getcwd() != {str(tmp_path)!r}\n"
        "assert os.getcwd().startswith(tempfile.gettempdir())\n"
    )
    assert run_program(probe, timeout=5) == PASSED
    assert run_program("import os\nassert os.environ.get('DIFFILL_TEST_SECRET')\n", timeout=5) == FAILED
    # memory limit: a 4 GiB allocation fails instead of taking the machine
    assert run_program("x = bytearray(4 * 1024 ** 3)\n", timeout=5) == FAILED


def test_load_problems_by_subset(tmp_path: Path) -> None:
    d = write_data(tmp_path)
    assert [p["task_id"] for p in load_problems(d, "single-line")] == ["Toy/0", "Toy/1"]


def test_limit_spreads_over_tasks() -> None:
    problems = [{"task_id": f"T/{i}"} for i in range(10)]
    assert [p["task_id"] for p in spread(problems, 3)] == ["T/0", "T/3", "T/6"]
    assert spread(problems, 20) == problems
