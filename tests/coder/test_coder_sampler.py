"""Diffill-Coder's sampler on a tiny random coder: the frontier is the base model's own next
token, quality 1 is greedy AR decoding token for token, the context K/V is computed once, and
lower quality commits several tokens per forward."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import diffusion_core.coder.sampler as coder_sampler
from diffusion_core.coder.family import FIM_ORDERS
from diffusion_core.coder.sampler import CoderStats, coder_sample, context_ids, step_mask
from diffusion_core.engine import Engine
from diffusion_core.interface import Cancelled, InfillRequest, SamplingOptions
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
        mask = step_mask(0, len(ctx), len(window), torch.device("cpu"))
        h = model(
            torch.tensor([ctx + window]),
            cache=cache,
            start=0,
            attn_mask=mask,
            adapted=Adapted(engine.adapter, rows_from=len(ctx)),
        )
        got = model.logits(h[0, len(ctx) - 1])
        # the window itself is changed by the adapter (it is not the base's forward there)
        plain = model.logits(model(torch.tensor([ctx + window]), causal=True)[0, -1])
        adapted = model.logits(h[0, -1])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(adapted, plain, atol=1e-3)


@pytest.mark.parametrize("order", FIM_ORDERS)
def test_quality_one_is_greedy_ar_token_for_token(engine: Engine, order: str) -> None:
    engine = dataclasses.replace(engine, family=dataclasses.replace(engine.family, fim_order=order))
    canvas = _canvas(engine, 20)
    stats = CoderStats()
    out = coder_sample(
        engine.model,
        engine.adapter,
        engine.family,
        canvas,
        SamplingOptions(quality=1.0),
        engine.window,
        stats=stats,
    )
    ref = _greedy_ar(engine, canvas)
    assert len(ref) >= 5  # the random base writes something before any end token
    # the adapter's end token may end it earlier; up to there it is the base's answer exactly
    assert out.tokens == ref[: len(out.tokens)]
    assert out.stop_reason == "eos" or out.tokens == ref
    plain_stats = CoderStats()
    plain = coder_sample(
        engine.model,
        engine.adapter,
        engine.family,
        canvas,
        SamplingOptions(quality=1.0, verify=False),
        engine.window,
        stats=plain_stats,
    )
    assert plain.tokens == ref  # frontier only: no adapter token at all
    assert plain_stats.adapter_commits == 0 and plain_stats.forwards == plain_stats.base_commits


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


@pytest.mark.parametrize("verify", [False, True])
@pytest.mark.parametrize("ahead", [False, True])
def test_context_kv_is_computed_once(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, ahead: bool, verify: bool
) -> None:
    """The context goes through the base exactly once, in the first forward; after it each
    forward appends only the tokens committed since the previous one. Only a draft the base
    refuses makes a position be written again (from that position on)."""
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
    stats = CoderStats()
    out = coder_sample(
        engine.model,
        engine.adapter,
        engine.family,
        canvas,
        SamplingOptions(quality=0.5, verify=verify),
        engine.window,
        stats=stats,
    )
    assert seen[0] == (0, n_ctx)  # the first forward encodes the whole context
    assert all(start >= n_ctx for start, _ in seen[1:])  # and no later one touches it
    assert len(seen) == out.steps
    rewinds = sum(1 for (s0, r0), (s1, _) in zip(seen, seen[1:]) if s1 < s0 + r0)
    assert rewinds == stats.rejected
    if not verify:
        positions = [p for start, rows in seen for p in range(start, start + rows)]
        assert positions == list(range(len(positions)))  # each position once, none skipped
    if ahead:
        assert max(rows for _, rows in seen[1:]) > 1


def test_verified_drafts_that_match_the_base_are_all_kept(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An adapter that drafts the base's own next tokens: every draft is accepted, so several
    tokens come from each forward and the answer is still the base's, token for token."""
    canvas = _canvas(engine, 16)
    ref = _greedy_ar(engine, canvas)

    def oracle(logits, positions, opts, gen):  # noqa: ANN001, ANN202
        return [ref[j] if j < len(ref) else engine.family.eos_ids[0] for j in positions], [0.99] * len(
            positions
        )

    monkeypatch.setattr(coder_sampler, "window_tokens", oracle)
    stats = CoderStats()
    out = coder_sample(
        engine.model, engine.adapter, engine.family, canvas, SamplingOptions(quality=1.0), 8, stats=stats
    )
    assert out.tokens == ref[:16]
    assert stats.rejected == 0 and stats.adapter_commits > 0
    assert len(out.tokens) / out.steps >= 3


