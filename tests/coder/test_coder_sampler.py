"""Diffill-Coder's sampler on a tiny random coder: the frontier is the base model's own next
token, quality 1 is greedy AR decoding token for token, the context K/V is computed once, and
lower quality commits several tokens per forward."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import diffusion_core.coder.sampler as coder_sampler
from diffusion_core.coder.sampler import CoderStats, coder_sample, context_ids, step_mask
from diffusion_core.engine import Engine
from diffusion_core.interface import Cancelled, SamplingOptions
from diffusion_core.model import Adapted
from diffusion_core.sampler import Canvas, _banned

PREFIX = "def read_lines(path: str) -> list[str]:\n    with open(path) as handle:\n        "
SUFFIX = "\n\n\nclass Counter:\n    pass\n"


@pytest.fixture(scope="module")
def engine(coder_dirs: tuple[Path, Path]) -> Engine:
    base, adapter = coder_dirs
    return Engine.from_pretrained(adapter, base=base, device="cpu", dtype="float32", progress=False)


def _canvas(engine: Engine, n: int) -> Canvas:
    p, s = engine.fit_context(PREFIX, SUFFIX)
    return Canvas(p, s, n)


def _greedy_ar(engine: Engine, canvas: Canvas) -> list[int]:
    """Plain causal decoding of the FIM prompt with full recomputation (no cache, no adapter)."""
    fam, model = engine.family, engine.model
    seq = context_ids(fam, canvas.prefix, canvas.suffix)
    n0, banned = len(seq), _banned(fam)
    ends = set(fam.eos_ids)
    with torch.no_grad():
        for _ in range(canvas.max_tokens):
            logits = model.logits(model(torch.tensor([seq]), causal=True)[0, -1])
            logits[banned] = float("-inf")
            tok = int(logits.argmax())
            if tok in ends:
                break
            seq.append(tok)
    return seq[n0:]


def test_the_frontier_is_the_base_models_next_token(engine: Engine) -> None:
    canvas = _canvas(engine, 12)
    ctx = context_ids(engine.family, canvas.prefix, canvas.suffix)
    model = engine.model
    with torch.no_grad():
        want = model.logits(model(torch.tensor([ctx]), causal=True)[0, -1])
        # the sampler's first forward: the whole context, then a window of masks with the adapter
        window = [engine.family.mask_id] * 6
        cache = model.new_cache(1, len(ctx) + 12)
        mask = step_mask(0, len(ctx), len(window), cache.length, torch.device("cpu"))
        h = model(torch.tensor([ctx + window]), cache=cache, start=0, attn_mask=mask,
                  adapted=Adapted(engine.adapter, rows_from=len(ctx)))  # fmt: skip
        got = model.logits(h[0, len(ctx) - 1])
        # the window itself is changed by the adapter (it is not the base's forward there)
        plain = model.logits(model(torch.tensor([ctx + window]), causal=True)[0, -1])
        adapted = model.logits(h[0, -1])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(adapted, plain, atol=1e-3)


def test_quality_one_is_greedy_ar_token_for_token(engine: Engine) -> None:
    canvas = _canvas(engine, 20)
    stats = CoderStats()
    out = coder_sample(engine.model, engine.adapter, engine.family, canvas, SamplingOptions(quality=1.0),
                       engine.window, stats=stats)  # fmt: skip
    ref = _greedy_ar(engine, canvas)
    assert out.tokens == ref
    assert len(ref) >= 5  # the random base writes something before any end token
    assert stats.adapter_commits == 0 and stats.forwards == stats.base_commits


def _confident_every_other(monkeypatch: pytest.MonkeyPatch) -> None:
    """Window positions alternate between sure and unsure, so commits ahead of the frontier leave
    gaps and the next forward appends runs of several tokens."""
    real = coder_sampler._score

    def scored(logits, opts, gen):  # noqa: ANN001, ANN202
        tok, _ = real(logits, opts, gen)
        conf = torch.zeros(tok.shape, dtype=torch.float32)
        conf[::2] = 1.0
        return tok, conf

    monkeypatch.setattr(coder_sampler, "_score", scored)


@pytest.mark.parametrize("ahead", [False, True])
def test_context_kv_is_computed_once(engine: Engine, monkeypatch: pytest.MonkeyPatch, ahead: bool) -> None:
    """Every context and frontier position goes through the base exactly once: each forward
    appends only the tokens committed since the previous one."""
    if ahead:
        _confident_every_other(monkeypatch)
    canvas = _canvas(engine, 16)
    n_ctx = len(context_ids(engine.family, canvas.prefix, canvas.suffix))
    seen: list[tuple[int, int]] = []  # (start, rows before the adapter's) per forward
    real = engine.model.forward

    def counting(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        seen.append((kw["start"], kw["adapted"].rows_from))
        return real(*args, **kw)

    monkeypatch.setattr(engine.model, "forward", counting)
    out = coder_sample(engine.model, engine.adapter, engine.family, canvas, SamplingOptions(quality=0.5),
                       engine.window)  # fmt: skip
    positions = [p for start, rows in seen for p in range(start, start + rows)]
    assert seen[0] == (0, n_ctx)  # the first forward encodes the whole context
    assert len(positions) == len(set(positions))  # nothing is encoded twice
    assert positions == list(range(len(positions)))  # and nothing is skipped
    assert len(seen) == out.steps
    if ahead:
        assert max(rows for _, rows in seen[1:]) > 1


def test_lower_quality_commits_ahead_of_the_frontier(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """With every window position confident, one forward commits the whole window."""
    real = coder_sampler._score

    def confident(logits, opts, gen):  # noqa: ANN001, ANN202
        tok, _ = real(logits, opts, gen)
        return tok, torch.ones_like(tok, dtype=torch.float32)

    monkeypatch.setattr(coder_sampler, "_score", confident)
    canvas = _canvas(engine, 16)
    fast = CoderStats()
    out = coder_sample(
        engine.model, engine.adapter, engine.family, canvas, SamplingOptions(quality=0.5), 8, stats=fast
    )
    slow = CoderStats()
    coder_sample(
        engine.model, engine.adapter, engine.family, canvas, SamplingOptions(quality=1.0), 8, stats=slow
    )
    assert fast.adapter_commits > 0
    assert fast.forwards < slow.forwards
    assert (fast.base_commits + fast.adapter_commits) / fast.forwards > 1.5
    assert len(out.tokens) <= 16


def test_a_committed_end_token_ends_the_middle(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    end = engine.family.eos_ids[0]
    real = coder_sampler._score
    calls = {"n": 0}

    def end_at_third(logits, opts, gen):  # noqa: ANN001, ANN202
        tok, conf = real(logits, opts, gen)
        calls["n"] += 1
        if calls["n"] == 3:  # the frontier of the third forward is an end token
            tok = tok.clone()
            tok[0] = end
        return tok, conf

    monkeypatch.setattr(coder_sampler, "_score", end_at_third)
    out = coder_sample(engine.model, engine.adapter, engine.family, _canvas(engine, 30),
                       SamplingOptions(quality=1.0), 8)  # fmt: skip
    assert out.stop_reason == "eos" and len(out.tokens) == 2 and out.steps == 3


def test_engine_stop_strings_and_cancel(engine: Engine) -> None:
    full = engine.infill(PREFIX, SUFFIX, max_tokens=24, options=SamplingOptions(quality=1.0))
    first = full.text[:3]
    assert first, "the random base wrote nothing"
    c = engine.infill_until(PREFIX, SUFFIX, [first[-1]], max_tokens=24, options=SamplingOptions(quality=1.0))
    assert c.stop_reason == "stop"
    assert c.text == full.text[: full.text.index(first[-1])]
    assert c.steps < full.steps or full.steps <= len(first)
    with pytest.raises(Cancelled):
        engine.infill(PREFIX, SUFFIX, max_tokens=8, cancel=lambda: True)


def test_engine_info_names_base_adapter_and_family(engine: Engine, coder_dirs: tuple[Path, Path]) -> None:
    info = engine.info()
    base, adapter = coder_dirs
    assert info["family"] == "diffill-coder"
    assert info["base"] == str(base) and info["adapter"] == str(adapter)
    assert info["adapter_parameters"] > 0
    assert engine.tokenizer.decode([engine.family.mask_id]) == ""  # never shown to a user
