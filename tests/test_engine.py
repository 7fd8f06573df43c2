"""The public Engine API and the `diffill complete` / `diffill infill` commands on a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from model_fixtures import make_tiny_model_dir

from diffill.commands.complete import split_at
from diffusion_core.engine import Cancelled, Engine, InfillRequest
from diffusion_core.sampler import SamplingOptions


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Engine:
    return Engine.from_pretrained(model_dir)


def test_infill_returns_text_without_special_tokens(engine: Engine) -> None:
    c = engine.infill("def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n", max_tokens=24)
    assert 0 < c.tokens <= 24
    assert c.steps >= 1 and c.latency_ms > 0
    assert c.stop_reason in ("eos", "length")
    for tok in ("<|mask|>", "<|endoftext|>", "<|begin|>"):
        assert tok not in c.text
    assert engine.count_tokens(c.text) <= 24 + 2  # decoding may merge differently, never balloon


def test_batch_equals_one_at_a_time(engine: Engine) -> None:
    reqs = [
        InfillRequest("import os\n", "\n", 16),
        InfillRequest("class A:\n    def f(self):\n        ", "\n", 40),
        InfillRequest("", "", 8),
    ]
    batched = engine.infill_batch(reqs)
    singles = [engine.infill(r.prefix, r.suffix, r.max_tokens) for r in reqs]
    assert [b.text for b in batched] == [s.text for s in singles]


def test_mixed_options_in_one_batch(engine: Engine) -> None:
    reqs = [
        InfillRequest("x = ", "\n", 8, SamplingOptions(quality=0.0)),
        InfillRequest("y = ", "\n", 8, SamplingOptions(quality=1.0)),
    ]
    out = engine.infill_batch(reqs)
    assert out[0].text == engine.infill("x = ", "\n", 8, SamplingOptions(quality=0.0)).text
    assert out[1].text == engine.infill("y = ", "\n", 8, SamplingOptions(quality=1.0)).text


def test_cancel_raises_and_engine_keeps_working(engine: Engine) -> None:
    with pytest.raises(Cancelled):
        engine.infill("a = 1\n", "", 64, SamplingOptions(quality=1.0), cancel=lambda: True)
    assert engine.infill("a = 1\n", "", 8).tokens > 0


def test_context_is_cut_from_the_cursor_outwards(engine: Engine) -> None:
    prefix = "".join(f"line_{i} = {i}\n" for i in range(2000))
    suffix = "".join(f"after_{i} = {i}\n" for i in range(2000))
    p, s = engine.fit_context(prefix, suffix, prefix_tokens=50, suffix_tokens=30)
    assert len(p) <= 50 and len(s) <= 30
    assert engine.tokenizer.decode(p) and prefix.endswith(engine.tokenizer.decode(p))
    assert suffix.startswith(engine.tokenizer.decode(s))


def test_negative_max_tokens_is_rejected(engine: Engine) -> None:
    with pytest.raises(ValueError):
        engine.infill("a", "b", max_tokens=-1)


def test_split_at_cursor() -> None:
    text = "def f():\n    pass\n"
    assert split_at(text, 2, 5) == ("def f():\n    ", "pass\n")
    assert split_at(text, 3, 1) == (text, "")
    for line, col in ((0, 1), (4, 1), (1, 0), (1, 10)):
        with pytest.raises(ValueError):
            split_at(text, line, col)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "diffill.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_complete_and_infill(model_dir: Path, engine: Engine, tmp_path: Path) -> None:
    src = tmp_path / "a.py"
    src.write_text("def add(a, b):\n    \n")
    r = _cli(
        "complete",
        str(src),
        "--line",
        "2",
        "--col",
        "5",
        "--model",
        str(model_dir),
        "--max-tokens",
        "12",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["raw"] == engine.infill("def add(a, b):\n    ", "\n", 12).text
    assert out["tokens"] <= 12 and out["steps"] >= 1
    from diffill.commands.complete import edit_context
    from lsp_server.postprocess import postprocess

    shown = postprocess(out["raw"], edit_context("def add(a, b):\n    ", "\n"))
    assert out["text"] == shown  # what an editor would show, not the raw middle

    bad = _cli("complete", str(src), "--line", "9", "--col", "1", "--model", str(model_dir))
    assert bad.returncode == 2 and "outside the file" in bad.stderr

    inp = tmp_path / "in.jsonl"
    inp.write_text(
        json.dumps({"task_id": "t/0", "prompt": "x = ", "suffix": "\n"})
        + "\n"
        + json.dumps({"task_id": "t/1", "prompt": "def f():\n    ", "suffix": "\n"})
        + "\n"
    )
    outp = tmp_path / "out.jsonl"
    r = _cli(
        "infill",
        "--input",
        str(inp),
        "--output",
        str(outp),
        "--model",
        str(model_dir),
        "--max-tokens",
        "8",
        "--batch",
        "2",
    )
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in outp.read_text().splitlines()]
    assert [x["task_id"] for x in rows] == ["t/0", "t/1"]
    assert rows[0]["completion"] == engine.infill("x = ", "\n", 8).text

    inp.write_text('{"task_id": "t/0", "prompt": 3}\n')
    r = _cli("infill", "--input", str(inp), "--output", str(outp), "--model", str(model_dir))
    assert r.returncode == 2 and "in.jsonl:1" in r.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["complete", "FILE", "--line", "1", "--col", "1"],
        ["infill", "--input", "IN", "--output", "OUT"],
        ["eval", "humaneval-infilling", "--limit", "1"],
        ["info"],
    ],
)
def test_every_command_reports_a_bad_model_in_one_line(tmp_path: Path, command: list[str]) -> None:
    (tmp_path / "FILE").write_text("x = 1\n")
    (tmp_path / "IN").write_text('{"task_id": "t", "prompt": "x", "suffix": ""}\n')
    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "qwen2", "num_hidden_layers": 1000000000}')
    args = [str(tmp_path / a) if a in ("FILE", "IN", "OUT") else a for a in command]
    if command[0] == "info":
        args.append(str(bad))
    else:
        args += ["--model", str(bad)]
    r = _cli(*args)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"diffill {command[0]}: "), r.stderr


def test_eval_without_the_benchmark_data_says_where_it_looked(tmp_path: Path) -> None:
    r = _cli("eval", "humaneval-infilling", "--data", str(tmp_path / "nowhere"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    (line,) = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert line.startswith("diffill eval: ") and str(tmp_path / "nowhere") in line
