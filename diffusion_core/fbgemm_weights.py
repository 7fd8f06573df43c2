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

With bf16 activations (a CPU with AMX, where bf16 runs the wide prompt fastest) w8a8 serves only
the few-row calls, up to :data:`FEW_ROWS` rows (the decoding steps and the LM head), their rows
converted to fp32 and back; wider calls run the bf16 weight, which stays as it is. Measured on a
2-core Xeon with AMX: the 896 x 9,728 gate/up matmul took 0.22 / 0.25 / 0.35 ms over 1 / 8 / 16
rows in w8a8 against 0.57-0.66 ms in bf16 (0.25 / 0.93 / 1.78 ms with weight_only.py's int8
kernel, whose cost grows with every row), and 0.98 against 0.93 ms over 64 rows; the LM head
3.1 ms against 14 ms (6.9 ms in int8) over one row. A decoding step of the 0.5B base went from
41 ms (bf16 + int8) to 33 ms, the 240-token prompt stayed at 181 ms.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FEW_ROWS",
    "PACKED_KINDS",
    "PackedWeight",
    "GroupScaled",
    "RoutedRows",
    "has_vnni",
    "pack_linears",
    "pack_weight",
    "packed_available",
    "takes_packed",
    "use_packed",
]

PACKED_KINDS = ("fp16", "w8a8")
FEW_ROWS = 16  # with bf16 activations, calls of at most this many rows take w8a8 (module docstring)


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
    kind: str  # "fp16" or "w8a8" (PACKED_KINDS)

    def matmul(self, x: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """``x @ W.T`` for ``x`` [..., in], out in ``x``'s dtype (fbgemm computes from fp32 rows:
        bf16 rows are converted there and back). ``groups`` (long, one per row of the flattened
        ``x``): rows of different groups never affect each other (see GroupScaled)."""
        y = self.run(x.reshape(-1, x.shape[-1]).float().contiguous(), groups)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


def pack_weight(weight: torch.Tensor, kind: str) -> tuple[PackedWeight, torch.Tensor]:
    """``weight`` packed as ``kind``, and the fp32 values the packed copy stands for."""
    ops = torch.ops.quantized
    w = weight.detach().float().contiguous()
    if kind == "fp16":
        packed = ops.linear_prepack_fp16(w, None)
        fp16 = ops.linear_dynamic_fp16
        run16 = lambda x, groups=None: fp16(x, packed)  # noqa: E731
        return PackedWeight(packed, w.shape[0], run16, kind), w.half().float()
    if kind == "w8a8":
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12).double()
        with warnings.catch_warnings():  # quantized tensors are deprecated; if a torch drops them,
            warnings.simplefilter("ignore", UserWarning)  # packed_available("w8a8") says False
            q = torch.quantize_per_channel(
                w, scale, torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8
            )
        values = q.dequantize()
        run = GroupScaled(ops.linear_prepack(q, None), values.sum(dim=1), not has_vnni())
        return PackedWeight(run.packed, w.shape[0], run, kind), values
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
        lo, hi = torch.aminmax(x, dim=1, keepdim=True)  # the range always takes in 0
        count = int(groups.max()) + 1
        if count < n:  # a group of several rows: the group's range (else each row is its own)
            zeros = x.new_zeros(count)
            lo = zeros.scatter_reduce(0, groups, lo[:, 0], "amin")[groups, None]
            hi = zeros.scatter_reduce(0, groups, hi[:, 0], "amax")[groups, None]
        lo = lo.clamp_(max=0.0)
        scale = hi.clamp_(min=0.0).sub_(lo).div_(self.qmax).clamp_(min=SMALL_SCALE)  # fbgemm's pick
        zero = lo.div(scale).neg_().round_().clamp_(0, self.qmax)
        h = self.half
        step = scale * h
        grid = x.new_empty(n + 1, k)
        torch.addcmul(zero.sub(h).div_(h), x, step.reciprocal(), out=grid[:n]).clamp_(-1.0, self.top)
        grid[n] = self.top
        grid[n, 0] = -1.0  # the grid's ends: fbgemm's range, so its scale is 1/H and its zero point H
        y = self.op(grid, self.packed, self.reduce_range)[:n]
        # fbgemm gave (1/H) * sum((q - H) * w): undo the grid's step and the zero point's shift
        return y.mul_(step).addcmul_(zero.sub_(h).mul_(scale).neg_(), self.row_sums)


SMALL_SCALE = 6.1e-5  # fbgemm's smallest activation scale (SMALL_SCALE_THRESHOLD)


def takes_packed(kind: str, x: torch.Tensor) -> bool:
    """Whether a ``kind`` packed weight serves this inference call: every fp32 call, and with bf16
    activations a w8a8 call of at most :data:`FEW_ROWS` rows (wider ones run bf16 on AMX)."""
    if x.device.type != "cpu":
        return False
    if x.dtype == torch.float32:
        return True
    return x.dtype == torch.bfloat16 and kind == "w8a8" and x.numel() // x.shape[-1] <= FEW_ROWS


def use_packed(
    module: nn.Module, x: torch.Tensor, groups: torch.Tensor | None = None
) -> PackedWeight | RoutedRows | None:
    """The packed weight of ``module`` when this call should use it (inference, :func:`takes_packed`).
    A call of several requests' rows (``groups``) with bf16 activations is routed per request:
    each request's rows take the path they would take alone (:class:`RoutedRows`)."""
    w = getattr(module, "packed", None)
    if w is None or torch.is_grad_enabled():
        return None
    if groups is None or x.dtype == torch.float32 or w.kind != "w8a8" or x.device.type != "cpu":
        return w if takes_packed(w.kind, x) else None
    few = torch.bincount(groups)[groups] <= FEW_ROWS  # each row: is its request's call a few-row one
    return RoutedRows(w, module.weight, few) if bool(few.any()) else None


@dataclass
class RoutedRows:
    """A packed call of several requests with bf16 activations: the rows of requests that are
    few-row calls alone take w8a8 (rounded per request), the others the bf16 weight, so no
    request's rows depend on how many rows the others bring."""

    packed: PackedWeight
    weight: torch.Tensor
    few: torch.Tensor  # bool, one per row of the flattened call

    def matmul(self, x: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        if bool(self.few.all()):
            y = self.packed.matmul(flat, groups)
        else:
            y = flat.new_empty(flat.shape[0], self.packed.out_features)
            wide = ~self.few
            y[wide] = F.linear(flat[wide], self.weight)
            y[self.few] = self.packed.matmul(flat[self.few], None if groups is None else groups[self.few])
        return y.reshape(*x.shape[:-1], self.packed.out_features)


def pack_linears(modules: list[nn.Module], kind: str) -> int:
    """Give each module's ``weight`` (fp32; bf16 too for w8a8) a packed copy (``module.packed``:
    a plain attribute, never trained or saved); fp16 also replaces the weight by the values the
    copy stands for (see the module docstring); returns the bytes added. A weight outside fp16's range stays
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
