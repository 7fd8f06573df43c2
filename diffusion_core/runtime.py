"""What this machine's CPU is good at, measured once per process (never assumed from its name).

Why measure: some CPUs (Intel AMX) run bf16 matmuls several times faster than fp32, others run
them slower; the same checkpoint should pick the faster one on each.
"""

from __future__ import annotations

import functools
import os
import time

import torch

__all__ = [
    "bf16_is_faster",
    "cpu_name",
    "cpu_threads",
    "fit_threads",
    "int8_is_faster",
    "int8_wanted",
    "matmul_speeds",
]


def cpu_threads() -> int:
    """Cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cpu_name() -> str:
    """The CPU's model name as the kernel reports it (results files say which machine ran them)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def fit_threads() -> int:
    """Never more torch threads than cores this process may use (a container's CPU set, taskset):
    torch counts the machine's cores, and oversubscribed threads make every matmul slower.
    ``OMP_NUM_THREADS`` / ``torch.set_num_threads`` set by the user are left alone when lower."""
    allowed = cpu_threads()
    if torch.get_num_threads() > allowed:
        torch.set_num_threads(allowed)
    return torch.get_num_threads()


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


@functools.lru_cache(maxsize=4)
def int8_is_faster(dtype: torch.dtype, margin: float = 1.3, n: int = 896, repeats: int = 8) -> bool:
    """True when a one-row [1, n] x [n, 5n] matmul with weight-only int8 measures at least
    ``margin`` times faster than in ``dtype`` here (the memory-bound shape of a decoding step).
    Measured each time it is asked in a new process (cached)."""
    from .int8 import Int8Weight, int8_available

    if not int8_available():
        return False
    w = torch.randn(5 * n, n, dtype=dtype)
    x = torch.randn(1, n, dtype=dtype)
    q = Int8Weight.quantize(w)

    def best(f) -> float:  # noqa: ANN001
        f()
        t = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(4):
                f()
            t = min(t, (time.perf_counter() - t0) / 4)
        return t

    try:
        fast = best(lambda: q.matmul(x))
    except RuntimeError:  # no int8 kernel for this dtype on this build
        return False
    return fast * margin < best(lambda: torch.nn.functional.linear(x, w))


def int8_wanted(dtype: torch.dtype) -> bool:
    """``DIFFILL_INT8``: ``1`` on, ``0`` off, ``auto`` (the default) where :func:`int8_is_faster`."""
    mode = os.environ.get("DIFFILL_INT8", "auto").lower()
    if mode == "auto":
        return int8_is_faster(dtype)
    return mode in ("1", "on", "true")


# --------------------------------------------------------------------------------- devices / dtypes
_DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None means CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None means bf16 on CUDA (fast, and what the models were trained in) and fp32 on CPU
    (CPU bf16 matmuls are slow and imprecise)."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r} (use one of {', '.join(sorted(_DTYPES))})")
    return _DTYPES[key]
