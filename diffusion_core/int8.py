"""Weight-only int8 matmuls for the CPU's memory-bound steps.

Why: a forward over one to a few rows (an AR step, a verify step with a short window, the LM head
on the rows the sampler reads) is bound by reading the weights, and torch's bf16 path for a
handful of rows is slow on the CPU (measured on the 2-core development machine: the 151,936-row
LM head took ~13 ms in bf16 and ~5 ms in int8; the MLP's gate/up ~0.5 ms and ~0.16 ms).
Wider forwards (the context, long windows) are compute-bound, and there bf16 on AMX wins.

So a quantized linear keeps both: int8 values with one bf16 scale per output row, used when a
call has at most :data:`MAX_ROWS` rows, and the bf16 weight *replaced by the dequantized int8
values*, used otherwise. Both paths then compute the same function (up to the order of
accumulation), so which one runs never changes an answer by more than rounding, and the
quality-1 guarantee (the base's own greedy tokens) holds across them.

The base of Diffill-Coder was a Q4_K_M GGUF (mostly Q5_0 and Q8_0 tensors with one scale per 32
weights); one scale per row of 896 or 4,864 inputs is coarser, so this is a (small) further
approximation, measured in the README's tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["MAX_ROWS", "Int8Weight", "int8_available", "quantize_linears"]

MAX_ROWS = 4  # calls with more rows than this use the (dequantized) bf16 weight


def int8_available() -> bool:
    return hasattr(torch, "_weight_int8pack_mm")


@dataclass
class Int8Weight:
    q: torch.Tensor  # int8 [out, in]
    scale: torch.Tensor  # [out], the activation dtype (the kernel's requirement)

    @classmethod
    def quantize(cls, weight: torch.Tensor) -> Int8Weight:
        """Symmetric per-output-row int8 (scale = max |w| / 127)."""
        w = weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12).to(weight.dtype)
        q = torch.round(w / scale.float()[:, None]).clamp(-127, 127).to(torch.int8)
        return cls(q.contiguous(), scale.contiguous())

    def dequantize(self) -> torch.Tensor:
        """The weight this stands for, in the activation dtype (the reference of :meth:`matmul`)."""
        return (self.q.float() * self.scale.float()[:, None]).to(self.scale.dtype)

    def matmul(self, x: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        """``x @ W.T`` for ``x`` [..., in] in the scale's dtype. ``groups`` is not needed: the
        activations are not rounded, so rows never depend on each other."""
        flat = x.reshape(-1, x.shape[-1]).contiguous()
        y = torch._weight_int8pack_mm(flat, self.q, self.scale)
        return y.reshape(*x.shape[:-1], y.shape[-1])


def use_int8(module: nn.Module, x: torch.Tensor) -> Int8Weight | None:
    """The int8 weight of ``module`` when this call should use it (few rows, inference)."""
    w = getattr(module, "int8", None)
    if w is None or torch.is_grad_enabled() or x.dtype != w.scale.dtype:
        return None
    return w if x.numel() // x.shape[-1] <= MAX_ROWS else None


def quantize_linears(modules: list[nn.Linear]) -> int:
    """Give each linear an int8 weight and make its bf16 weight the dequantized int8 values;
    returns the bytes the int8 copies take."""
    total = 0
    for lin in modules:
        w = Int8Weight.quantize(lin.weight)
        with torch.no_grad():
            lin.weight.copy_(w.dequantize())
        lin.int8 = w  # a plain attribute: not a parameter, never trained or saved
        total += w.q.numel() + w.scale.numel() * w.scale.element_size()
    return total
