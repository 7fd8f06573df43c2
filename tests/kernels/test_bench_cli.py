"""`diffill bench` runs end to end on the CPU and writes a consistent JSON + markdown report."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from diffill.cli import main

ARGS = [
    "bench", "--device", "cpu", "--quick", "--threads", "1", "--models", "default-shape", "--contexts", "40",
    "--middles", "20", "--steps-per-block", "2", "--block-size", "16",
]  # fmt: skip


def test_bench_cpu_smoke(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    try:
        rc = main([*ARGS, "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)  # --threads is process-wide
    assert rc == 0
    (js,) = tmp_path.glob("latency-cpu-*.json")
    (md,) = tmp_path.glob("latency-cpu-*.md")
    result = json.loads(js.read_text())
    assert result["meta"]["steps_per_block"] == 2 and result["meta"]["bandwidth_gb_s"] > 0
    cells = {(c["middle"], c["variant"]): c for c in result["cells"]}
    assert set(cells) == {(20, v) for v in ("engine", "eager", "reference", "ar")}
    # fixed steps: 2 per block, and the 20-token middle has two blocks (16 + 4)
    assert cells[(20, "engine")]["steps"] == 4 and cells[(20, "reference")]["steps"] == 4
    assert cells[(20, "ar")]["steps"] == 20  # one forward per token
    for row in result["rows"]:
        assert row["speedup_vs_reference"] > 0 and row["tokens_per_s_vs_ar"] > 0
        assert row["floor_ms"] > 0 and row["p95_ms"] >= row["p50_ms"]
    assert "| default-shape | 40 | 20 |" in md.read_text()
