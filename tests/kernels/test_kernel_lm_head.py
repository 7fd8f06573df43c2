"""LM-head epilogue (argmax, max-probability, entropy, top-2 margin) against full torch logits."""

from __future__ import annotations

import pytest
import torch

from diffill_kernels import _common
from diffill_kernels.lm_head import lm_head_stats, lm_head_stats_reference

# (rows of hidden, hidden size, vocab, selected rows or None, vocab_per_split or None)
SHAPES = [
    (18, 64, 1000, [0, 3, 5, 17, 8, 2, 11], 256),  # ragged vocab and splits, 7 of 18 rows
    (5, 96, 777, None, None),  # all rows, planner's split
    (40, 128, 1531, list(range(0, 40, 2)), 384),  # 20 rows, head_dim-like 128
]


def _inputs(n, d, vocab, dtype, device, seed=0):  # noqa: ANN001, ANN202
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g).to(device, dtype)
    # a spread of confidences: some rows peaked, some flat
    w = (torch.randn(vocab, d, generator=g) * torch.linspace(0.05, 0.6, vocab)[:, None]).to(device, dtype)
    return h, w


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}x{s[2]}")
def test_lm_head_stats(shape, dtype, device, poison) -> None:  # noqa: ANN001
    n, d, vocab, rows, vps = shape
    h, w = _inputs(n, d, vocab, dtype, device)
    idx = None if rows is None else torch.tensor(rows, device=device)
    before = _common.launches["lm_head_stats"]
    got = lm_head_stats(h, w, idx, vocab_per_split=vps)
    assert _common.launches["lm_head_stats"] == before + 1
    ref = lm_head_stats_reference(h, w, idx)
    # the kernel and the reference both accumulate in fp32 from the same inputs: tight everywhere
    torch.testing.assert_close(got.prob, ref.prob, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.entropy, ref.entropy, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.margin, ref.margin, rtol=1e-4, atol=1e-5)
    logits = h.float()[idx if idx is not None else slice(None)] @ w.float().t()
    chosen = logits.gather(1, got.token[:, None]).squeeze(1)
    # argmax: same token unless two logits tie within fp32 summation noise
    torch.testing.assert_close(chosen, logits.max(-1).values, rtol=0, atol=1e-4)
    assert (got.token == ref.token).float().mean() >= 0.95
    assert got.prob.min() > 0 and got.entropy.min() > 0 and got.margin.min() >= 0


def test_logit_bias_bans_tokens(device) -> None:  # noqa: ANN001
    """-inf bias removes tokens (the sampler bans the mask and specials), including whole tiles."""
    h, w = _inputs(9, 64, 700, torch.float32, device, seed=2)
    top = lm_head_stats_reference(h, w).token
    bias = torch.zeros(700, device=device)
    bias[top] = float("-inf")
    bias[128:256] = float("-inf")  # a whole vocabulary tile
    bias[5] = 2.5
    got = lm_head_stats(h, w, logit_bias=bias, vocab_per_split=256)
    ref = lm_head_stats_reference(h, w, logit_bias=bias)
    assert not torch.isin(got.token, top).any()
    assert torch.equal(got.token, ref.token)
    for a, b in zip(got[1:], ref[1:]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_single_split_and_tiny_vocab(device) -> None:  # noqa: ANN001
    h, w = _inputs(3, 32, 20, torch.float32, device, seed=4)
    got = lm_head_stats(h, w)
    ref = lm_head_stats_reference(h, w)
    assert torch.equal(got.token, ref.token)
    torch.testing.assert_close(got.entropy, ref.entropy, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_lm_head_gpu_real_vocab() -> None:
    """0.5B and 7B head shapes on the GPU, bf16, 64 masked rows."""
    for d, vocab in [(896, 151936), (3584, 152064)]:
        h, w = _inputs(64, d, vocab, torch.bfloat16, torch.device("cuda"))
        got = lm_head_stats(h, w)
        ref = lm_head_stats_reference(h, w)
        torch.testing.assert_close(got.prob, ref.prob, rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(got.entropy, ref.entropy, rtol=1e-3, atol=1e-3)
        assert (got.token == ref.token).float().mean() >= 0.95
