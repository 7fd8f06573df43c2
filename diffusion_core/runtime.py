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
    "head_format",
    "WEIGHT_FORMATS",
    "cpu_numerics",
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
    """The CPU's model name as the kernel reports it, with its widest matmul instructions
    (results files say which machine ran them: "AMD EPYC" alone names hosts with AVX2 only and
    with AVX-512 BF16, whose fast paths differ)."""
    name, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name") and not name:
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    if not name:
        import platform

        name = platform.processor() or platform.machine()
    isa = next((label for flag, label in _MATMUL_ISA if flag in flags), None)
    return f"{name} ({isa})" if isa else name


# the first of these a CPU has names its matmul class (AMX > AVX-512 BF16 > AVX-512 > AVX2)
_MATMUL_ISA = (
    ("amx_bf16", "AMX"),
    ("avx512_bf16", "AVX-512 BF16"),
    ("avx512f", "AVX-512"),
    ("avx2", "AVX2"),
)


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


# how the CPU holds the matmul weights (see load_coder)
WEIGHT_FORMATS = ("plain", "int8", "int4", "fp16", "w8a8")
_FP32_ONLY = ("fp16",)  # fbgemm's fp16 format takes fp32 activations (w8a8: bf16 too, few rows)
PROMPT_ROWS, ANSWER_STEPS = 256, 8  # a typical single-line request: its prompt, its one-row steps
STEP_ROWS = 32_768  # the one-row calls' weight: too big for the cache (weight_format_speeds)


def _can_run(fmt: str, dtype: torch.dtype) -> bool:
    from .fbgemm_weights import packed_available
    from .weight_only import QUANT_KINDS, quant_available

    if fmt in QUANT_KINDS:
        return quant_available(fmt)
    if fmt in _FP32_ONLY:
        return dtype == torch.float32 and packed_available(fmt)
    if fmt == "w8a8":
        return dtype in (torch.float32, torch.bfloat16) and packed_available(fmt)
    return fmt == "plain"


def _offered(fmt: str, dtype: torch.dtype) -> bool:
    """Formats the measured choice may pick: w8a8 only with VNNI, where its activations keep 8
    bits (fbgemm_weights.py: 7 bits measured 4 points of pass@1 worse); never int4, which costs
    about a point of pass@1 and whose gain (fewer bytes streamed from memory at every step) a
    weight small enough to time at load does not show where it fits the CPU's cache (a 2-core
    Xeon with a 300 MB L3: int4 timed slower than w8a8 there, yet the 0.5B base's step ran 1.22x
    faster, README). Forcing either works anywhere."""
    from .fbgemm_weights import has_vnni

    return _can_run(fmt, dtype) and fmt != "int4" and (fmt != "w8a8" or has_vnni())


def head_format(fmt: str, dtype: torch.dtype) -> str | None:
    """The LM head's own format where it differs from the blocks': an int4 model's head keeps 8
    bits (weight_only.py: int4 there cost quality and no speed), w8a8 where the measured choice
    would offer it; None: the head goes with the blocks (or stays plain)."""
    return "w8a8" if fmt == "int4" and _offered("w8a8", dtype) else None


