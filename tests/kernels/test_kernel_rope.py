"""Rotary embedding + optional QK-norm + K/V cache write, fused, against the torch reference."""

from __future__ import annotations

import pytest
import torch

from diffill_kernels import _common
from diffill_kernels.rope import rope_qkv_to_cache, rope_qkv_to_cache_reference


def _tables(positions: torch.Tensor, d: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    f = positions.float()[..., None] * inv
    e = torch.cat([f, f], -1)
    return e.cos(), e.sin()


# (batch, tokens, heads, kv_heads, head_dim, cache length, start)
SHAPES = [(2, 5, 4, 2, 64, 20, 3), (1, 17, 14, 2, 64, 40, 23), (1, 9, 4, 1, 128, 9, 0)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("variant", ["plain", "qk_norm", "start_tensor", "write_mask"])
def test_rope_qkv_to_cache(shape, dtype, variant, device, tol, poison) -> None:  # noqa: ANN001
    b, t, h, kvh, d, length, start = shape
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(b, t, (h + 2 * kvh) * d, generator=g).to(device, dtype)
    positions = torch.arange(start, start + t).expand(b, t) + torch.arange(b)[:, None] * 7
    cos, sin = (x.to(device) for x in _tables(positions, d))
    qw = kw = wm = None
    if variant == "qk_norm":
        qw = (torch.rand(d, generator=g) + 0.5).to(device, dtype)
        kw = (torch.rand(d, generator=g) + 0.5).to(device, dtype)
    if variant == "write_mask":
        wm = (torch.rand(b, length, generator=g) > 0.3).to(device)
    st = torch.tensor([start], device=device, dtype=torch.int32) if variant == "start_tensor" else start
    # the cache holds old K/V (random, never zero); NaN marks nothing, so compare the whole cache
    kc = torch.randn(b, kvh, length, d, generator=g).to(device, dtype)
    vc = torch.randn(b, kvh, length, d, generator=g).to(device, dtype)
    kc_ref, vc_ref = kc.clone(), vc.clone()
    q_out = torch.full((b, h, t, d), float("nan"), device=device, dtype=dtype)
    before = _common.launches["rope_qkv_to_cache"]
    q = rope_qkv_to_cache(qkv, cos, sin, h, kvh, kc, vc, st, qw, kw, 1e-6, q_out=q_out, write_mask=wm)
    assert _common.launches["rope_qkv_to_cache"] == before + 1
    q_ref = rope_qkv_to_cache_reference(
        qkv, cos, sin, h, kvh, kc_ref, vc_ref, start, qw, kw, 1e-6, write_mask=wm
    )
    assert q.data_ptr() == q_out.data_ptr()
    torch.testing.assert_close(q.float(), q_ref.float(), **tol(dtype))
    torch.testing.assert_close(kc.float(), kc_ref.float(), **tol(dtype))
    torch.testing.assert_close(vc, vc_ref, rtol=0, atol=0)  # V is a copy
    outside = torch.ones(length, dtype=torch.bool)
    outside[start : start + t] = False
    assert torch.equal(kc[:, :, outside.to(device)], kc_ref[:, :, outside.to(device)])


def test_rope_rejects_out_of_range_start(device) -> None:  # noqa: ANN001
    qkv = torch.randn(1, 4, 3 * 64).to(device)
    cos, sin = (x.to(device) for x in _tables(torch.arange(4)[None], 64))
    kc = torch.randn(1, 1, 6, 64).to(device)
    with pytest.raises(IndexError):
        rope_qkv_to_cache(qkv, cos, sin, 1, 1, kc, kc.clone(), 3)
