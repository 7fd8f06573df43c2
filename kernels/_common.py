"""Shared dispatch helpers for the Triton kernels.

Every kernel has a plain torch reference; the dispatcher runs Triton only where it can: on CUDA
tensors, or on CPU tensors when the kernel was built by Triton's interpreter (TRITON_INTERPRET=1 set
before import, which is how the tests exercise the kernels without a GPU).
"""

from __future__ import annotations

import os
from collections import Counter

import torch

try:  # triton is optional: CPU-only installs fall back to torch everywhere
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = None
    tl = None

HAVE_TRITON = triton is not None
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# How often each kernel took the Triton path; tests read it to prove the kernel really ran.
launches: Counter[str] = Counter()

# Interpreted kernels run on CPU tensors only when asked: TRITON_INTERPRET=1 is process-wide, and
# code that merely shares the process with the kernel tests must keep the fast torch path.
_cpu_interpreter = False


def allow_cpu_interpreter(on: bool) -> None:
    """Let interpreter-built kernels launch on CPU tensors (the kernel tests turn this on)."""
    global _cpu_interpreter
    _cpu_interpreter = on


def interpreted(kernel: object) -> bool:
    """True when ``kernel`` was built by Triton's CPU interpreter."""
    return type(kernel).__name__ == "InterpretedFunction"


def can_launch(kernel: object, *tensors: torch.Tensor) -> bool:
    """Whether ``kernel`` can run on ``tensors``: all on one CUDA device, or all on the CPU under the
    interpreter. ``DIFFILL_KERNELS=0`` forces the torch path (a switch for debugging)."""
    if not HAVE_TRITON or kernel is None or os.environ.get("DIFFILL_KERNELS", "1") == "0":
        return False
    if all(t.is_cuda for t in tensors):
        return len({t.device for t in tensors}) == 1
    return _cpu_interpreter and interpreted(kernel) and all(t.device.type == "cpu" for t in tensors)


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors to fill (a small number under the interpreter keeps grids small)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get exact IEEE dots (TF32 would cost ~1e-3 relative error); half types use the
    tensor cores as they are."""
    return "ieee" if dtype == torch.float32 else "tf32"


def upcast_dots(kernel: object, dtype: torch.dtype) -> bool:
    """Triton's interpreter multiplies bf16 operands as their raw uint16 bits; under it, bf16 dot
    operands are widened to fp32 first (exact products with fp32 accumulation, as the tensor cores
    compute them). Compiled kernels never take this branch."""
    return interpreted(kernel) and dtype == torch.bfloat16


if triton is not None:

    @triton.jit
    def mma(a, b, UPCAST: tl.constexpr, PREC: tl.constexpr):
        """``tl.dot`` with fp32 accumulation; see :func:`upcast_dots` for ``UPCAST``."""
        if UPCAST:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        else:
            return tl.dot(a, b, input_precision=PREC)
else:  # pragma: no cover
    mma = None
