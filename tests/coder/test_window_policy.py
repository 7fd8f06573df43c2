"""The draft window is kept only where it pays on this machine (coder/window_policy.py), and a
window of 1 is the base's AR decoding at one row per forward."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffusion_core.checkpoint import CheckpointError
from diffusion_core.coder import window_policy
from diffusion_core.coder.ar import ar_sample
from diffusion_core.coder.sampler import CoderStats, coder_sample
from diffusion_core.coder.window_policy import DRAFT_GAIN, choose_window, step_cost_ratio
from diffusion_core.engine import Engine
from diffusion_core.interface import SamplingOptions
from diffusion_core.sampler import Canvas

PREFIX = "def total(xs: list[int]) -> int:\n    s = 0\n    for x in xs:\n        "
SUFFIX = "\n    return s\n"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def engine(coder_dirs: tuple[Path, Path]) -> Engine:
    base, adapter = coder_dirs
    return Engine.from_pretrained(adapter, base=base, device="cpu", dtype="float32", progress=False)


def _rows_per_forward(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    rows: list[int] = []
    real = engine.model.forward
    monkeypatch.setattr(
        engine.model, "forward", lambda ids, **kw: rows.append(ids.shape[1]) or real(ids, **kw)
    )
    return rows


@pytest.mark.parametrize("quality", [1.0, 0.5])
def test_window_one_is_the_base_alone_one_row_per_forward(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, quality: float
) -> None:
    p, s = engine.fit_context(PREFIX, SUFFIX)
    canvas = Canvas(p, s, 12)
    want = ar_sample(engine.model, engine.family, canvas)
    rows = _rows_per_forward(engine, monkeypatch)
    stats = CoderStats()
    got = coder_sample(
        engine.model, engine.adapter, engine.family, canvas, SamplingOptions(quality=quality), 1, stats=stats
    )
    assert got.tokens == want.tokens and got.steps == want.steps
    assert rows[1:] and set(rows[1:]) == {1}  # after the context, the committed token alone
    assert stats.adapter_commits == 0


def test_a_wider_step_that_costs_more_than_drafts_bring_turns_the_window_off(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIFFILL_WINDOW", "auto")
    slow = choose_window(engine.model, engine.adapter, 8, CPU, measure=lambda w: 3.4)
    assert (slow.window, slow.configured, slow.step_cost) == (1, 8, 3.4)
    cheap = choose_window(engine.model, engine.adapter, 8, CPU, measure=lambda w: DRAFT_GAIN - 0.05)
    assert cheap.window == 8

    def never(w: int) -> float:
        raise AssertionError("an accelerator is not measured")

    assert choose_window(engine.model, engine.adapter, 8, torch.device("cuda"), measure=never).window == 8


def test_the_environment_forces_a_window_or_names_its_bad_value(
    engine: Engine, coder_dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(w: int) -> float:
        raise AssertionError("a forced window is not measured")

    monkeypatch.setenv("DIFFILL_WINDOW", "3")
    assert choose_window(engine.model, engine.adapter, 8, CPU, measure=never).window == 3
    monkeypatch.setenv("DIFFILL_WINDOW", "configured")
    assert choose_window(engine.model, engine.adapter, 8, CPU, measure=never).window == 8
    monkeypatch.setenv("DIFFILL_WINDOW", "wide")
    base, adapter = coder_dirs
    with pytest.raises(CheckpointError, match="DIFFILL_WINDOW.*'wide'"):
        Engine.from_pretrained(adapter, base=base, device="cpu", dtype="float32", progress=False)


def test_step_cost_ratio_compares_a_window_step_with_a_one_row_step(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clock that advances by the rows each forward runs: the measured ratio is exactly the
    wider step's rows over one (so the two steps are the sampler's shapes, timed apart)."""
    now = [0.0]
    real = engine.model.forward

    def forward(ids: torch.Tensor, **kw):  # noqa: ANN003, ANN202
        now[0] += ids.shape[1]
        return real(ids, **kw)

    monkeypatch.setattr(engine.model, "forward", forward)
    assert step_cost_ratio(engine.model, engine.adapter, 8, clock=lambda: now[0]) == 9.0


def test_the_engine_loads_with_the_measured_window_and_says_so(
    coder_dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIFFILL_WINDOW", "auto")
    monkeypatch.setattr(window_policy, "step_cost_ratio", lambda model, adapter, w: 2.9)
    base, adapter = coder_dirs
    eng = Engine.from_pretrained(adapter, base=base, device="cpu", dtype="float32", progress=False)
    assert eng.window == 1
    about = eng.info()["draft_window"]
    assert about["window"] == 1 and about["configured"] == 8 and about["step_cost_ratio"] == 2.9
    assert "more than drafts bring" in about["reason"]
    # and it still completes: the base's own answer
    out = eng.infill(PREFIX, SUFFIX, max_tokens=8, options=SamplingOptions(quality=1.0))
    ref = eng.infill(PREFIX, SUFFIX, max_tokens=8, options=SamplingOptions(decoder="ar"))
    assert out.text == ref.text and out.steps == ref.steps
