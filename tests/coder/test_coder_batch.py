"""Batched Diffill-Coder steps: several requests' rows packed into one forward (model.py's
``Segment``) must give every request what it gets alone — the same hidden rows, the same
completion, the same stop, the same reuse of its context K/V — while the weights are read once
per step for all of them."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest
import torch

from diffusion_core.batcher import Batcher
from diffusion_core.coder.prefix_cache import PrefixCache
from diffusion_core.coder.sampler import CoderStats, coder_sample, coder_sample_batch, context_ids, step_mask
from diffusion_core.engine import Engine
from diffusion_core.fbgemm_weights import packed_available
from diffusion_core.interface import Cancelled, InfillRequest, SamplingOptions
from diffusion_core.model import Adapted, Segment
from diffusion_core.sampler import Canvas

from .conftest import coder_engines, first_step

REQUESTS = [  # different lengths of context and of middle, so rows and positions differ
    ("def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n", 12),
    ("import os\n\n\ndef list_files(root):\n    out = []\n    for name in ", "\n    return out\n", 9),
    ("x = ", "", 5),
    ("class Stack:\n    def __init__(self):\n        self.items = ", "\n\n    def push(self, x):\n", 16),
]


@pytest.fixture(scope="module")
def engine(coder_dirs: tuple[Path, Path]) -> Engine:
    base, adapter = coder_dirs
    return Engine.from_pretrained(adapter, base=base, device="cpu", dtype="float32", progress=False)


def _canvases(engine: Engine) -> list[Canvas]:
    return [Canvas(*engine.fit_context(p, s), n) for p, s, n in REQUESTS]


def test_packed_rows_are_each_requests_own_forward(engine: Engine) -> None:
    """Two requests' context rows and adapter windows in one packed call give, row for row, the
    hidden states of each request's own cached forward (and fill each request's own cache)."""
    model, fam = engine.model, engine.family
    ctxs = [context_ids(fam, c.prefix, c.suffix) for c in _canvases(engine)[:2]]
    window = [fam.mask_id] * 4
    alone, caches = [], []
    with torch.inference_mode():
        for ctx in ctxs:
            h, cache = first_step(model, engine.adapter, ctx, window)
            alone.append(h)
            caches.append(cache)
        # packed: both contexts' rows first, then both windows (the adapter's contiguous tail)
        a, b = len(ctxs[0]), len(ctxs[1])
        w = len(window)
        rows = [
            torch.cat([torch.arange(0, a), torch.arange(a + b, a + b + w)]),
            torch.cat([torch.arange(a, a + b), torch.arange(a + b + w, a + b + 2 * w)]),
        ]
        packed_caches = [model.new_cache(1, len(ctx) + 8) for ctx in ctxs]
        segments = [
            Segment(r, c, 0, step_mask(0, len(ctx), w, torch.device("cpu")))
            for r, c, ctx in zip(rows, packed_caches, ctxs)
        ]
        ids = ctxs[0] + ctxs[1] + window + window
        h = model(torch.tensor([ids]), adapted=Adapted(engine.adapter, rows_from=a + b), segments=segments)[0]
    for r, want, cache, packed_cache, ctx in zip(rows, alone, caches, packed_caches, ctxs):
        torch.testing.assert_close(h[r], want, rtol=1e-5, atol=1e-5)
        n = len(ctx) + w
        torch.testing.assert_close(packed_cache.k[:, :, :, :n], cache.k[:, :, :, :n], rtol=1e-5, atol=1e-5)
    # and the adapter was applied to the windows only: a window row differs from the base's
    assert not torch.allclose(
        h[rows[0][-1]], model(torch.tensor([ctxs[0] + window]), causal=True)[0, -1], atol=1e-3
    )


@pytest.mark.parametrize("quality", [1.0, 0.7, 0.3])
def test_a_batch_gives_each_middle_what_it_gets_alone(engine: Engine, quality: float) -> None:
    opts = SamplingOptions(quality=quality)
    canvases = _canvases(engine)
    alone_stats = [CoderStats() for _ in canvases]
    alone = [
        coder_sample(engine.model, engine.adapter, engine.family, c, opts, 8, stats=s)
        for c, s in zip(canvases, alone_stats)
    ]
    batch_stats = [CoderStats() for _ in canvases]
    batch = coder_sample_batch(
        engine.model, engine.adapter, engine.family, canvases, opts, 8, stats=batch_stats
    )
    assert [o.tokens for o in batch] == [o.tokens for o in alone]
    assert [o.stop_reason for o in batch] == [o.stop_reason for o in alone]
    # each middle took as many forwards as alone: a batch never makes a request wait for more steps
    assert [s.forwards for s in batch_stats] == [s.forwards for s in alone_stats]
    assert [dataclasses.asdict(s) for s in batch_stats] == [dataclasses.asdict(s) for s in alone_stats]
    assert any(o.tokens for o in batch)  # the random model writes something, so the comparison bites


def test_stops_and_empty_middles_in_one_batch(engine: Engine) -> None:
    """Each request's own stop check, and a zero-token request, inside one batch."""
    opts = SamplingOptions(quality=0.7)
    canvases = _canvases(engine)
    canvases[2] = dataclasses.replace(canvases[2], max_tokens=0)
    stops = [None, lambda toks: len(toks) >= 3, None, lambda toks: len(toks) >= 1]
    alone = [
        coder_sample(engine.model, engine.adapter, engine.family, c, opts, 8, stop=s)
        for c, s in zip(canvases, stops)
    ]
    batch = coder_sample_batch(engine.model, engine.adapter, engine.family, canvases, opts, 8, stops=stops)
    assert [(o.tokens, o.stop_reason) for o in batch] == [(o.tokens, o.stop_reason) for o in alone]
    assert batch[1].stop_reason == "stop" and len(batch[1].tokens) == 3
    assert batch[2].tokens == [] and batch[2].steps == 0


