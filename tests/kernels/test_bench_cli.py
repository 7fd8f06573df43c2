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


def test_bench_coder_step_on_a_small_coder_shape(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """The coder variant runs Diffill-Coder's step (one committed row + the window, adapter on)
    and reports its forwards for the 12-token middle; the AR peer runs beside it."""
    from diffusion_core.evaluation import bench
    from diffusion_core.model import ModelConfig

    small = ModelConfig(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                        intermediate_size=96, qkv_bias=True, tie_embeddings=False)  # fmt: skip
    monkeypatch.setitem(bench.SHAPES, "diffill-coder-test", small)
    threads = torch.get_num_threads()
    try:
        args = ["bench", "--device", "cpu", "--quick", "--threads", "1", "--models", "diffill-coder-test",
                "--contexts", "40", "--middles", "12", "--out", str(tmp_path)]  # fmt: skip
        assert main(args) == 0
    finally:
        torch.set_num_threads(threads)
    (js,) = tmp_path.glob("latency-cpu-*.json")
    result = json.loads(js.read_text())
    cells = {c["variant"]: c for c in result["cells"]}
    assert set(cells) == {"coder", "ar"}
    # every forward commits a token; a draft the base refuses (random weights) costs one more
    steps = cells["coder"]["steps"]
    assert 12 <= steps < 24
    (row,) = result["rows"]
    assert row["tokens_per_s_vs_ar"] is not None and row["steps"] == steps
