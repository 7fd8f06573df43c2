"""Weight-only quantized matmuls (int8, int4) for the CPU's memory-bound few-row calls.

Why: a forward over one to a few rows (an AR step, a verify step with a short window, the LM head
on the rows the sampler reads) is bound by reading the weights, and torch's bf16 path for a
handful of rows is slow on the CPU (measured on the 2-core development machine: the 151,936-row
LM head took ~13 ms in bf16 and ~5 ms in int8; the MLP's gate/up ~0.5 ms and ~0.16 ms).
Wider forwards (the context, long windows) are compute-bound, and there bf16 on AMX wins.

So a quantized linear keeps both: the quantized copy (``module.wq``), used when a call has at
most :data:`MAX_ROWS` rows, and the bf16 weight *replaced by the dequantized values*, used
otherwise. Both paths then compute the same function (up to the order of accumulation), so which
one runs never changes an answer by more than rounding, and the quality-1 guarantee (the base's
own greedy tokens) holds across them. The activations are never rounded, so a row's result never
depends on the other rows of its call (checked bitwise for int4): batched requests stay apart.

- ``int8``: symmetric, one scale per output row (torch's ``_weight_int8pack_mm``).
- ``int4``: asymmetric, one scale and zero per :data:`INT4_GROUP` inputs (torch's CPU int4
  kernel, ``_weight_int4pack_mm_for_cpu``): half of int8's bytes, as llama.cpp's 4-bit formats.
  Only the blocks' linears: an int4 LM head moved the base's top choices (1.4 points of pass@1
  on 300 single lines) for no measurable speed, so the head keeps 8 bits (``Transformer.quantize``).
  On the 0.5B base a one-row decoding step took 26.9 ms against w8a8's 32.9 (2-core Xeon, AMX).

The base of Diffill-Coder was a Q4_K_M GGUF (mostly Q5_0 and Q8_0 tensors with one scale per 32
weights); both are further approximations, measured in the README's tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "INT4_GROUP",
    "MAX_ROWS",
    "QUANT_KINDS",
    "Int4Weight",
    "Int8Weight",
    "quant_available",
    "quantize_linears",
    "quantize_weight",
    "use_weight_only",
]

MAX_ROWS = 4  # calls with more rows than this use the (dequantized) bf16 weight
INT4_GROUP = 32  # inputs per int4 scale and zero (llama.cpp's Q4_0/Q4_1 use 32 too)
QUANT_KINDS = ("int8", "int4")


def quant_available(kind: str) -> bool:
    """Whether this torch build has the weight-only ``kind`` kernel for the CPU."""
    if kind == "int8":
        return hasattr(torch, "_weight_int8pack_mm")
    if kind == "int4":
        return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")
    raise ValueError(f"unknown weight-only kind {kind!r} (use {', '.join(QUANT_KINDS)})")


@dataclass
class Int8Weight:
    q: torch.Tensor  # int8 [out, in]
    scale: torch.Tensor  # [out], the activation dtype (the kernel's requirement)

    @classmethod
    def quantize(cls, weight: torch.Tensor, values: bool = True) -> tuple[Int8Weight, torch.Tensor | None]:
        """Symmetric per-output-row int8 (scale = max |w| / 127), and the weight it stands for
        (None unless ``values``)."""
        w = weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12).to(weight.dtype)
        q = torch.round(w / scale.float()[:, None]).clamp(-127, 127).to(torch.int8)
        out = cls(q.contiguous(), scale.contiguous())
        return out, out.dequantize() if values else None

    @property
    def dtype(self) -> torch.dtype:
        return self.scale.dtype

    @property
    def nbytes(self) -> int:
        return self.q.numel() + self.scale.numel() * self.scale.element_size()

    def dequantize(self) -> torch.Tensor:
        """The weight this stands for, in the activation dtype (the reference of :meth:`matmul`)."""
        return (self.q.float() * self.scale.float()[:, None]).to(self.scale.dtype)

    def matmul(self, x: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """``x @ W.T`` for ``x`` [..., in] in the scale's dtype. ``groups`` is not needed: the
        activations are not rounded, so rows never depend on each other."""
        flat = x.reshape(-1, x.shape[-1]).contiguous()
        y = torch._weight_int8pack_mm(flat, self.q, self.scale)
        return y.reshape(*x.shape[:-1], y.shape[-1])


@dataclass
class Int4Weight:
    packed: torch.Tensor  # torch's CPU int4 layout of [out, in] values 0..15
    scale_zeros: torch.Tensor  # [in / group, out, 2] in the activation dtype: w = (q - 8) * s + z
    group: int

    @staticmethod
    def fits(weight: torch.Tensor, group: int = INT4_GROUP) -> bool:
        """The kernel's shapes: rows a multiple of 16, inputs a multiple of the group."""
        return weight.dim() == 2 and weight.shape[0] % 16 == 0 and weight.shape[1] % group == 0

    @classmethod
    def quantize(
        cls, weight: torch.Tensor, values: bool = True, group: int = INT4_GROUP
    ) -> tuple[Int4Weight, torch.Tensor | None]:
        """Asymmetric int4 per ``group`` inputs (the group's min and max are levels 0 and 15), and
        the weight it stands for in ``weight``'s dtype, as the kernel computes with it (None
        unless ``values``)."""
        out_f, in_f = weight.shape
        g = weight.detach().float().reshape(out_f, in_f // group, group)
        lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
        scale = ((hi - lo) / 15).clamp(min=1e-12)
        q = ((g - lo) / scale).round().clamp(0, 15)
        # the kernel's convention, w = (q - 8) * scale + zero, with scale and zero in weight's dtype
        s, z = (t.to(weight.dtype).float() for t in (scale, lo + 8 * scale))
        sz = torch.stack([s[..., 0], z[..., 0]], dim=-1).transpose(0, 1).to(weight.dtype)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.reshape(out_f, in_f).to(torch.int32), 8)
        stands_for = ((q - 8) * s + z).reshape(out_f, in_f).to(weight.dtype) if values else None
        return cls(packed, sz.contiguous(), group), stands_for

    @property
    def dtype(self) -> torch.dtype:
        return self.scale_zeros.dtype

    @property
    def nbytes(self) -> int:
        sz = self.scale_zeros
        return self.packed.numel() * self.packed.element_size() + sz.numel() * sz.element_size()

    def matmul(self, x: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """``x @ W.T`` for ``x`` [..., in] in the scales' dtype; rows never depend on each other."""
        flat = x.reshape(-1, x.shape[-1]).contiguous()
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, self.group, self.scale_zeros)
        return y.reshape(*x.shape[:-1], y.shape[-1])


