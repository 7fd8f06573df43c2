"""What reuse after an edit buys and what it costs: an edit in the middle of the prefix, then a
completion at the cursor, on HumanEval-Infilling single-line tasks with the default model.

For each task the *earlier* context is the task's prompt with one character missing in the
middle (the character the user has just typed back); the request of interest is the task itself.
Three runs of that request, interleaved task by task in one process:

- cold: nothing cached;
- exact: the earlier context cached, reuse up to the edit only (``DIFFILL_REUSE_AFTER_EDIT=0``);
- after-edit: the earlier context cached, the tokens after the edit moved (PrefixCache's
  ``shift_keys``, approximate; the default).

``--filler-chars N`` puts whole programs of other problems before each task, so the edit lands
in the middle of a long file (the case where recomputing after it costs most).

Reported: pass@1 of each, how many after-edit completions differ from the cold one, the share of
context tokens reused, and the latency p50/p95 of each run of the request.

    python bench/edit_reuse.py --data ../shared/benchmarks/humaneval-infilling --limit 100
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from diffusion_core.coder.prefix_cache import PrefixCache
from diffusion_core.engine import Engine
from diffusion_core.evaluation.bench import _git_commit
from diffusion_core.evaluation.compare import _completion, _pct, stops_for
from diffusion_core.evaluation.humaneval import load_problems, score, spread
from diffusion_core.runtime import cpu_name

SUBSET = "single-line"
RUNS = ("cold", "exact", "after-edit")


def earlier(prompt: str) -> str:
    """The prompt with the character nearest its middle (not a newline) missing."""
    at = len(prompt) // 2
    while at < len(prompt) - 1 and prompt[at] == "\n":
        at += 1
    return prompt[:at] + prompt[at + 1 :]


def with_filler(problems: list[dict], chars: int) -> list[dict]:
    """Each task with whole programs of *other* HumanEval problems before it (a long file whose
    last function has the hole), about ``chars`` characters; 0: the tasks as they are."""
    if chars <= 0:
        return problems
    programs: dict[str, str] = {}
    for p in problems:
        programs.setdefault(problem_of(p), p["prompt"] + p["canonical_solution"] + p["suffix"])
    out = []
    for p in problems:
        others = [code for name, code in programs.items() if name != problem_of(p)]
        filler, i = "", sum(map(ord, p["task_id"]))  # a fixed, task-dependent choice
        while len(filler) < chars and others:
            filler += others[i % len(others)].rstrip("\n") + "\n\n\n"
            i += 7
        out.append({**p, "prompt": filler + p["prompt"]})
    return out


def problem_of(p: dict) -> str:
    return p["task_id"].rsplit("/", 1)[0]  # SingleLineInfilling/HumanEval/12/L3 -> .../12


def run(engine: Engine, problems: list[dict], max_tokens: int) -> dict:
    cache = engine.prefix_cache
    assert cache is not None, "reuse after an edit needs Diffill-Coder (a prefix cache)"
    shift = engine.model.shift_keys
    records: dict[str, dict[str, dict]] = {r: {} for r in RUNS}
    t0 = time.time()
    for i, p in enumerate(problems):
        stops = stops_for(p, SUBSET)
        order = RUNS[i % 3 :] + RUNS[: i % 3]  # rotated, so no run always goes first
        for name in order:
            engine.forget()  # no K/V and no prefix cut of an earlier request
            cache.shift_keys = shift if name == "after-edit" else None
            if name != "cold":
                engine.infill_until(earlier(p["prompt"]), p["suffix"], stops, max_tokens)
            before = dict(cache.stats())
            c = engine.infill_until(p["prompt"], p["suffix"], stops, max_tokens)
            after = cache.stats()
            records[name][p["task_id"]] = {
                "completion": _completion(c.text, c.stop_reason, SUBSET),
                "latency_ms": round(c.latency_ms, 1),
                "context_tokens": after["context_tokens"] - before["context_tokens"],
                "reused": after["reused_context_tokens"] - before["reused_context_tokens"],
                "shifted": after["shifted_context_tokens"] - before["shifted_context_tokens"],
            }
        print(f"\r{i + 1}/{len(problems)} ({time.time() - t0:.0f} s)", end="", flush=True)
    print()
    engine.forget()
    cache.shift_keys = None
    rows = []
    cold = records["cold"]
    for name in RUNS:
        rec = records[name]
        res = score(problems, {t: r["completion"] for t, r in rec.items()}, SUBSET)
        lat = [r["latency_ms"] for r in rec.values()]
        ctx = sum(r["context_tokens"] for r in rec.values())
        rows.append(
            {
                "run": name,
                "n": res.n,
                "pass@1": round(res.pass_at_1, 1),
                "differs_from_cold": sum(rec[t]["completion"] != cold[t]["completion"] for t in rec),
                "reused_fraction": round(sum(r["reused"] for r in rec.values()) / max(ctx, 1), 4),
                "shifted_fraction": round(sum(r["shifted"] for r in rec.values()) / max(ctx, 1), 4),
                "latency_ms_mean": round(statistics.fmean(lat), 1),
                "latency_ms_p50": round(_pct(lat, 0.5), 1),
                "latency_ms_p95": round(_pct(lat, 0.95), 1),
            }
        )
    return {"rows": rows, "records": records}


def markdown(result: dict) -> str:
    m = result["meta"]
    lines = [
        f"# Reuse after an edit in the middle of the prefix ({m['n']} single-line tasks)",
        "",
        f"{m['cpu']}, {m['threads']} threads, {m['model']}, max_tokens {m['max_tokens']}, "
        f"fresh tail {m['fresh_tail']}, min shift {m['min_shift']}, one run, {m['date']}, "
        f"commit {m.get('commit', '?')}.",
        f"Context: {m['context_tokens_mean']} tokens on average"
        + (
            f" ({m['filler_chars']} characters of other programs before each task)."
            if m["filler_chars"]
            else "."
        ),
        "",
        "| run | pass@1 | differs from cold | context reused (of which moved) | mean / p50 / p95 ms |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['run']} | {r['pass@1']} | {r['differs_from_cold']} of {r['n']} | "
            f"{100 * r['reused_fraction']:.1f}% ({100 * r['shifted_fraction']:.1f}%) | "
            f"{r['latency_ms_mean']:.0f} / {r['latency_ms_p50']:.0f} / {r['latency_ms_p95']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/benchmarks/humaneval-infilling")
    ap.add_argument("--model", default=None, help="a Diffill-Coder directory (default: the default model)")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--fresh-tail", type=int, default=None)
    ap.add_argument("--filler-chars", type=int, default=0, help="other programs before each task (0: none)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="bench/results/edit_reuse")
    a = ap.parse_args()
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    engine = Engine.from_pretrained(a.model)
    cache = engine.prefix_cache
    if a.fresh_tail is not None:
        cache.fresh_tail = max(1, a.fresh_tail)
    problems = with_filler(spread(load_problems(a.data, SUBSET), a.limit), a.filler_chars)
    engine.infill("def f(x):\n    return", "\n", max_tokens=4)  # warm-up
    result = run(engine, problems, a.max_tokens)
    import torch

    result["meta"] = {
        "n": len(problems),
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "model": engine.model_id,
        "max_tokens": a.max_tokens,
        "fresh_tail": cache.fresh_tail,
        "filler_chars": a.filler_chars,
        "context_tokens_mean": round(  # what the model gets: after the engine's context cut
            statistics.fmean(sum(map(len, engine.fit_context(p["prompt"], p["suffix"]))) for p in problems)
        ),
        "weights": engine.info().get("cpu_weights"),
        "min_shift": cache.min_shift,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": _git_commit(),
        "defaults": {"fresh_tail": PrefixCache().fresh_tail, "min_shift": PrefixCache().min_shift},
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "results.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
