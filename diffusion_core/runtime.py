"""What this machine's CPU is good at, measured once per process (never assumed from its name).

Why measure: some CPUs (Intel AMX) run bf16 matmuls several times faster than fp32, others run
them slower; the same checkpoint should pick the faster one on each.
"""

from __future__ import annotations

import functools
import os
import time

import torch

__all__ = ["bf16_is_faster", "cpu_threads", "matmul_speeds"]


def cpu_threads() -> int:
    """Cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@functools.lru_cache(maxsize=1)
def matmul_speeds(n: int = 896, rows: int = 64, repeats: int = 6) -> dict[str, float]:
    """Seconds per [rows, n] x [n, 4n] matmul in fp32 and bf16 (best of ``repeats``): the shape
    of a transformer's MLP on a short block."""
    out = {}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(rows, n, dtype=dt)
        b = torch.randn(4 * n, n, dtype=dt)
        torch.nn.functional.linear(a, b)  # warm-up (oneDNN picks its kernel)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(4):
                torch.nn.functional.linear(a, b)
            best = min(best, (time.perf_counter() - t0) / 4)
        out[name] = best
    return out


def bf16_is_faster(margin: float = 1.2) -> bool:
    """True when bf16 matmuls measure at least ``margin`` times faster than fp32 here.
    ``DIFFILL_CPU_DTYPE=bf16|fp32`` overrides the measurement."""
    forced = os.environ.get("DIFFILL_CPU_DTYPE", "").lower()
    if forced in ("bf16", "bfloat16"):
        return True
    if forced in ("fp32", "float32"):
        return False
    s = matmul_speeds()
    return s["bf16"] * margin < s["fp32"]