QuantWeight = Int8Weight | Int4Weight


def quantize_weight(
    weight: torch.Tensor, kind: str, values: bool = True
) -> tuple[QuantWeight, torch.Tensor | None]:
    """``weight`` as a ``kind`` copy, and the values that copy stands for in ``weight``'s dtype
    (None unless ``values``: a timing needs only the copy)."""
    if kind not in QUANT_KINDS:
        raise ValueError(f"unknown weight-only kind {kind!r} (use {', '.join(QUANT_KINDS)})")
    return (Int8Weight if kind == "int8" else Int4Weight).quantize(weight, values)


def use_weight_only(module: nn.Module, x: torch.Tensor) -> QuantWeight | None:
    """The quantized weight of ``module`` when this call should use it (inference, few rows)."""
    w = getattr(module, "wq", None)
    if w is None or torch.is_grad_enabled() or x.dtype != w.dtype:
        return None
    return w if x.numel() // x.shape[-1] <= MAX_ROWS else None


def quantize_linears(modules: list[nn.Module], kind: str) -> int:
    """Give each linear a ``kind`` copy (``module.wq``: a plain attribute, never trained or saved)
    and make its bf16 weight the dequantized values; returns the bytes the copies take. A weight
    whose shape the kernel cannot take stays as it is."""
    total = 0
    for lin in modules:
        if kind == "int4" and not Int4Weight.fits(lin.weight):
            continue
        w, values = quantize_weight(lin.weight, kind)
        with torch.no_grad():
            lin.weight.copy_(values)
        lin.wq = w
        total += w.nbytes
    return total
