"""Weights packed for fbgemm's CPU GEMMs (part of every x86 torch build): fp16 and w8a8.

Why: on a CPU torch's fp32 matmul over one to a few rows is slow, and bf16 is slow too where the
CPU has no AMX. fbgemm runs a packed weight against fp32 activations, fp32 out:

- ``fp16``: the weight stored in fp16 (half of fp32's bytes), converted in registers, fp32
  accumulation, so the activations are never rounded. Measured on a 2-core AMD EPYC with AVX2
  only: a one-row gate/up matmul ~4 ms in fp32 and ~0.5 ms packed, the LM head ~60 ms and ~18 ms.
- ``w8a8``: int8 weights (one scale per output row) and int8 activations (quantized on the fly,
  one scale per call, fbgemm's dynamic linear), int32 accumulation. On a 2-core AMD EPYC with
  AVX-512 VNNI a one-row gate/up matmul took 0.06 ms against 0.20 ms in bf16 and a 300-row one
  3.6 ms against 6.4 ms, so the prompt gets faster too. It needs VNNI for full 8-bit
  activations: without it fbgemm's int8 dot product saturates, so it falls back to 7-bit
  activations (``reduce_range``), which measured 4 points of pass@1 worse (72 against 76 on 50
  single-line tasks); the load-time choice only offers w8a8 where the CPU has VNNI.

An fp16-packed linear keeps its fp32 weight *replaced by the fp16-rounded values*, the reference
used under autograd and by anything that reads the weight; both compute the same function up to
the order of accumulation, so quality 1 stays the base's own greedy answer (of the fp16-rounded
base). A w8a8 path also rounds the activations, so no weight could make the two paths agree:
its linears keep their weights as they are (a tied embedding's lookups stay exact), the tests
check the packed path against a plain reference of exactly its rounding, and the README's
tables measure what it costs in pass@1. Its activation scale is one per call, so a row's result
depends a little on the other rows of its request's call: quality 1 is then the greedy answer of
the w8a8 base only up to that rounding (at window 1, one row per step, the default and AR gave
the same 100 completions), and reused context K/V matches a recomputation only up to it too.
Rows of *different* requests in one call (a batch) are rounded per request (``groups``, see
:class:`GroupScaled`): no request's rows depend on another's by a single bit.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "PACKED_KINDS",
    "PackedWeight",
    "GroupScaled",
    "has_vnni",
    "pack_linears",
    "pack_weight",
    "packed_available",
    "use_packed",
]

PACKED_KINDS = ("fp16", "w8a8")


@functools.lru_cache(maxsize=1)
def has_vnni() -> bool:
    """Whether the CPU has an int8 dot product that does not saturate (AVX-512 VNNI / AVX-VNNI)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


@functools.cache
def packed_available(kind: str) -> bool:
    """Whether this torch build can pack and run ``kind`` weights on this CPU (fbgemm: x86)."""
    try:
        w, _ = pack_weight(torch.randn(8, 16), kind)
        return w.matmul(torch.randn(2, 16)).shape == (2, 8)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


@dataclass
class PackedWeight:
    packed: object  # fbgemm's packed weight (opaque)
    out_features: int
    run: Callable[..., torch.Tensor]  # the op on a 2-D input (and groups), looked up once (hot path)

    def matmul(self, x: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """``x @ W.T`` for fp32 ``x`` [..., in]; fp32 out. ``groups`` (long, one per row of the
        flattened ``x``): rows of different groups never affect each other (see GroupScaled)."""
        y = self.run(x.reshape(-1, x.shape[-1]).contiguous(), groups)
        return y.reshape(*x.shape[:-1], self.out_features)


def pack_weight(weight: torch.Tensor, kind: str) -> tuple[PackedWeight, torch.Tensor]:
    """``weight`` packed as ``kind``, and the fp32 values the packed copy stands for."""
    ops = torch.ops.quantized
    w = weight.detach().float().contiguous()
    if kind == "fp16":
        packed = ops.linear_prepack_fp16(w, None)
        fp16 = ops.linear_dynamic_fp16
        return PackedWeight(packed, w.shape[0], lambda x, groups=None: fp16(x, packed)), w.half().float()
    if kind == "w8a8":
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12).double()
        with warnings.catch_warnings():  # quantized tensors are deprecated; if a torch drops them,
            warnings.simplefilter("ignore", UserWarning)  # packed_available("w8a8") says False
            q = torch.quantize_per_channel(
                w, scale, torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8
            )
        values = q.dequantize()
        run = GroupScaled(ops.linear_prepack(q, None), values.sum(dim=1), not has_vnni())
        return PackedWeight(run.packed, w.shape[0], run), values
    raise ValueError(f"unknown packed weight kind {kind!r} (use {', '.join(PACKED_KINDS)})")


