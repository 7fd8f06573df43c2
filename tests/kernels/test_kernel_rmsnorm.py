"""Fused residual-add + RMSNorm against the torch reference."""

from __future__ import annotations

import pytest
import torch

from diffill_kernels import _common
from diffill_kernels.rmsnorm import add_rmsnorm, add_rmsnorm_reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", [(3, 7, 100), (1, 5, 896), (2, 3, 2048), (4, 257)], ids=str)
@pytest.mark.parametrize("with_residual", [True, False], ids=["add", "noadd"])
def test_add_rmsnorm(shape, dtype, with_residual, device, tol, poison) -> None:  # noqa: ANN001
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(*shape, generator=g) * 3).to(device, dtype)
    res = torch.randn(*shape, generator=g).to(device, dtype) if with_residual else None
    w = (torch.rand(shape[-1], generator=g) + 0.5).to(device, dtype)
    before = _common.launches["add_rmsnorm"]
    y, new_res = add_rmsnorm(x, res, w, 1e-6)
    assert _common.launches["add_rmsnorm"] == before + 1
    ry, rres = add_rmsnorm_reference(x, res, w, 1e-6)
    assert y.shape == x.shape and y.dtype == ry.dtype
    torch.testing.assert_close(y.float(), ry.float(), **tol(dtype))
    # the residual stream is one rounded add: at most one unit in the last place apart
    torch.testing.assert_close(new_res.float(), rres.float(), **tol(dtype))


def test_strided_rows(device, tol) -> None:  # noqa: ANN001
    """Rows with a stride larger than their width (a slice of a wider buffer)."""
    big = torch.randn(6, 160).to(device)
    x, res = big[:, :96], big[:, 64:]
    w = torch.rand(96).to(device) + 0.5
    y, new_res = add_rmsnorm(x, res, w, 1e-5)
    ry, rres = add_rmsnorm_reference(x, res, w, 1e-5)
    torch.testing.assert_close(y, ry, **tol(torch.float32))
    torch.testing.assert_close(new_res, rres, **tol(torch.float32))