def test_refused_drafts_are_replaced_by_the_base_token(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every other draft wrong: each is caught, the base's token replaces it, and the answer is
    exactly the base's greedy decoding."""
    canvas = _canvas(engine, 16)
    ref = _greedy_ar(engine, canvas)
    vocab = engine.tokenizer.vocab_size

    def half_wrong(logits, positions, opts, gen):  # noqa: ANN001, ANN202
        toks = [
            ref[j] if j % 2 == 0 and j < len(ref) else (ref[j] + 1) % vocab if j < len(ref) else 5
            for j in positions
        ]
        return toks, [0.8] * len(positions)

    monkeypatch.setattr(coder_sampler, "window_tokens", half_wrong)
    stats = CoderStats()
    out = coder_sample(
        engine.model, engine.adapter, engine.family, canvas, SamplingOptions(quality=1.0), 8, stats=stats
    )
    assert out.tokens == ref[: len(out.tokens)] and len(out.tokens) == min(16, len(ref))
    assert stats.rejected > 0


def test_lower_quality_commits_ahead_of_the_frontier(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without verification, every window position above tau is final: one forward commits the
    whole window."""
    real = coder_sampler._score

    def confident(logits, opts, gen):  # noqa: ANN001, ANN202
        tok, _ = real(logits, opts, gen)
        return tok, torch.ones_like(tok, dtype=torch.float32)

    monkeypatch.setattr(coder_sampler, "_score", confident)
    canvas = _canvas(engine, 16)
    fast = CoderStats()
    out = coder_sample(
        engine.model,
        engine.adapter,
        engine.family,
        canvas,
        SamplingOptions(quality=0.5, verify=False),
        8,
        stats=fast,
    )
    slow = CoderStats()
    coder_sample(
        engine.model,
        engine.adapter,
        engine.family,
        canvas,
        SamplingOptions(quality=1.0, verify=False),
        8,
        stats=slow,
    )
    assert fast.adapter_commits > 0
    assert fast.forwards < slow.forwards
    assert (fast.base_commits + fast.adapter_commits) / fast.forwards > 1.5
    assert len(out.tokens) <= 16


def test_an_end_token_from_the_base_ends_the_middle(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
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
    out = coder_sample(
        engine.model,
        engine.adapter,
        engine.family,
        _canvas(engine, 30),
        SamplingOptions(quality=1.0, verify=False),
        8,
    )
    assert out.stop_reason == "eos" and len(out.tokens) == 2 and out.steps == 3


@pytest.mark.parametrize(("conf", "ends"), [(0.999, True), (0.6, False)])
def test_the_adapters_end_token_ends_the_middle_when_sure(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, conf: float, ends: bool
) -> None:
    """The base never ends a middle; the adapter's end token does, at confidence >= tau."""
    canvas = _canvas(engine, 16)
    ref = _greedy_ar(engine, canvas)
    end = engine.family.eos_ids[0]

    def end_at_four(logits, positions, opts, gen):  # noqa: ANN001, ANN202
        return [end if j == 4 else ref[j] for j in positions], [conf if j == 4 else 0.99 for j in positions]

    monkeypatch.setattr(coder_sampler, "window_tokens", end_at_four)
    out = coder_sample(engine.model, engine.adapter, engine.family, canvas, SamplingOptions(quality=0.7), 8)
    if ends:
        assert out.stop_reason == "eos" and out.tokens == ref[:4]
    else:
        assert out.tokens == ref[: len(out.tokens)] and len(out.tokens) > 4


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


@pytest.mark.parametrize("decoder", ["diffusion", "ar"])
def test_engine_time_budget_ends_the_suggestion_at_a_line_end(engine: Engine, decoder: str) -> None:
    """A spent time budget ends the completion at the next line end: the first line whole, the
    rest never decoded; a budget that is not spent changes nothing."""
    prefix, suffix = "import os\n", "\n\nprint(1)\n"
    opts = SamplingOptions(quality=1.0, decoder=decoder)
    full = engine.infill(prefix, suffix, max_tokens=40, options=opts)
    first, _, rest = full.text.partition("\n")
    assert first.strip() and rest, f"the random base wrote no second line: {full.text!r}"
    (cut,) = engine.infill_batch([InfillRequest(prefix, suffix, 40, opts, time_budget_ms=0)])
    assert cut.text == first and cut.stop_reason == "time"
    assert cut.steps < full.steps
    (kept,) = engine.infill_batch([InfillRequest(prefix, suffix, 40, opts, time_budget_ms=600_000)])
    assert kept.text == full.text and kept.stop_reason == full.stop_reason
    with pytest.raises(ValueError, match="time_budget_ms"):
        engine.infill_batch([InfillRequest(prefix, suffix, 40, opts, time_budget_ms=-1)])
