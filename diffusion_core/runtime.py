"""What this machine's CPU is good at, measured once per process (never assumed from its name).

Why measure: some CPUs (Intel AMX) run bf16 matmuls several times faster than fp32, others run
them slower; the same checkpoint should pick the faster one on each.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable

import torch

__all__ = [
    "bf16_is_faster",
    "cpu_name",
    "cpu_threads",
    "fit_threads",
    "WEIGHT_FORMATS",
    "cpu_weights",
    "matmul_speeds",
    "weight_format_speeds",
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


def _best_seconds(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` seconds per call of each entry, measured interleaved (one round of each
    in turn), so a noisy neighbour slows all of them alike instead of whichever ran then."""
    for f in calls.values():
        f()  # warm-up (the BLAS / fbgemm pick their kernels)
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(repeats):
        for name, f in calls.items():
            t0 = time.perf_counter()
            for _ in range(4):
                f()
            best[name] = min(best[name], (time.perf_counter() - t0) / 4)
    return best


@functools.lru_cache(maxsize=1)
def matmul_speeds(n: int = 896, rows: int = 64, repeats: int = 6) -> dict[str, float]:
    """Seconds per [rows, n] x [n, 4n] matmul in fp32 and bf16 (best of ``repeats``): the shape
    of a transformer's MLP on a short block."""
    a = {dt: torch.randn(rows, n, dtype=dt) for dt in (torch.float32, torch.bfloat16)}
    b = {dt: torch.randn(4 * n, n, dtype=dt) for dt in a}
    linear = torch.nn.functional.linear
    return _best_seconds(
        {"fp32": lambda: linear(a[torch.float32], b[torch.float32]),
         "bf16": lambda: linear(a[torch.bfloat16], b[torch.bfloat16])},
        repeats,
    )  # fmt: skip


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


WEIGHT_FORMATS = ("plain", "int8", "fp16")  # how the CPU holds the matmul weights (see load_coder)


def _can_run(fmt: str, dtype: torch.dtype) -> bool:
    from .fp16_weights import fp16_available
    from .int8 import int8_available

    if fmt == "int8":
        return int8_available()
    if fmt == "fp16":
        return dtype == torch.float32 and fp16_available()
    return fmt == "plain"


@functools.lru_cache(maxsize=4)
def weight_format_speeds(dtype: torch.dtype, n: int = 896, repeats: int = 8) -> dict[str, float]:
    """Seconds per one-row [1, n] x [n, 5n] matmul (the memory-bound shape of a decoding step)
    for each weight format this build runs with ``dtype`` activations: ``plain`` (the weight in
    ``dtype``), ``int8`` (diffusion_core/int8.py), ``fp16`` (fp16_weights.py, fp32 only).
    Measured once per process."""
    from .fp16_weights import Fp16Weight
    from .int8 import Int8Weight

    w = torch.randn(5 * n, n, dtype=dtype)
    x = torch.randn(1, n, dtype=dtype)
    calls: dict[str, Callable[[], object]] = {"plain": lambda: torch.nn.functional.linear(x, w)}
    if _can_run("int8", dtype):
        q = Int8Weight.quantize(w)
        try:
            q.matmul(x)
            calls["int8"] = lambda: q.matmul(x)
        except RuntimeError:  # no int8 kernel for this dtype on this build
            pass
    if _can_run("fp16", dtype):
        h = Fp16Weight.pack(w)
        calls["fp16"] = lambda: h.matmul(x)
    out = _best_seconds(calls, repeats)
    return out


def cpu_weights(dtype: torch.dtype, forced: str | None = None, margin: float = 1.3) -> str:
    """The weight format for a CPU model with ``dtype`` activations: ``forced`` when given, else
    ``$DIFFILL_WEIGHTS``; ``auto`` (the default) is the fastest of :func:`weight_format_speeds`
    when it is at least ``margin`` times faster than ``plain``, else ``plain``. A format this
    build or dtype cannot run (``fp16`` needs fp32 activations) or an unknown value is refused
    with a ValueError that names it."""
    where = "weights" if forced is not None else "DIFFILL_WEIGHTS"
    mode = (forced if forced is not None else os.environ.get("DIFFILL_WEIGHTS", "auto")).strip().lower()
    if mode == "auto" or not mode:
        speeds = weight_format_speeds(dtype)
        best = min(speeds, key=speeds.get)
        return best if speeds[best] * margin < speeds["plain"] else "plain"
    if mode not in WEIGHT_FORMATS:
        raise ValueError(f"{where}={mode!r}: use auto, {', '.join(WEIGHT_FORMATS)}")
    if not _can_run(mode, dtype):
        raise ValueError(f"{where}={mode!r}: this build cannot run {mode} weights with {dtype} inputs")
    return mode


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
