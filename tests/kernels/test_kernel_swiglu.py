"""Fused silu(gate) * up against the torch reference."""

from __future__ import annotations

import pytest
import torch

from diffill_kernels import _common
from diffill_kernels.swiglu import swiglu, swiglu_reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", [(7, 600), (1, 3, 2 * 1500), (2, 5, 2 * 4864)], ids=str)
def test_swiglu(shape, dtype, device, tol, poison) -> None:  # noqa: ANN001
    x = (torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 4).to(device, dtype)
    before = _common.launches["swiglu"]
    y = swiglu(x)
    assert _common.launches["swiglu"] == before + 1
    assert y.shape == (*shape[:-1], shape[-1] // 2)
    torch.testing.assert_close(y.float(), swiglu_reference(x).float(), **tol(dtype))


def test_swiglu_into_buffer(device, tol) -> None:  # noqa: ANN001
    x = torch.randn(3, 2 * 70).to(device)
    out = torch.full((3, 70), float("nan"), device=device)
    swiglu(x, out=out)
    torch.testing.assert_close(out, swiglu_reference(x), **tol(torch.float32))
