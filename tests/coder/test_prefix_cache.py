"""Context K/V reused across requests: exact (same tokens as without it), only the changed tail
of the context is computed, bounded in memory."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from diffusion_core.coder.family import FIM_ORDERS
from diffusion_core.coder.prefix_cache import PrefixCache, common_prefix
from diffusion_core.coder.sampler import CoderStats, coder_sample, context_ids
from diffusion_core.engine import Engine
from diffusion_core.interface import InfillRequest, SamplingOptions
from diffusion_core.sampler import Canvas

LINES = [
    f"def handler_{i}(request, value={i}):\n    return request.get('k{i}', value) + {i}\n" for i in range(30)
]
PREFIX = "".join(LINES) + "\ndef main():\n    total = handler_3("
SUFFIX = ")\n    print(total)\n"


@pytest.fixture(scope="module")
def engine(coder_dirs: tuple[Path, Path]) -> Engine:
    base, adapter = coder_dirs
    return Engine.from_pretrained(adapter, base=base, device="cpu", dtype="float32", progress=False)


def _run(engine: Engine, prefix: str, suffix: str, cache: PrefixCache | None, seen: list | None = None):
    p, s = engine.fit_context(prefix, suffix)
    stats = CoderStats()
    out = coder_sample(
        engine.model,
        engine.adapter,
        engine.family,
        Canvas(p, s, 12),
        SamplingOptions(quality=0.7),
        engine.window,
        stats=stats,
        prefix_cache=cache,
    )
    return out, context_ids(engine.family, p, s)


@pytest.mark.parametrize("order", FIM_ORDERS)
def test_reuse_is_exact_and_computes_only_the_changed_tail(
    engine: Engine, order: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = dataclasses.replace(engine, family=dataclasses.replace(engine.family, fim_order=order))
    cache = PrefixCache()
    first, ctx1 = _run(engine, PREFIX, SUFFIX, cache)
    rows: list[tuple[int, int]] = []
    real = engine.model.forward

    def counting(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        rows.append((kw["start"], kw["adapted"].rows_from))
        return real(*args, **kw)

    # one character typed at the cursor
    monkeypatch.setattr(engine.model, "forward", counting)
    typed, ctx2 = _run(engine, PREFIX + "r", SUFFIX, cache)
    monkeypatch.undo()
    fresh, _ = _run(engine, PREFIX + "r", SUFFIX, None)
    assert typed.tokens == fresh.tokens  # the reused K/V is the K/V
    shared = common_prefix(ctx1, ctx2)
    assert rows[0] == (shared, len(ctx2) - shared)  # the first forward ran only the new tail
    assert shared / len(ctx2) >= 0.8
    if order == "spm":  # the prefix is last: only its changed last tokens are recomputed
        assert len(ctx2) - shared <= 2
    else:  # the suffix comes after the cursor: recomputed with it
        assert len(ctx2) - shared > len(engine.tokenizer.encode(SUFFIX))
    st = cache.stats()
    assert st["reused_context_tokens"] == shared and st["prefix_cache_entries"] == 1


def test_the_same_context_again_recomputes_only_its_last_token(engine: Engine) -> None:
    cache = PrefixCache()
    a, ctx = _run(engine, PREFIX, SUFFIX, cache)
    b, _ = _run(engine, PREFIX, SUFFIX, cache)
    assert a.tokens == b.tokens
    assert cache.stats()["reused_context_tokens"] == len(ctx) - 1


def test_memory_is_bounded(engine: Engine) -> None:
    one = engine.model.new_cache(1, 64)
    per = 2 * one.k.numel() * one.k.element_size()
    cache = PrefixCache(max_bytes=3 * per, slack=0)
    for i in range(6):
        c, _, _ = cache.take([i, 1, 2], 64, lambda m: engine.model.new_cache(1, m))
        cache.put([i, 1, 2], c)
    assert cache.stats()["prefix_cache_entries"] == 3 and cache.nbytes <= 3 * per
    # the most recent ones are kept
    _, n, _ = cache.take([5, 1, 2, 9], 64, lambda m: engine.model.new_cache(1, m))
    assert n == 3


def test_engine_reuses_across_infill_calls(engine: Engine) -> None:
    engine.prefix_cache.clear()
    before = engine.info()["prefix_cache"]["reused_context_tokens"]
    engine.infill(PREFIX, SUFFIX, max_tokens=6)
    engine.infill(PREFIX + "x", SUFFIX, max_tokens=6)
    engine.infill(PREFIX + "x", SUFFIX, max_tokens=6, options=SamplingOptions(decoder="ar"))
    info = engine.info()["prefix_cache"]
    assert info["reused_context_tokens"] - before > 0.8 * 2 * len(engine.tokenizer.encode(PREFIX))
    with torch.no_grad():
        assert info["prefix_cache_bytes"] > 0


def test_the_engines_cut_of_a_long_context_stays_put_while_typing(engine: Engine) -> None:
    """A client that sends more context than the engine's budget (an HTTP editor plugin sending
    the whole file) types at the end: the engine cuts at a line start, which stays where it is
    for most keystrokes, so almost every request shares all but its last tokens with the one
    before (and the context K/V is reused). A cut a fixed number of tokens from the cursor would
    move its start with every token typed."""
    budget = engine.max_prefix_tokens
    engine.max_prefix_tokens = 200
    try:
        body = "".join(LINES * 3)
        typed = "    result = compute_total(values, weights) + offset\n"
        prev, kept = None, 0
        for i in range(1, len(typed) + 1):
            ids, _ = engine.fit_context(body + typed[:i], SUFFIX)
            assert len(ids) <= 200
            if prev is not None:
                kept += common_prefix(prev, ids) >= len(prev) - 3
            prev = ids
    finally:
        engine.max_prefix_tokens = budget
    assert kept >= 0.9 * (len(typed) - 1), f"{kept} of {len(typed) - 1} keystrokes kept the cut"


def _reused_by(engine: Engine, *requests: InfillRequest) -> list[int]:
    """Context tokens each request took from the prefix cache, run one after another."""
    got = []
    for r in requests:
        before = engine.prefix_cache.stats()["reused_context_tokens"]
        engine.infill_batch([r])
        got.append(engine.prefix_cache.stats()["reused_context_tokens"] - before)
    return got


@pytest.mark.parametrize("decoder", ["diffusion", "ar"])
def test_cached_context_is_lent_only_within_its_scope(engine: Engine, decoder: str) -> None:
    """One editor session's (one HTTP client's) cached context K/V never serves another's
    request: a hit would show in the other's latency that this context was sent recently."""
    engine.prefix_cache.clear()
    opts = SamplingOptions(decoder=decoder)
    alice = InfillRequest(PREFIX, SUFFIX, 6, opts, cache_scope="alice-session-0001")
    typed = dataclasses.replace(alice, prefix=PREFIX + "x")
    bob = dataclasses.replace(typed, cache_scope="bob-session-00001")
    nobody = dataclasses.replace(typed, cache_scope=None)
    entries = lambda: engine.prefix_cache.stats()["prefix_cache_entries"]  # noqa: E731
    first, by_bob, by_nobody = _reused_by(engine, alice, bob, nobody)
    assert first == 0 and by_bob == 0 and by_nobody == 0
    assert entries() == 2  # alice's and bob's; the scope-less request kept nothing
    (by_alice,) = _reused_by(engine, typed)
    assert by_alice > 0.8 * len(engine.tokenizer.encode(PREFIX))  # her own keystroke still reuses
    # and what each scope gets is what it would get from an empty cache
    assert engine.infill_batch([bob])[0].text == engine.infill_batch([nobody])[0].text
