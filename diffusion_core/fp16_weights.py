"""fp16-packed weights for fp32 matmuls on CPUs without fast bf16 (fbgemm's fp16 GEMM).

Why: on a CPU without AMX (measured on a 2-core AMD EPYC with AVX2 only) torch's fp32 matmul
over one to a few rows is slow, and bf16 is slower still: a one-row call on the MLP's gate/up
took ~4 ms in fp32 and ~0.5 ms with fbgemm's fp16-packed weights, the 151,936-row LM head ~60 ms
and ~18 ms, and three rows cost fp32 3x one row but fbgemm fp16 under 2x. fbgemm (part of every
x86 torch build) keeps the weight in fp16, half the bytes of fp32, converts it in registers and
accumulates in fp32, so the activations are never rounded: the call computes
``x @ fp16(W).T`` in fp32, row by row, whatever the number of rows.

So a packed linear keeps its fp32 weight *replaced by the fp16-rounded values* (the reference,
used under autograd and by anything that reads the weight) and an fbgemm handle for every
inference call. Both compute the same function up to the order of accumulation, so the packed
path never changes an answer by more than rounding, and quality 1 stays the base's own greedy
answer (of the fp16-rounded base: finer than bf16, which rounds 3 more bits).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Fp16Weight", "fp16_available", "pack_linears", "use_fp16"]


@functools.lru_cache(maxsize=1)
def fp16_available() -> bool:
    """Whether this torch build can pack and run fp16 weights on this CPU (fbgemm: x86 builds)."""
    try:
        w = Fp16Weight.pack(torch.randn(8, 16))
        return w.matmul(torch.randn(2, 16)).shape == (2, 8)
    except (AttributeError, RuntimeError):
        return False


@dataclass
class Fp16Weight:
    packed: object  # fbgemm's packed fp16 weight (opaque)
    out_features: int
    run: Callable[..., torch.Tensor]  # the op, looked up once (matmul is on every layer's hot path)

    @classmethod
    def pack(cls, weight: torch.Tensor) -> Fp16Weight:
        ops = torch.ops.quantized
        packed = ops.linear_prepack_fp16(weight.detach().float().contiguous(), None)
        return cls(packed, weight.shape[0], ops.linear_dynamic_fp16)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T`` for fp32 ``x`` [..., in], W the fp16-rounded weight; fp32 out."""
        y = self.run(x.reshape(-1, x.shape[-1]).contiguous(), self.packed)
        return y.reshape(*x.shape[:-1], self.out_features)


def use_fp16(module: nn.Module, x: torch.Tensor) -> Fp16Weight | None:
    """The packed weight of ``module`` when this call should use it (inference, fp32 CPU input)."""
    w = getattr(module, "fp16", None)
    if w is None or torch.is_grad_enabled() or x.dtype != torch.float32 or x.device.type != "cpu":
        return None
    return w


def pack_linears(modules: list[nn.Module]) -> int:
    """Round each module's fp32 ``weight`` to fp16 values in place and give it a packed copy
    (``module.fp16``: a plain attribute, never trained or saved); returns the bytes added.
    A weight outside fp16's range stays as it is, unpacked (no supported base has one).
    Packing is fbgemm's slowest step (~5 s for the 0.5B base on one core), so the modules are
    packed on as many threads as torch uses, the largest first."""
    todo = []
    with torch.no_grad():
        for m in modules:
            half = m.weight.detach().half()
            if bool(torch.isinf(half).any()):
                continue
            m.weight.copy_(half)
            todo.append(m)
    todo.sort(key=lambda m: -m.weight.numel())
    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:  # fbgemm releases the GIL
        for m, w in zip(todo, pool.map(lambda m: Fp16Weight.pack(m.weight), todo)):
            m.fp16 = w
    return sum(m.weight.numel() * 2 for m in todo)
