"""Attention kernel (active block vs whole cache, split-K, prefill) against the torch reference."""

from __future__ import annotations

import pytest
import torch

from diffill_kernels import _common
from diffill_kernels.attention import attention, attention_reference, plan_splits

# (batch, heads, kv_heads, queries, keys, head_dim, keys_per_split or None = planner)
SHAPES = [
    (1, 4, 2, 17, 100, 64, None),  # ragged block, GQA 2, one split
    (2, 6, 2, 33, 300, 64, 64),  # 5 splits, last one ragged, batch 2
    (1, 2, 1, 16, 77, 128, 32),  # head_dim 128, split size rounded up to the key tile
    (1, 4, 4, 45, 45, 64, None),  # prefill: the canvas attends to itself (MHA)
    (1, 14, 2, 16, 70, 64, 64),  # the 0.5B model's heads (GQA 7)
]


def _inputs(b, h, kvh, tq, tk, d, dtype, device, seed=0):  # noqa: ANN001, ANN202
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, tq, d, generator=g).to(device, dtype)
    k = torch.randn(b, kvh, tk, d, generator=g).to(device, dtype)
    v = torch.randn(b, kvh, tk, d, generator=g).to(device, dtype)
    mask = torch.rand(b, tk, generator=g) > 0.25
    mask[:, 0] = True  # every query has a key
    return q, k, v, mask.to(device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:6])))
def test_attention_matches_reference(shape, dtype, device, tol, poison) -> None:  # noqa: ANN001
    b, h, kvh, tq, tk, d, kps = shape
    q, k, v, mask = _inputs(b, h, kvh, tq, tk, d, dtype, device)
    # write into a strided [B, Tq, H, D] buffer (what o_proj reads), poisoned
    out = torch.full((b, tq, h, d), float("nan"), device=device, dtype=dtype).transpose(1, 2)
    before = _common.launches["attention"]
    res = attention(q, k, v, mask, out=out, keys_per_split=kps)
    assert _common.launches["attention"] == before + 1, "the Triton path did not run"
    assert res.data_ptr() == out.data_ptr()
    ref = attention_reference(q, k, v, mask)
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out.float(), ref.float(), **tol(dtype))


def test_attention_no_mask_and_strided_q(device, tol, poison) -> None:  # noqa: ANN001
    """q as a view of a fused projection (non-contiguous), k/v as one layer of a 5-D cache."""
    b, t, h, kvh, d, layers, length = 2, 19, 4, 2, 64, 3, 50
    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(b, t, (h + 2 * kvh) * d, generator=g).to(device)
    q = qkv[..., : h * d].view(b, t, h, d).transpose(1, 2)
    cache_k = torch.randn(layers, b, kvh, length, d, generator=g).to(device)
    cache_v = torch.randn(layers, b, kvh, length, d, generator=g).to(device)
    got = attention(q, cache_k[1], cache_v[1], None, keys_per_split=32)
    torch.testing.assert_close(got, attention_reference(q, cache_k[1], cache_v[1]), **tol(torch.float32))


def test_split_with_fully_padded_split(device, tol) -> None:  # noqa: ANN001
    """A key range that is all padding must drop out of the combine, not poison it with NaN."""
    q, k, v, mask = _inputs(1, 2, 1, 16, 256, 64, torch.float32, device, seed=3)
    mask[:, 64:192] = False  # splits 1 and 2 (64 keys each) see only padding
    got = attention(q, k, v, mask, keys_per_split=64)
    torch.testing.assert_close(got, attention_reference(q, k, v, mask), **tol(torch.float32))


def test_split_planner() -> None:
    """Few query rows and a long cache split the keys; a big grid (prefill) does not."""
    cpu = torch.device("cpu")
    h100 = 132
    assert plan_splits(1, 2, 7 * 64, 4096, cpu, sms=h100) <= 512  # 0.5B shape, 64-token block: >= 8 splits
    assert plan_splits(1, 2, 7 * 4096, 4096, cpu, sms=h100) >= 4096  # prefill: one split
    assert plan_splits(1, 2, 16, 100, cpu, sms=h100) >= 100  # short cache: not worth splitting


def test_unsupported_shape_falls_back() -> None:
    """head_dim 8 is below the tile minimum: the reference runs instead, same numbers."""
    q, k, v = (torch.randn(1, 2, 5, 8) for _ in range(3))
    before = _common.launches["attention"]
    got = attention(q, k, v)
    assert _common.launches["attention"] == before
    torch.testing.assert_close(got, attention_reference(q, k, v))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_attention_gpu_model_shapes(dtype) -> None:  # noqa: ANN001
    """Real model shapes on the GPU: 0.5B (14/2 heads, D 64) and 7B (28/4, D 128), 4k cache."""
    for h, kvh, d in [(14, 2, 64), (28, 4, 128), (16, 8, 128)]:
        for tq, tk in [(33, 4096), (129, 2000), (700, 700)]:
            q, k, v, mask = _inputs(1, h, kvh, tq, tk, d, dtype, torch.device("cuda"))
            got = attention(q, k, v, mask).float()
            torch.testing.assert_close(got, attention_reference(q, k, v, mask).float(), rtol=2e-2, atol=2e-2)
