"""Per-layer K/V storage for DualCache decoding.

Holds K/V of the whole canvas (prefix + middle + suffix). A window forward overwrites its own
slice and reads everything, so prefix and suffix K/V are computed once per block and reused.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(
        self,
        num_layers: int,
        batch: int,
        num_kv_heads: int,
        length: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        shape = (num_layers, batch, num_kv_heads, length, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    @property
    def length(self) -> int:
        return self.k.shape[3]

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        t = k.shape[2]
        if start < 0 or start + t > self.length:
            raise IndexError(f"cache write [{start}, {start + t}) outside [0, {self.length})")
        self.k[layer, :, :, start : start + t] = k
        self.v[layer, :, :, start : start + t] = v

    def read(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[layer], self.v[layer]
