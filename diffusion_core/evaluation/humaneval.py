"""HumanEval-Infilling, execution-based pass@1.

A sample passes when ``prompt + completion + suffix + "\\n" + test + "\\n" + check(entry_point)``
runs without error. That means running model-written code, so every program runs in its own
subprocess with: a wall-clock timeout (the process group is killed), CPU-time, address-space,
process-count, file-size and core-dump limits, a throwaway temporary working directory, an
isolated interpreter (``-I``: no user site, no PYTHON* variables) and an environment rebuilt from
scratch, so no inherited secret (tokens, keys) is visible to it. This is a guard against
accidents, not a sandbox against a hostile model.
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

SUBSETS = {
    "single-line": "HumanEval-SingleLineInfilling.jsonl.gz",
    "random-span-light": "HumanEval-RandomSpanInfillingLight.jsonl.gz",
    # larger upstream subsets, when present in the data directory
    "multi-line": "HumanEval-MultiLineInfilling.jsonl.gz",
    "random-span": "HumanEval-RandomSpanInfilling.jsonl.gz",
}

PASSED, FAILED, TIMED_OUT = "passed", "failed", "timed_out"


def load_problems(data_dir: str | Path, subset: str) -> list[dict]:
    """Records of one subset, read in place from ``data_dir`` (.jsonl.gz or .jsonl)."""
    if subset not in SUBSETS:
        raise ValueError(f"unknown subset {subset!r} (choose from {', '.join(SUBSETS)})")
    path = Path(data_dir) / SUBSETS[subset]
    if not path.exists() and path.with_suffix("").exists():
        path = path.with_suffix("")
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (is --data the humaneval-infilling directory?)")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def spread(problems: Sequence[dict], n: int) -> list[dict]:
    """``n`` problems evenly spaced over ``problems``: a --limit run then samples every task of the
    benchmark instead of only the first few (the files are sorted by task)."""
    if n >= len(problems):
        return list(problems)
    step = len(problems) / n
    return [problems[int(i * step)] for i in range(n)]


def build_program(problem: dict, completion: str) -> str:
    return (
        problem["prompt"]
        + completion
        + problem["suffix"]
        + "\n"
        + problem["test"]
        + "\n"
        + f"check({problem['entry_point']})\n"
    )


def _limits(cpu_s: int, mem_bytes: int) -> Callable[[], None]:
    def apply() -> None:  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
        resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (10_000_000, 10_000_000))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        # per-user count: existing processes already exceed 1, so the program cannot fork
        resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))

    return apply


def run_program(program: str, timeout: float = 10.0, mem_mb: int = 1024) -> str:
    """Run one program in a fresh, limited subprocess; "passed", "failed" or "timed_out"."""
    with tempfile.TemporaryDirectory(prefix="diffill-he-") as tmp:
        script = Path(tmp) / "program.py"
        script.write_text(program, encoding="utf-8")
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", str(script)],
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_limits(int(timeout) + 1, mem_mb * 1024 * 1024),  # noqa: PLW1509
            start_new_session=True,
            close_fds=True,
        )
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            return TIMED_OUT
        if rc == -signal.SIGXCPU or rc == -signal.SIGKILL:
            return TIMED_OUT
        return PASSED if rc == 0 else FAILED


@dataclass
class EvalResult:
    subset: str
    n: int
    passed: int = 0
    failed: int = 0
    timed_out: int = 0
    per_task: dict[str, str] = field(default_factory=dict)
    mean_latency_ms: float | None = None
    mean_tokens: float | None = None
    settings: dict = field(default_factory=dict)

    @property
    def pass_at_1(self) -> float:
        return 100.0 * self.passed / max(self.n, 1)

    def summary(self) -> dict:
        out = {
            "subset": self.subset,
            "n": self.n,
            "passed": self.passed,
            "failed": self.failed,
            "timed_out": self.timed_out,
            "pass@1": round(self.pass_at_1, 2),
        }
        if self.mean_latency_ms is not None:
            out["mean_latency_ms"] = round(self.mean_latency_ms, 1)
        if self.mean_tokens is not None:
            out["mean_completion_tokens"] = round(self.mean_tokens, 2)
        out.update(self.settings)
        return out


def score(
    problems: Sequence[dict],
    completions: dict[str, str],
    subset: str,
    timeout: float = 10.0,
    workers: int = 2,
) -> EvalResult:
    """Execute every problem with its completion (a missing completion counts as a failure)."""
    res = EvalResult(subset=subset, n=len(problems))

    def one(p: dict) -> tuple[str, str]:
        if p["task_id"] not in completions:
            return p["task_id"], FAILED
        return p["task_id"], run_program(build_program(p, completions[p["task_id"]]), timeout)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for task_id, outcome in pool.map(one, problems):
            res.per_task[task_id] = outcome
            if outcome == PASSED:
                res.passed += 1
            elif outcome == TIMED_OUT:
                res.timed_out += 1
            else:
                res.failed += 1
    return res


def read_samples(path: str | Path) -> dict[str, str]:
    """``{"task_id", "completion"}`` JSON lines (the upstream harness's sample format)."""
    out: dict[str, str] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rec = json.loads(line)
                out[rec["task_id"]] = rec["completion"]
    return out


def write_samples(
    path: str | Path, completions: dict[str, str], extra: dict[str, dict] | None = None
) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for task_id, text in completions.items():
            rec = {"task_id": task_id, "completion": text, **((extra or {}).get(task_id, {}))}
            fh.write(json.dumps(rec) + "\n")


def generate(
    engine,  # noqa: ANN001 - diffusion_core.engine.Engine (imported lazily by callers)
    problems: Iterable[dict],
    length: str = "fixed",
    max_tokens: int = 32,
    options=None,  # noqa: ANN001 - SamplingOptions
    progress: bool = True,
) -> tuple[dict[str, str], dict[str, dict]]:
    """Greedy completions for ``problems`` with one length policy.

    ``fixed``: ``max_tokens`` masks, the model ends early with eos; ``predict``: the model
    predicts the length from ``max_tokens`` masks (``diffusion_core/length.py``); ``ensemble``: the
    sampler's length-ensemble decoding; ``oracle``: exactly as many masks as the true middle has
    tokens (an upper bound on what length handling can give).
    """
    from dataclasses import replace

    from ..sampler import SamplingOptions

    if length not in ("fixed", "predict", "ensemble", "oracle"):
        raise ValueError(f"unknown length policy {length!r}")
    # the oracle's mask count is exact: decode it as a fixed count
    base = replace(options or SamplingOptions(), length="fixed" if length == "oracle" else length)
    completions: dict[str, str] = {}
    info: dict[str, dict] = {}
    problems = list(problems)
    t_start = time.time()
    for i, p in enumerate(problems):
        n = max_tokens
        if length == "oracle":
            n = max(1, engine.count_tokens(p["canonical_solution"]))
        c = engine.infill(p["prompt"], p["suffix"], max_tokens=n, options=base)
        completions[p["task_id"]] = c.text
        info[p["task_id"]] = {"latency_ms": round(c.latency_ms, 1), "tokens": c.tokens, "steps": c.steps}
        if progress:
            rate = (i + 1) / max(time.time() - t_start, 1e-6)
            print(f"\r{i + 1}/{len(problems)} generated ({rate:.1f}/s)", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return completions, info