class GroupScaled:
    """fbgemm's dynamic int8 linear, with one activation scale per call or per group of rows.

    fbgemm quantizes a call's whole input with one scale from its range. For one request's rows
    that is the w8a8 format itself; but rows of several requests packed into one call (batching)
    would then depend on each other: one user's context could change another's completion. Given
    ``groups`` (each row's group), each group is quantized with the scale and zero point fbgemm
    would choose for it alone (its range with 0): its rows are mapped affinely onto a fixed grid
    (step 1/H, zero point H, which an extra row holding the grid's ends forces fbgemm to choose)
    shifted by the group's zero point, and the shift comes back out through the weight's row
    sums. The int32 accumulation is exact, so a row's result is a function of its group's rows
    only, bitwise, whatever else is in the call; against the group's own call it is the same
    quantization up to the float rounding of the mapping (a rare one-step difference).
    """

    def __init__(self, packed: object, row_sums: torch.Tensor, reduce_range: bool) -> None:
        self.packed, self.row_sums, self.reduce_range = packed, row_sums, reduce_range
        self.qmax = 127 if reduce_range else 255  # fbgemm's activation range (7 bits without VNNI)
        self.half = (self.qmax + 1) // 2
        self.top = (self.half - 1) / self.half
        self.op = torch.ops.quantized.linear_dynamic

    def __call__(self, x: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        if groups is None:
            return self.op(x, self.packed, self.reduce_range)
        n, k = x.shape
        lo_row, hi_row = torch.aminmax(x, dim=1)
        count = int(groups.max()) + 1
        zeros = x.new_zeros(count)  # the range always takes in 0
        lo = zeros.scatter_reduce(0, groups, lo_row, "amin")[groups, None]
        hi = zeros.scatter_reduce(0, groups, hi_row, "amax")[groups, None]
        scale = hi.sub_(lo).div_(self.qmax).clamp_(min=SMALL_SCALE)  # what fbgemm picks for the group
        zero = lo.div_(scale).neg_().round_().clamp_(0, self.qmax)
        h = self.half
        grid = x.new_empty(n + 1, k)
        torch.addcmul((zero - h) / h, x, 1.0 / (scale * h), out=grid[:n]).clamp_(-1.0, self.top)
        grid[n] = self.top
        grid[n, 0] = -1.0  # the grid's ends: fbgemm's range, so its scale is 1/H and its zero point H
        y = self.op(grid, self.packed, self.reduce_range)[:n]
        # fbgemm gave (1/H) * sum((q - H) * w): undo the grid's step and the zero point's shift
        return y.mul_(scale * h).addcmul_(scale * (h - zero), self.row_sums)


SMALL_SCALE = 6.1e-5  # fbgemm's smallest activation scale (SMALL_SCALE_THRESHOLD)


def use_packed(module: nn.Module, x: torch.Tensor) -> PackedWeight | None:
    """The packed weight of ``module`` when this call should use it (inference, fp32 CPU input)."""
    w = getattr(module, "packed", None)
    if w is None or torch.is_grad_enabled() or x.dtype != torch.float32 or x.device.type != "cpu":
        return None
    return w


def pack_linears(modules: list[nn.Module], kind: str) -> int:
    """Give each module's fp32 ``weight`` a packed copy (``module.packed``: a plain attribute,
    never trained or saved); fp16 also replaces the weight by the values the copy stands for
    (see the module docstring); returns the bytes added. A weight outside fp16's range stays
    unpacked (no supported base has one). Packing is slow (~5 s for the 0.5B base on one core in
    fp16), so the modules are packed on as many threads as torch uses (fbgemm releases the GIL),
    the largest first."""
    todo = [m for m in modules if not bool(torch.isinf(m.weight.detach().half()).any())]
    todo.sort(key=lambda m: -m.weight.numel())
    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool, torch.no_grad():
        for m, (w, values) in zip(todo, pool.map(lambda m: pack_weight(m.weight, kind), todo)):
            if kind == "fp16":
                m.weight.copy_(values)
            m.packed = w
    per_value = 2 if kind == "fp16" else 1
    return sum(m.weight.numel() * per_value for m in todo)
