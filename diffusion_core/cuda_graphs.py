"""CUDA graphs for the DualCache denoising step.

At batch 1 a window step of a 0.5B model launches ~250 kernels that each run for microseconds;
Python and the launch path, not the GPU, then set the step time. A captured graph replays the
whole step with one launch.

:class:`GraphedTransformer` is a drop-in for :class:`~diffusion_core.model.Transformer` in the
sampler (same ``forward``/``logits``/``new_cache``/``head_weight``/``cfg``):
- ``new_cache(batch, length)`` hands out a view of a pooled, zero-initialised K/V buffer whose
  length is rounded up to a bucket; the pool lives as long as the wrapper, so graphs captured on it
  stay valid across requests.
- a window forward (``start`` > 0 or shorter than the cache) on such a cache replays the graph for
  (batch, window length, length bucket), capturing it on first use. Inputs are copied into static
  buffers; the cache slice beyond the real canvas is masked out as padding keys, and ``start``
  lives in a device tensor so one graph serves every block position.
- everything else (full-canvas refreshes, CPU, foreign caches) runs eagerly.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from .kv_cache import KVCache

__all__ = ["GraphedTransformer", "length_bucket"]

_BUCKETS = (256, 512, 1024, 1536, 2048, 3072, 4096, 6144, 8192)


def length_bucket(length: int) -> int:
    """Cache lengths share graphs within a bucket; beyond the table, multiples of 4096."""
    for b in _BUCKETS:
        if length <= b:
            return b
    return -(-length // 4096) * 4096


class _PooledCache(KVCache):
    """A :class:`KVCache` whose K/V are the first ``length`` positions of a pooled buffer."""

    def __init__(self, pool_k: torch.Tensor, pool_v: torch.Tensor, length: int) -> None:
        self.k = pool_k[:, :, :, :length]
        self.v = pool_v[:, :, :, :length]
        self.write_mask = None
        self.pool_k, self.pool_v = pool_k, pool_v
        self.bucket = pool_k.shape[3]


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph | None
    ids: torch.Tensor
    positions: torch.Tensor
    key_mask: torch.Tensor
    write_mask: torch.Tensor
    start: torch.Tensor
    out: torch.Tensor


class GraphedTransformer(nn.Module):
    """Wraps a CUDA :class:`Transformer` so DualCache window steps replay captured graphs."""

    def __init__(self, model: nn.Module, max_graphs: int = 48, max_pools: int = 4) -> None:
        super().__init__()
        self.model = model
        self.cfg = model.cfg
        self.max_graphs = max_graphs
        self.max_pools = max_pools
        self._pools: OrderedDict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._graphs: OrderedDict[tuple[int, int, int], _Graph] = OrderedDict()
        self._mempool = None
        self.captures = 0  # graphs captured so far (the benchmark reports it)
        self.replays = 0
        # tests without CUDA: run the static-buffer path eagerly in place of capture and replay
        self.emulate = False

    # ---------------------------------------------------------------- Transformer interface
    @property
    def head_weight(self) -> torch.Tensor:
        return self.model.head_weight

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.logits(hidden)

    def new_cache(self, batch: int, length: int) -> KVCache:
        p = self.model.head_weight
        if p.device.type != "cuda" and not self.emulate:
            return self.model.new_cache(batch, length)
        key = (batch, length_bucket(length))
        if key not in self._pools:
            while len(self._pools) >= self.max_pools:
                old, _ = self._pools.popitem(last=False)
                for g in [k for k in self._graphs if (k[0], k[2]) == old]:
                    del self._graphs[g]
            shape = (self.cfg.num_layers, batch, self.cfg.num_kv_heads, key[1], self.cfg.head_dim)
            # zeros, not empty: padding keys are masked but their V still meets a 0-weight multiply
            self._pools[key] = (
                torch.zeros(shape, dtype=p.dtype, device=p.device),
                torch.zeros(shape, dtype=p.dtype, device=p.device),
            )
        self._pools.move_to_end(key)
        return _PooledCache(*self._pools[key], length)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        b, t = input_ids.shape
        graphable = (
            isinstance(cache, _PooledCache)
            and (input_ids.is_cuda or self.emulate)
            and t < cache.length
            and self.model.use_kernels is not False
            and not torch.is_grad_enabled()
        )
        if not graphable:
            return self.model(input_ids, positions, key_mask, cache=cache, start=start)
        if start < 0 or start + t > cache.length:
            raise IndexError(f"cache write [{start}, {start + t}) outside [0, {cache.length})")
        if positions is None:
            positions = torch.arange(start, start + t, device=input_ids.device).expand(b, t)
        key = (b, t, cache.bucket)
        g = self._graphs.get(key)
        fresh = g is None
        if fresh:
            g = self._static(b, t, cache)
        self._load(g, input_ids, positions, key_mask, cache, start)
        if self.emulate:
            g.out = self._run(g, cache)
            self._graphs[key] = g
            self.captures += fresh
        else:
            if fresh:
                self._capture(key, g, cache)
            g.graph.replay()
        self.replays += 1
        self._graphs.move_to_end(key)
        return g.out.clone()

    # ---------------------------------------------------------------- capture / replay
    def _static(self, b: int, t: int, cache: _PooledCache) -> _Graph:
        dev = cache.pool_k.device
        lb = cache.bucket
        return _Graph(
            graph=None if self.emulate else torch.cuda.CUDAGraph(),
            ids=torch.zeros((b, t), dtype=torch.long, device=dev),
            positions=torch.zeros((b, t), dtype=torch.long, device=dev),
            key_mask=torch.zeros((b, lb), dtype=torch.bool, device=dev),
            write_mask=torch.ones((b, lb), dtype=torch.bool, device=dev),
            start=torch.zeros(1, dtype=torch.int32, device=dev),
            out=torch.empty(0, device=dev),
        )

    @staticmethod
    def _load(
        g: _Graph,
        ids: torch.Tensor,
        positions: torch.Tensor,
        key_mask: torch.Tensor | None,
        cache: _PooledCache,
        start: int,
    ) -> None:
        n = cache.length
        g.ids.copy_(ids)
        g.positions.copy_(positions)
        if key_mask is None:
            g.key_mask[:, :n] = True
        else:
            g.key_mask[:, :n].copy_(key_mask)
        g.key_mask[:, n:] = False
        if cache.write_mask is None:
            g.write_mask.fill_(True)
        else:
            g.write_mask[:, :n].copy_(cache.write_mask)
        g.start.fill_(start)

    def _run(self, g: _Graph, cache: _PooledCache) -> torch.Tensor:
        full = KVCache.__new__(KVCache)
        full.k, full.v, full.write_mask = cache.pool_k, cache.pool_v, g.write_mask
        return self.model(g.ids, g.positions, g.key_mask, cache=full, start=g.start)

    def _capture(self, key: tuple[int, int, int], g: _Graph, cache: _PooledCache) -> None:
        while len(self._graphs) >= self.max_graphs:
            self._graphs.popitem(last=False)
        if self._mempool is None:
            self._mempool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # compiles the Triton kernels and settles the allocator
                self._run(g, cache)
        torch.cuda.current_stream().wait_stream(side)
        # the warm-up already wrote this step's K/V; the replay that follows rewrites the same values
        with torch.cuda.graph(g.graph, pool=self._mempool):
            g.out = self._run(g, cache)
        self._graphs[key] = g
        self.captures += 1