def test_a_batch_reuses_and_keeps_each_requests_context(engine: Engine) -> None:
    # SPM order: the prefix comes last, so a token typed at the cursor keeps the whole context
    engine = dataclasses.replace(engine, family=dataclasses.replace(engine.family, fim_order="spm"))
    opts = SamplingOptions(quality=0.7)
    canvases = _canvases(engine)
    cache = PrefixCache()
    first = coder_sample_batch(
        engine.model, engine.adapter, engine.family, canvases, opts, 8, prefix_cache=cache
    )
    assert cache.stats()["prefix_cache_entries"] == len(canvases)
    # each request typed one more token: its context K/V comes from its own earlier entry
    typed = [dataclasses.replace(c, prefix=c.prefix + c.prefix[-1:]) for c in canvases]
    again = coder_sample_batch(
        engine.model, engine.adapter, engine.family, typed, opts, 8, prefix_cache=cache
    )
    fresh = coder_sample_batch(engine.model, engine.adapter, engine.family, typed, opts, 8)
    assert [o.tokens for o in again] == [o.tokens for o in fresh]
    ctx_tokens = sum(len(context_ids(engine.family, c.prefix, c.suffix)) for c in typed)
    assert cache.stats()["reused_context_tokens"] == ctx_tokens - len(typed)  # all but the typed one
    assert len(first) == len(again) == len(canvases)


def test_a_cancelled_batch_raises_and_returns_every_cache(engine: Engine) -> None:
    canvases = _canvases(engine)
    cache = PrefixCache()
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 2  # after two steps

    with pytest.raises(Cancelled):
        coder_sample_batch(
            engine.model,
            engine.adapter,
            engine.family,
            canvases,
            SamplingOptions(),
            8,
            cancel,
            prefix_cache=cache,
        )
    assert cache.stats()["prefix_cache_entries"] == len(canvases)


def test_the_engine_and_batcher_batch_coder_requests(engine: Engine) -> None:
    """Concurrent requests through the batcher share forwards and each gets its solo answer."""
    reqs = [InfillRequest(p, s, n, SamplingOptions(quality=0.7), stop=("\n",)) for p, s, n in REQUESTS]
    solo = [engine.infill_batch([r])[0] for r in reqs]
    together = engine.infill_batch(reqs)
    assert [c.text for c in together] == [c.text for c in solo]
    assert [c.stop_reason for c in together] == [c.stop_reason for c in solo]

    batcher = Batcher(engine, max_batch=8, wait_ms=50.0)
    gate = threading.Barrier(len(reqs))
    results: list = [None] * len(reqs)

    def client(i: int) -> None:
        gate.wait()
        results[i] = batcher.submit(reqs[i]).result(timeout=60)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    assert [c.text for c in results] == [c.text for c in solo]
    assert batcher.stats().max_batch_seen > 1


@pytest.mark.skipif(not packed_available("w8a8"), reason="this torch build has no fbgemm int8 matmul")
def test_with_w8a8_weights_no_request_in_a_batch_changes_another(coder_dirs: tuple[Path, Path]) -> None:
    """w8a8 rounds a call's activations over their range; packed rows are rounded per request,
    so what one client sends cannot move another's hidden states or logits by a single bit."""
    (w8a8,) = coder_engines(coder_dirs, "fp32", "w8a8")
    model, fam = w8a8.model, w8a8.family
    mine, theirs = (context_ids(fam, c.prefix, c.suffix) for c in _canvases(w8a8)[:2])
    loud = [10 + (t * 7) % 100 for t in theirs]  # same length (same shapes), other tokens
    window = [fam.mask_id] * 4
    a, b, w = len(mine), len(theirs), len(window)
    rows = [
        torch.cat([torch.arange(0, a), torch.arange(a + b, a + b + w)]),
        torch.cat([torch.arange(a, a + b), torch.arange(a + b + w, a + b + 2 * w)]),
    ]

    def packed(other: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        caches = [model.new_cache(1, n + 8) for n in (a, b)]
        segments = [
            Segment(r, c, 0, step_mask(0, n, w, torch.device("cpu"))) for r, c, n in zip(rows, caches, (a, b))
        ]
        with torch.inference_mode():
            h = model(
                torch.tensor([mine + other + window + window]),
                adapted=Adapted(w8a8.adapter, rows_from=a + b),
                segments=segments,
            )[0]
            read = torch.cat([rows[0][-w:], rows[1][-w:]])
            groups = torch.tensor([0] * w + [1] * w)
            return h, model.logits(h[read], groups)[:w]

    h1, logits1 = packed(theirs)
    h2, logits2 = packed(loud)
    assert torch.equal(h1[rows[0]], h2[rows[0]]) and torch.equal(logits1, logits2)
    assert not torch.equal(h1[rows[1]], h2[rows[1]])  # the other request's rows did change
    # and each request's rows are rounded as its own call rounds them (up to float rounding)
    with torch.inference_mode():
        alone, _ = first_step(model, w8a8.adapter, mine, window)
    torch.testing.assert_close(h1[rows[0]], alone, rtol=1e-3, atol=1e-3)
