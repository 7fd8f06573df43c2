"""Sampler invariants: the fast batched/cached sampler against the plain reference, shift
handling per family, end-of-completion, determinism, limits, cancellation, length ensemble."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diffusion_core.families import FamilySpec
from diffusion_core.kv_cache import KVCache
from diffusion_core.model import ModelConfig, Transformer
from diffusion_core.sampler import Cancelled, Canvas, SamplingOptions, reference_sample, sample_batch

VOCAB = 96
MASK, EOS, BEGIN = 95, 0, 1


def family(shifted: bool, begin: bool = True) -> FamilySpec:
    return FamilySpec(
        "test",
        shifted=shifted,
        mask_id=MASK,
        eos_ids=(EOS,),
        pad_id=EOS,
        begin_ids=(BEGIN,) if begin else (),
        special_ids=frozenset({EOS, BEGIN, MASK}),
    )


@pytest.fixture(scope="module")
def tiny() -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=128,
        qkv_bias=True,
    )
    return Transformer(cfg).eval()


class PositionOracle(nn.Module):
    """A fake model whose output at canvas position p predicts ``table[p]`` with probability
    ``conf[p]``: it makes the token each position will receive fully predictable. Its hidden state
    is a one-hot of the position and its LM head a table of log-probabilities, so it goes through
    the same LM-head path as a real model."""

    def __init__(self, table: list[int], conf: list[float] | None = None) -> None:
        super().__init__()
        conf = conf or [0.95] * len(table)
        head = torch.empty(VOCAB, len(table))
        for p, (tok, c) in enumerate(zip(table, conf)):
            head[:, p] = math.log((1 - c) / (VOCAB - 1))
            head[tok, p] = math.log(c)
        self.weight = nn.Parameter(head, requires_grad=False)
        self.cfg = ModelConfig(VOCAB, len(table), 1, 1, 1, 8)

    @property
    def head_weight(self) -> torch.Tensor:
        return self.weight

    def forward(self, ids, positions=None, key_mask=None, cache=None, start=0):  # noqa: ANN001
        if positions is None:
            positions = torch.arange(start, start + ids.shape[1]).expand_as(ids)
        return torch.nn.functional.one_hot(positions, self.weight.shape[1]).float()

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.weight.t()

    def new_cache(self, batch: int, length: int) -> KVCache:
        return KVCache(1, batch, 1, length, 1, torch.float32, "cpu")


CANVASES = [
    Canvas(list(range(5, 15)), list(range(20, 27)), 40),
    Canvas([7, 8], [9], 13),
    Canvas([], [], 5),
    Canvas(list(range(30, 60)), [], 17),
]


@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize(
    "opts",
    [
        SamplingOptions(cache="none", block_size=8),
        SamplingOptions(cache="dual", refresh_every=1, block_size=8),
        SamplingOptions(cache="dual", refresh_every=1, block_size=32, quality=1.0),
        SamplingOptions(cache="none", block_size=16, confidence="entropy"),
        SamplingOptions(cache="none", block_size=16, confidence="margin", quality=0.0),
    ],
)
def test_batched_sampler_matches_reference(tiny: Transformer, shifted: bool, opts: SamplingOptions) -> None:
    fam = family(shifted)
    outs = sample_batch(tiny, fam, CANVASES, opts)
    for canvas, out in zip(CANVASES, outs):
        ref = reference_sample(tiny, fam, canvas, opts)
        assert out.tokens == ref.tokens
        assert out.stop_reason == ref.stop_reason


@pytest.mark.parametrize("shifted", [False, True])
def test_prefix_and_suffix_never_change_and_limits_hold(tiny: Transformer, shifted: bool) -> None:
    fam = family(shifted)
    for opts in (SamplingOptions(block_size=8), SamplingOptions(length="ensemble")):
        for canvas, out in zip(CANVASES, sample_batch(tiny, fam, CANVASES, opts)):
            head = [BEGIN, *canvas.prefix]
            assert out.canvas[: len(head)] == head
            assert out.canvas[len(out.canvas) - len(canvas.suffix) :] == canvas.suffix or not canvas.suffix
            assert len(out.tokens) <= canvas.max_tokens
            assert MASK not in out.canvas
            assert not set(out.tokens) & {EOS, BEGIN, MASK}


@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize("cache", ["none", "dual"])
def test_shift_reads_the_right_output(shifted: bool, cache: str) -> None:
    table = [10 + (p % 50) for p in range(200)]
    fam = family(shifted)
    canvas = Canvas([2, 3, 4], [5, 6], 12)
    model = PositionOracle(table)
    m0 = 1 + len(canvas.prefix)  # begin token + prefix
    want = [table[m0 + j - (1 if shifted else 0)] for j in range(12)]
    out = sample_batch(model, fam, [canvas], SamplingOptions(cache=cache, block_size=4))[0]
    assert out.tokens == want
    assert reference_sample(model, fam, canvas, SamplingOptions(block_size=4)).tokens == want


def test_shifted_family_without_begin_tokens_and_empty_prefix() -> None:
    table = [10 + p % 80 for p in range(50)]
    out = sample_batch(
        PositionOracle(table), family(True, begin=False), [Canvas([], [3], 4)], SamplingOptions()
    )
    assert len(out[0].tokens) == 4


def test_committed_end_token_ends_the_completion() -> None:
    table = [20 + p % 70 for p in range(100)]
    m0 = 3  # begin + 2 prefix tokens
    table[m0 + 5] = EOS  # the model wants to stop after five tokens
    out = sample_batch(PositionOracle(table), family(False), [Canvas([2, 3], [4], 16)], SamplingOptions())[0]
    assert out.tokens == table[m0 : m0 + 5]
    assert out.stop_reason == "eos"
    assert out.canvas[m0 + 5 : m0 + 16] == [EOS] * 11


def test_max_tokens_reached_reports_length() -> None:
    table = [20 + p % 70 for p in range(100)]
    out = sample_batch(PositionOracle(table), family(False), [Canvas([2], [], 6)], SamplingOptions())[0]
    assert len(out.tokens) == 6 and out.stop_reason == "length"


def test_threshold_commits_many_per_step_and_step_cap_bounds_forwards() -> None:
    table = [20 + p % 70 for p in range(100)]
    confident = PositionOracle(table, [0.99] * 100)
    out = sample_batch(confident, family(False), [Canvas([2], [], 32)], SamplingOptions(quality=0.5))[0]
    assert out.steps == 1  # every position clears tau at once
    unsure = PositionOracle(table, [0.3] * 100)
    for q in (0.0, 0.5, 1.0):
        opts = SamplingOptions(quality=q)
        out = sample_batch(unsure, family(False), [Canvas([2], [], 32)], opts)[0]
        assert out.steps == opts.step_cap(32)
    assert SamplingOptions(quality=0.0).step_cap(32) < SamplingOptions(quality=1.0).step_cap(32)


def test_fixed_steps_per_block() -> None:
    table = [20 + p % 70 for p in range(200)]
    out = sample_batch(
        PositionOracle(table, [0.99] * 200),
        family(False),
        [Canvas([2], [], 64)],
        SamplingOptions(steps_per_block=4, block_size=32),
    )[0]
    assert out.steps == 8


def test_greedy_is_deterministic_and_sampling_follows_the_seed(tiny: Transformer) -> None:
    fam = family(False)
    a = sample_batch(tiny, fam, CANVASES, SamplingOptions())
    b = sample_batch(tiny, fam, CANVASES, SamplingOptions())
    assert [o.tokens for o in a] == [o.tokens for o in b]
    hot = SamplingOptions(temperature=1.5, top_p=0.95, seed=7)
    s1 = sample_batch(tiny, fam, CANVASES, hot)
    s2 = sample_batch(tiny, fam, CANVASES, hot)
    s3 = sample_batch(tiny, fam, CANVASES, SamplingOptions(temperature=1.5, top_p=0.95, seed=8))
    assert [o.tokens for o in s1] == [o.tokens for o in s2]
    assert [o.tokens for o in s1] != [o.tokens for o in s3]


def test_cancel_stops_between_steps(tiny: Transformer) -> None:
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        sample_batch(tiny, family(False), CANVASES, SamplingOptions(quality=1.0), cancel=cancel)
    assert len(calls) == 3


def test_length_ensemble_picks_the_length_the_model_is_sure_of() -> None:
    # The model is confident about the first 8 middle tokens and the end token after them, and
    # unsure about anything it would have to invent beyond that: the 8-token candidate wins.
    m0 = 2
    table = [20 + p % 70 for p in range(200)]
    conf = [0.95] * 200
    for p in range(m0 + 8, 200):
        conf[p] = 0.2
    # suffix sits right after the middle; a canvas with more masks pushes it later
    model = PositionOracle(table, conf)
    opts = SamplingOptions(length="ensemble", candidate_lengths=(8, 16, 32))
    out = sample_batch(model, family(False), [Canvas([2], [], 32)], opts)[0]
    assert out.tokens == table[m0 : m0 + 8]
    fixed = sample_batch(model, family(False), [Canvas([2], [], 32)], SamplingOptions())[0]
    assert len(fixed.tokens) == 32


def test_window_forward_over_a_filled_cache_is_exact(tiny: Transformer) -> None:
    ids = torch.randint(2, VOCAB - 1, (2, 37))
    key_mask = torch.ones_like(ids, dtype=torch.bool)
    key_mask[1, :5] = False
    positions = (key_mask.long().cumsum(-1) - 1).clamp_min(0)
    with torch.inference_mode():
        full = tiny(ids, positions, key_mask)
        cache = tiny.new_cache(2, 37)
        tiny(ids, positions, key_mask, cache=cache)
        win = tiny(ids[:, 11:19], positions[:, 11:19], key_mask, cache=cache, start=11)
    torch.testing.assert_close(win, full[:, 11:19], rtol=0, atol=1e-5)


def test_bad_options_are_rejected() -> None:
    for bad in (dict(quality=2), dict(block_size=0), dict(confidence="x"), dict(top_p=0), dict(cache="kv")):
        with pytest.raises(ValueError):
            SamplingOptions(**bad)
