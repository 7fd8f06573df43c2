"""Kernel tests run the Triton kernels through Triton's CPU interpreter when there is no GPU.

TRITON_INTERPRET must be set before the first ``import triton`` (``triton.jit`` reads it when the
kernels are defined), so it is set here, at collection, before the test modules import ``kernels``.
With CUDA present the same tests run the compiled kernels on the GPU.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from diffill_kernels._common import allow_cpu_interpreter  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(autouse=True)
def _interpret_on_cpu():  # noqa: ANN202
    """Kernel tests run the interpreter-built kernels on CPU tensors; nothing else does."""
    allow_cpu_interpreter(True)
    yield
    allow_cpu_interpreter(False)


# Tolerances, stated once. fp32: the kernels reorder sums, nothing else. bf16: 1-2 units in the last
# place from rounding once in fp32 where torch rounds at every op (the interpreter also truncates
# instead of rounding to nearest when narrowing to bf16).
TOL = {
    torch.float32: dict(rtol=1e-4, atol=1e-5),
    torch.bfloat16: dict(rtol=3e-2, atol=2e-2),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device() -> torch.device:
    return DEVICE


@pytest.fixture
def tol():  # noqa: ANN201
    return lambda dtype: TOL[dtype]


@pytest.fixture
def poison(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """Make every ``torch.empty``/``empty_like`` inside the call NaN-filled (ints: -7), so an output
    element a kernel forgets to write fails the comparison instead of passing by luck."""
    real_empty, real_like = torch.empty, torch.empty_like

    def fill(t: torch.Tensor) -> torch.Tensor:
        return t.fill_(float("nan") if t.is_floating_point() else -7)

    monkeypatch.setattr(torch, "empty", lambda *a, **k: fill(real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: fill(real_like(*a, **k)))
    yield
