"""Per-layer K/V storage for DualCache decoding.

Holds K/V of the whole canvas (prefix + middle + suffix). A window forward overwrites its own
slice and reads everything, so prefix and suffix K/V are computed once per block and reused.

``write_mask`` (bool [B, length], optional) marks the positions a *window* write may replace; the
others keep their cached K/V. Batched canvases share one window, and without it a short row's
suffix would be refreshed mid-block when it would not be if decoded alone; with it, batching
never changes a row's result. A write covering the whole cache (a refresh) ignores it.
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
        self.write_mask: torch.Tensor | None = None
        # positions from here on hold K/V moved after an edit, computed before it (approximate;
        # coder/prefix_cache.py), None: all exact
        self.moved_from: int | None = None

    @property
    def length(self) -> int:
        return self.k.shape[3]

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        t = k.shape[2]
        if start < 0 or start + t > self.length:
            raise IndexError(f"cache write [{start}, {start + t}) outside [0, {self.length})")
        if self.write_mask is not None and t < self.length:
            keep = ~self.write_mask[:, None, start : start + t, None]
            k = torch.where(keep, self.k[layer, :, :, start : start + t], k)
            v = torch.where(keep, self.v[layer, :, :, start : start + t], v)
        self.k[layer, :, :, start : start + t] = k
        self.v[layer, :, :, start : start + t] = v

    def read(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[layer], self.v[layer]
