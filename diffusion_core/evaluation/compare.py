"""Several decoders on the same HumanEval-Infilling tasks in one run: pass@1, latency, tokens per
forward.

Why one run: the machine is shared and noisy, so decoders are interleaved task by task (the
order rotates) and only ratios measured together are meaningful. Every decoder gets the same
prompt budget and the same truncation rule, applied as a stop string so that a left-to-right
decoder stops as early as the rule allows:

- single-line: the completion is the first line (the stop is the newline; the newline is put
  back, since the hole is a whole line);
- random-span: the completion ends where it starts repeating the text after the hole (the stop
  is the suffix's first 32 characters).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .humaneval import score

__all__ = ["Decoder", "compare", "markdown_table", "stops_for"]


@dataclass
class Decoder:
    name: str
    engine: Any  # diffusion_core.engine.Engine
    options: Any  # SamplingOptions
    max_tokens: int
    records: dict[str, dict] = field(default_factory=dict)


def stops_for(problem: dict, subset: str) -> tuple[str, ...]:
    if subset.startswith("single-line"):
        return ("\n",)
    head = problem["suffix"][:32]
    return (head,) if head else ()


def _completion(text: str, reason: str, subset: str) -> str:
    if subset.startswith("single-line"):
        return text.split("\n", 1)[0] + "\n"
    return text


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def compare(
    decoders: Sequence[Decoder],
    problems: Sequence[dict],
    subset: str,
    workers: int = 2,
    progress: bool = True,
) -> list[dict]:
    """Run every decoder on every problem (interleaved), score them, and summarise each."""
    t0 = time.time()
    for i, p in enumerate(problems):
        k = i % len(decoders)
        for d in list(decoders[k:]) + list(decoders[:k]):
            c = d.engine.infill_until(p["prompt"], p["suffix"], stops_for(p, subset), d.max_tokens, d.options)
            d.records[p["task_id"]] = {
                "completion": _completion(c.text, c.stop_reason, subset),
                "latency_ms": round(c.latency_ms, 1),
                "tokens": c.tokens,
                "forwards": c.steps,
                "stop_reason": c.stop_reason,
            }
        if progress:
            print(
                f"\r{subset}: {i + 1}/{len(problems)} ({time.time() - t0:.0f} s)",
                end="",
                file=sys.stderr,
                flush=True,
            )
    if progress:
        print(file=sys.stderr)
    rows = []
    for d in decoders:
        res = score(problems, {t: r["completion"] for t, r in d.records.items()}, subset, workers=workers)
        for t, outcome in res.per_task.items():
            d.records[t]["outcome"] = outcome
        lat = [r["latency_ms"] for r in d.records.values()]
        toks = sum(r["tokens"] for r in d.records.values())
        fwd = sum(r["forwards"] for r in d.records.values())
        rows.append(
            {
                "decoder": d.name,
                "model": d.engine.model_id,
                "n": res.n,
                "passed": res.passed,
                "pass@1": round(res.pass_at_1, 1),
                "latency_ms_mean": round(statistics.fmean(lat), 1),
                "latency_ms_p50": round(_pct(lat, 0.5), 1),
                "latency_ms_p95": round(_pct(lat, 0.95), 1),
                "tokens_per_forward": round(toks / max(fwd, 1), 2),
                "mean_tokens": round(toks / max(len(lat), 1), 1),
                # end to end, the prompt included: what a user waits per token of the answer
                "tokens_per_s": round(toks / max(sum(lat) / 1000.0, 1e-9), 2),
            }
        )
    return rows


def markdown_table(rows: Sequence[dict], subset: str) -> str:
    head = (
        "| decoder | pass@1 | passed | latency mean / p50 / p95 (ms) | tokens per forward | tokens "
        "| tokens/s |"
    )
    lines = [f"**{subset}** ({rows[0]['n']} tasks)", "", head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['decoder']} | {r['pass@1']} | {r['passed']}/{r['n']} | {r['latency_ms_mean']:.0f} / "
            f"{r['latency_ms_p50']:.0f} / {r['latency_ms_p95']:.0f} | {r['tokens_per_forward']} | "
            f"{r['mean_tokens']} | {r.get('tokens_per_s', '-')} |"
        )
    return "\n".join(lines)


def write_results(
    out_dir: str | Path, subset: str, rows: list[dict], decoders: Sequence[Decoder], meta: dict
) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{subset}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    (out / f"{subset}.md").write_text(markdown_table(rows, subset) + "\n")
    with open(out / f"{subset}.samples.jsonl", "w", encoding="utf-8") as fh:
        for d in decoders:
            for task, rec in d.records.items():
                fh.write(json.dumps({"decoder": d.name, "task_id": task, **rec}) + "\n")
    return out