@functools.lru_cache(maxsize=4)
def weight_format_speeds(dtypes: tuple[torch.dtype, ...], n: int = 896, repeats: int = 4) -> dict:
    """Seconds the matmuls of a typical single-line request take per [5n, n] weight: one
    :data:`PROMPT_ROWS`-row call (the prompt, compute-bound) and :data:`ANSWER_STEPS` one-row
    calls (the decoding steps, bound by reading the weight), for every ``(dtype, format)`` the
    choice may pick with those activation dtypes: ``plain`` (the weight in ``dtype``), ``int8``
    and ``int4`` (diffusion_core/weight_only.py: its few-row path, else plain), ``fp16``
    (fbgemm_weights.py, fp32 only) and ``w8a8`` (fbgemm_weights.py: every fp32 call; with bf16
    the few-row calls, else plain). The one-row calls are timed on a weight of :data:`STEP_ROWS`
    rows, scaled to [5n, n]: a model's weights are read from memory at every step, and a weight
    small enough to stay in the cache hides how each kernel streams them (on a 2-core Xeon with
    AMX the int8 and w8a8 kernels tied on a cached [5n, n] weight, while on the 0.5B base w8a8's
    step was 1.25x faster). Measured interleaved, once per process."""
    from .fbgemm_weights import pack_weight, takes_packed
    from .weight_only import MAX_ROWS, QUANT_KINDS, quantize_weight

    linear = torch.nn.functional.linear
    scale = 5 * n / STEP_ROWS
    calls: dict[tuple[torch.dtype, str], tuple[Callable, Callable]] = {}  # (prompt call, step call)
    w32, tall32 = torch.randn(5 * n, n), torch.randn(STEP_ROWS, n)
    packs: dict[str, tuple] = {}  # fbgemm packs from fp32 values: one per format, any dtype
    for dt in dtypes:
        w, tall = w32.to(dt), tall32.to(dt)
        x, x1 = torch.randn(PROMPT_ROWS, n, dtype=dt), torch.randn(1, n, dtype=dt)
        calls[(dt, "plain")] = (lambda w=w, x=x: linear(x, w), lambda t=tall, x1=x1: linear(x1, t))
        for fmt in QUANT_KINDS:
            if _offered(fmt, dt):
                q, _ = quantize_weight(tall, fmt, values=False)
                try:
                    q.matmul(x1)
                except RuntimeError:  # no kernel for this dtype on this build
                    continue
                assert PROMPT_ROWS > MAX_ROWS  # the prompt runs the plain weight
                calls[(dt, fmt)] = (calls[(dt, "plain")][0], lambda q=q, x1=x1: q.matmul(x1))
        for fmt in ("fp16", "w8a8"):
            if _offered(fmt, dt):
                if fmt not in packs:
                    packs[fmt] = pack_weight(w32, fmt)[0], pack_weight(tall32, fmt)[0]
                p, pt = packs[fmt]
                wide = (lambda p=p, x=x: p.matmul(x)) if takes_packed(fmt, x) else calls[(dt, "plain")][0]
                calls[(dt, fmt)] = (wide, lambda pt=pt, x1=x1: pt.matmul(x1))
    prompt = _best_seconds({k: f for k, (f, _) in calls.items()}, repeats)
    step = _best_seconds({k: f for k, (_, f) in calls.items()}, repeats)
    return {k: prompt[k] + ANSWER_STEPS * scale * step[k] for k in calls}


def cpu_numerics(
    dtype: torch.dtype | None, forced: str | None = None, margin: float = 1.3
) -> tuple[torch.dtype, str]:
    """The activation dtype and weight format of a CPU model: ``dtype`` when given (or
    ``$DIFFILL_CPU_DTYPE``; else bf16 where it measures faster than fp32, :func:`bf16_is_faster`),
    and the weight format
    ``forced`` (else ``$DIFFILL_WEIGHTS``). ``auto`` (the default) measures every pair
    :func:`weight_format_speeds` offers, the dtype's too when it was not given, and takes the
    fastest when it is at least ``margin`` times faster than plain weights in the default dtype
    (a format that changes answers must pay for it), else that. A format this build or dtype
    cannot run (fp16 and w8a8 need fp32 activations) or an unknown value is refused with a
    ValueError that names it."""
    where = "weights" if forced is not None else "DIFFILL_WEIGHTS"
    mode = (forced if forced is not None else os.environ.get("DIFFILL_WEIGHTS", "auto")).strip().lower()
    mode = mode or "auto"
    if mode != "auto" and mode not in WEIGHT_FORMATS:
        raise ValueError(f"{where}={mode!r}: use auto, {', '.join(WEIGHT_FORMATS)}")
    # $DIFFILL_CPU_DTYPE (bf16_is_faster) fixes the dtype as an argument would
    env_dtype = os.environ.get("DIFFILL_CPU_DTYPE", "").strip().lower()
    fixed = dtype is not None or env_dtype in ("bf16", "bfloat16", "fp32", "float32")
    default = dtype if dtype is not None else torch.bfloat16 if bf16_is_faster() else torch.float32
    if mode != "auto":
        dt = torch.float32 if not fixed and mode in _FP32_ONLY else default
        if not _can_run(mode, dt):
            raise ValueError(f"{where}={mode!r}: this build cannot run {mode} weights with {dt} inputs")
        return dt, mode
    dtypes = (default,) if fixed else tuple(dict.fromkeys((default, torch.float32)))
    speeds = weight_format_speeds(dtypes)
    best = min(speeds, key=speeds.get)
    return best if speeds[best] * margin < speeds[(default, "plain")] else (default, "plain")


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
