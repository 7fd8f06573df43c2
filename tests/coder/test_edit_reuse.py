"""Reuse after an edit in the middle of the context (PrefixCache's ``shift_keys``): the moved keys
are the keys at the new positions, the edit itself is computed exactly, only the edit and the
last tokens are run, and with it off an edit still gives the exact answer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffusion_core.coder.prefix_cache import PrefixCache, common_prefix
from diffusion_core.coder.sampler import CoderStats, coder_sample, context_ids, lend_cache, step_mask
from diffusion_core.engine import Engine
from diffusion_core.interface import SamplingOptions
from diffusion_core.sampler import Canvas

LINES = [
    f"def handler_{i}(request, value={i}):\n    return request.get('k{i}', value) + {i}\n" for i in range(30)
]
PREFIX = "".join(LINES) + "\ndef main():\n    total = handler_3("
SUFFIX = ")\n    print(total)\n"
AT = PREFIX.index("handler_15") + 3  # the edit: one character, far from the cursor
EARLIER = PREFIX[:AT] + PREFIX[AT + 1 :]


@pytest.fixture(scope="module")
def engine(coder_dirs: tuple[Path, Path]) -> Engine:
    base, adapter = coder_dirs
    return Engine.from_pretrained(adapter, base=base, device="cpu", dtype="float32", progress=False)


def _ctx(engine: Engine, prefix: str) -> list[int]:
    p, s = engine.fit_context(prefix, SUFFIX)
    return context_ids(engine.family, p, s)


def _cold_cache(engine: Engine, ctx: list[int]):  # noqa: ANN202
    cache = engine.model.new_cache(1, len(ctx) + 8)
    with torch.inference_mode():
        engine.model(torch.tensor([ctx]), cache=cache, start=0, attn_mask=step_mask(0, len(ctx), 0, "cpu"))
    return cache


@pytest.mark.parametrize("delta", [5, -3])
def test_moved_keys_are_the_keys_computed_at_the_new_positions(engine: Engine, delta: int) -> None:
    """RoPE attention depends only on relative positions, so a run of tokens computed at
    positions p.. and at p + delta.. has the same values and keys rotated by delta."""
    ids = _ctx(engine, PREFIX)[:40]
    at, pad = (0, delta) if delta > 0 else (-delta, 0)
    caches = []
    for start in (at, pad):
        cache = engine.model.new_cache(1, start + len(ids))
        mask = step_mask(start, len(ids), 0, "cpu").clone()
        mask[..., :start] = False  # nothing before the run
        with torch.inference_mode():
            engine.model(torch.tensor([ids]), cache=cache, start=start, attn_mask=mask)
        caches.append(cache)
    src, dst = caches
    k_src = src.k[:, :, :, at : at + len(ids)]
    moved = engine.model.shift_keys(k_src, pad - at)
    torch.testing.assert_close(moved, dst.k[:, :, :, pad : pad + len(ids)], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(
        src.v[:, :, :, at : at + len(ids)], dst.v[:, :, :, pad : pad + len(ids)], atol=2e-5, rtol=1e-4
    )
    assert (moved - k_src).abs().max() > 1e-2  # the rotation is not the identity


def test_an_edit_runs_only_itself_and_the_tail_and_computes_itself_exactly(engine: Engine) -> None:
    cache = PrefixCache(shift_keys=engine.model.shift_keys, min_shift=32, fresh_tail=16)
    old, new = _ctx(engine, EARLIER), _ctx(engine, PREFIX)
    assert abs(len(new) - len(old)) <= 2  # one character: a token or two
    kept, _ = lend_cache(engine.model, cache, old, len(old) + 8)
    with torch.inference_mode():
        engine.model(torch.tensor([old]), cache=kept, start=0, attn_mask=step_mask(0, len(old), 0, "cpu"))
    old_k, old_v = kept.k.clone(), kept.v.clone()  # take() may reuse this very cache
    cache.put(old, kept)

    rows: list[int] = []
    real = engine.model.forward

    def counting(ids, *args, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        rows.append(ids.shape[1])
        return real(ids, *args, **kw)

    engine.model.forward = counting
    try:
        lent, n = lend_cache(engine.model, cache, new, len(new) + 8)
    finally:
        del engine.model.forward
    shared = common_prefix(old, new)
    assert n == len(new) - 16  # everything but the fresh tail is in the cache
    assert rows and sum(rows) <= 3  # and only the edited tokens were run to get there
    hole_end = shared + rows[0]
    cold = _cold_cache(engine, new)
    # the edit attends only to the exact context before it: its K/V is the cold one
    torch.testing.assert_close(lent.k[:, :, :, :hole_end], cold.k[:, :, :, :hole_end], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lent.v[:, :, :, :hole_end], cold.v[:, :, :, :hole_end], atol=1e-5, rtol=1e-5)
    # after it, the earlier context's K/V moved to the new positions (computed before the edit)
    delta = len(new) - len(old)
    moved, src = slice(hole_end, n), slice(hole_end - delta, n - delta)
    assert torch.equal(lent.v[:, :, :, moved], old_v[:, :, :, src])
    expected = engine.model.shift_keys(old_k[:, :, :, src], delta) if delta else old_k[:, :, :, src]
    assert torch.equal(lent.k[:, :, :, moved], expected)
    st = cache.stats()
    assert st["reused_context_tokens"] == n - rows[0] and st["shifted_context_tokens"] == n - hole_end
    assert st["reused_context_tokens"] / len(new) >= 0.8


def _complete(engine: Engine, prefix: str, cache: PrefixCache | None, stats: CoderStats) -> list[int]:
    p, s = engine.fit_context(prefix, SUFFIX)
    opts = SamplingOptions(quality=0.7)
    return coder_sample(
        engine.model,
        engine.adapter,
        engine.family,
        Canvas(p, s, 12),
        opts,
        engine.window,
        stats=stats,
        prefix_cache=cache,
    ).tokens


def test_without_it_an_edit_reuses_only_up_to_the_edit_and_the_answer_is_exact(engine: Engine) -> None:
    cache = PrefixCache()  # no shift_keys: off
    _complete(engine, EARLIER, cache, CoderStats())
    after = _complete(engine, PREFIX, cache, CoderStats())
    assert after == _complete(engine, PREFIX, None, CoderStats())
    old, new = _ctx(engine, EARLIER), _ctx(engine, PREFIX)
    assert cache.stats()["reused_context_tokens"] == common_prefix(old, new)
    assert cache.stats()["shifted_context_tokens"] == 0


def test_with_it_an_edit_gives_a_completion_from_the_moved_context(engine: Engine) -> None:
    cache = PrefixCache(shift_keys=engine.model.shift_keys)
    _complete(engine, EARLIER, cache, CoderStats())
    stats = CoderStats()
    after = _complete(engine, PREFIX, cache, stats)
    assert after and stats.forwards >= 1
    assert cache.stats()["shifted_context_tokens"] > 0.3 * len(_ctx(engine, PREFIX))
    # the next keystroke at the cursor reuses the moved entry like any other
    _complete(engine, PREFIX + "x", cache, CoderStats())
    assert cache.stats()["reused_context_tokens"] > 1.6 * len(_ctx(engine, PREFIX))


@pytest.mark.parametrize("edit", ["near the cursor", "large"])
def test_a_short_common_end_or_a_large_edit_is_not_moved(engine: Engine, edit: str) -> None:
    """An edit near the cursor leaves fewer than ``min_shift`` tokens to move; after a large one
    (more than ``max_edit`` tokens) the old K/V never saw too much of the text: plain reuse."""
    cache = PrefixCache(shift_keys=engine.model.shift_keys, min_shift=32, fresh_tail=16, max_edit=64)
    if edit == "large":
        earlier = PREFIX[:AT] + PREFIX[AT + 300 :]
        assert len(_ctx(engine, PREFIX)) - len(_ctx(engine, earlier)) > 64
    else:
        near = len(PREFIX) - 20
        earlier = PREFIX[:near] + PREFIX[near + 1 :]
    _complete(engine, earlier, cache, CoderStats())
    _complete(engine, PREFIX, cache, CoderStats())
    assert cache.stats()["shifted_context_tokens"] == 0


def test_the_engine_takes_it_from_the_environment(
    coder_dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, adapter = coder_dirs
    for value, on in (("", True), ("0", False), ("1", True)):  # on unless turned off
        monkeypatch.setenv("DIFFILL_REUSE_AFTER_EDIT", value)
        eng = Engine.from_pretrained(adapter, base=base, device="cpu", dtype="float32", progress=False)
        eng.infill(EARLIER, SUFFIX, max_tokens=4)
        eng.infill(PREFIX, SUFFIX, max_tokens=4)
        st = eng.info()["prefix_cache"]
        assert st["reuse_after_edit"] is on and (st["shifted_context_tokens"] > 0) is on
    monkeypatch.setenv("DIFFILL_REUSE_AFTER_EDIT", "maybe")
    with pytest.raises(ValueError, match="DIFFILL_REUSE_AFTER_EDIT"):
        Engine.from_pretrained(adapter, base=base, device="cpu", dtype="float32", progress=False)


def test_moved_context_is_not_moved_again_and_a_recompute_makes_it_exact(engine: Engine) -> None:
    """Each move keeps K/V computed before an edit; moving it again at the next edit would let
    the approximation pile up over a session. So an entry holds at most one edit's worth."""
    cache = PrefixCache(shift_keys=engine.model.shift_keys)
    at = PREFIX.index("handler_5") + 3
    before_5 = PREFIX[:at] + PREFIX[at + 1 :]
    moved = []
    for text in (EARLIER, PREFIX, before_5, PREFIX):
        _complete(engine, text, cache, CoderStats())
        moved.append(cache.stats()["shifted_context_tokens"])
    assert moved[0] == 0 < moved[1]  # the first edit moves the rest
    assert moved[2] == moved[1]  # the second edit finds moved K/V: recomputed from the edit
    assert moved[3] > moved[2]  # that recompute was exact again, so the next edit moves
