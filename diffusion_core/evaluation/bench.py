"""Latency benchmark of the fill-in-the-middle engine (``diffill bench``).

Models are built from their configs with random weights (only shapes matter for latency), plus
the embedded default (or a checkpoint given with ``--model``). Random weights never become
confident, so every block takes a fixed number of denoising steps (``--steps-per-block``, default 8
per 32-token block: 4 tokens per forward, a typical Fast-dLLM rate on code) and latency depends on
shapes alone. The clock covers ``sample_batch`` on token ids (tokenising the context is ~0.1 ms).

Per (model, context, middle) it measures the engine (fused kernels + CUDA graphs on CUDA, DualCache)
and, in the same run, three baselines reported as ratios:
  (a) ``reference``: the no-cache reference sampler, eager torch (a full forward every step);
  (b) ``eager``: the same DualCache sampler with kernels and graphs off;
  (c) ``ar``: autoregressive decoding of the same-shape model, one token per forward with a KV
      cache (prompt = prefix + suffix, then one causal step per middle token: each step's query
      sees only earlier keys), on the engine's fast path too.
Each step is compared with its memory floor: (weights read + K/V read) / measured bandwidth.

Imports only torch (+ triton where present): it runs where the LSP dependencies are missing.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from diffusion_core.families import FamilySpec
from diffusion_core.model import ModelConfig, Transformer, random_transformer
from diffusion_core.sampler import Canvas, SamplingOptions, reference_sample, sample_batch

__all__ = ["SHAPES", "BenchConfig", "run_bench", "main_args"]

# Public shapes (the families' published config.json values); rope theta 1e6 as in Qwen2.5/Qwen3.
SHAPES: dict[str, ModelConfig] = {
    "open-dcoder-0.5b": ModelConfig(
        vocab_size=151936, hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2,
        intermediate_size=4864, rope_theta=1e6, qkv_bias=True, tie_embeddings=True,
    ),
    "coda-1.7b": ModelConfig(
        vocab_size=151936, hidden_size=2048, num_layers=28, num_heads=16, num_kv_heads=8, head_dim=128,
        intermediate_size=6144, rope_theta=1e6, qk_norm=True, tie_embeddings=True,
    ),
    "dream-7b": ModelConfig(
        vocab_size=152064, hidden_size=3584, num_layers=28, num_heads=28, num_kv_heads=4,
        intermediate_size=18944, rope_theta=1e6, qkv_bias=True, tie_embeddings=False,
    ),
    # Diffill-Coder's base, Qwen2.5-Coder-0.5B (untied head); with the "coder" variant
    "diffill-coder-0.5b": ModelConfig(
        vocab_size=151936, hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2,
        intermediate_size=4864, rope_theta=1e6, qkv_bias=True, tie_embeddings=False,
    ),
    # stand-in with the embedded default's shape, used when that model is not in the package
    "default-shape": ModelConfig(
        vocab_size=4096, hidden_size=192, num_layers=6, num_heads=3, num_kv_heads=1, head_dim=64,
        intermediate_size=512, tie_embeddings=True,
    ),
}  # fmt: skip

VARIANTS = ("engine", "eager", "reference", "ar")
# "coder": Diffill-Coder's step (causal context once, a window of masked rows with the adapter, the
# base checking drafts), on random weights: nothing is drafted, so every forward has the real row
# layout (one committed token + the window) and commits one token -- a per-step cost, not a speed
CODER_WINDOW = 2
GPU_MODELS = ("diffill-coder-0.5b", "open-dcoder-0.5b", "dream-7b", "coda-1.7b")  # the targets' models first
# the design card's latency targets (H100, batch 1, bf16): (model, context, middle) -> p50 ms
TARGETS: dict[tuple[str, int, int], float] = {
    ("open-dcoder-0.5b", 2048, 64): 25.0,
    ("diffill-coder-0.5b", 2048, 64): 25.0,  # the default model's shape
    ("dream-7b", 1024, 32): 100.0,
}


@dataclass
class BenchConfig:
    device: str = "cuda"
    dtype: str = "auto"  # bf16 on CUDA, fp32 on CPU
    models: list[str] = field(default_factory=lambda: [*GPU_MODELS, "default"])
    contexts: list[int] = field(default_factory=lambda: [512, 2048, 4096])
    middles: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    targets: bool = True  # also run the target cells that are not on the grid (7B at 1k context)
    variants: list[str] = field(default_factory=lambda: [*VARIANTS, "coder"])
    block_size: int = 32
    steps_per_block: int = 8
    repeats: int = 10  # engine and eager
    baseline_repeats: int = 3  # reference and ar (slow)
    warmup: int = 1
    max_minutes: float = 0.0  # stop starting new cells after this long (0 = no limit)
    model_path: str | None = None  # checkpoint for "default" (None: the embedded default)
    out_dir: str = "bench/results"
    threads: int = 0


@dataclass
class Cell:
    model: str
    context: int
    middle: int
    variant: str
    p50_ms: float
    p95_ms: float
    mean_ms: float
    runs: int
    steps: int  # forwards per request
    tokens_per_s: float
    step_ms: float  # p50 / steps
    floor_ms: float  # memory floor of one step at this context
    x_floor: float  # step_ms / floor_ms
    peak_mem_mb: float
    cpu_ms: float  # p50 of this process's CPU time per request (wall minus waiting on a busy host)


# ------------------------------------------------------------------------------------ models
def _random_model(cfg: ModelConfig, device: torch.device, dtype: torch.dtype) -> Transformer:
    """The shape's random model (seed 0: the same weights on every run), for inference."""
    return random_transformer(cfg, 0, device, dtype).eval()


def _coder_parts(model: Transformer) -> tuple:
    """A rank-16 adapter (random, non-zero, seed 1) and a FIM family for ``model`` (built once,
    kept on the model: an id-keyed table could hand a later model a dead one's adapter)."""
    parts = getattr(model, "_bench_coder_parts", None)
    if parts is None:
        from diffusion_core.coder.adapter import Adapter, AdapterConfig

        v = model.cfg.vocab_size
        p = model.head_weight
        ad = Adapter(model.cfg, AdapterConfig(rank=16, alpha=32.0, mask_id=v - 1))
        ad = ad.to(device=p.device, dtype=torch.float32 if p.device.type == "cpu" else p.dtype)
        gen = torch.Generator(device=p.device).manual_seed(1)
        with torch.no_grad():
            for t in ad.parameters():
                t.normal_(0.0, 0.02, generator=gen)
        fam = FamilySpec(
            name="bench-coder", shifted=True, mask_id=v - 1, eos_ids=(v - 2,), pad_id=v - 3,
            fim_ids=(v - 4, v - 5, v - 6), special_ids=frozenset(range(v - 8, v)),
        )  # fmt: skip
        parts = (ad.eval(), fam)
        model._bench_coder_parts = parts
    return parts


def _family(cfg: ModelConfig) -> FamilySpec:
    v = cfg.vocab_size
    return FamilySpec(name="bench", shifted=True, mask_id=v - 1, eos_ids=(v - 2,), pad_id=v - 3)


def _load_default(
    path: str | None, device: torch.device, dtype: torch.dtype
) -> tuple[str, Transformer, FamilySpec]:
    """The tiny model (or ``path``); falls back to a random model of its shape when the
    checkpoint or the loader's dependencies are missing."""
    try:
        from diffusion_core.checkpoint import load_checkpoint

        if path is None:
            from diffusion_core.engine import tiny_model_dir

            path = str(tiny_model_dir())
        if Path(path).exists():
            ck = load_checkpoint(path, device=device, dtype=dtype)
            return f"default ({ck.model_id})", ck.model.eval(), ck.family
    except ImportError:
        pass
    cfg = SHAPES["default-shape"]
    return "default-shape (random)", _random_model(cfg, device, dtype), _family(cfg)


# ------------------------------------------------------------------------------------ measuring
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_bandwidth(device: torch.device) -> float:
    """Achievable memory bandwidth in bytes/s: a large device-to-device copy (read + write)."""
    n = (1 << 28) if device.type == "cuda" else (1 << 24)  # 1 GiB / 64 MiB of fp32
    x = torch.ones(n, device=device)
    y = torch.empty_like(x)
    y.copy_(x)
    _sync(device)
    reps = 10 if device.type == "cuda" else 5
    t0 = time.perf_counter()
    for _ in range(reps):
        y.copy_(x)
    _sync(device)
    bw = 2 * x.numel() * x.element_size() * reps / (time.perf_counter() - t0)
    del x, y
    return bw


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of weights one forward reads (an untied input embedding is only gathered, not read)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    if getattr(model, "lm_head", None) is not None:
        total -= model.embed.weight.numel() * model.embed.weight.element_size()
    return total


def kv_bytes(cfg: ModelConfig, length: int, elt: int) -> int:
    return 2 * cfg.num_layers * cfg.num_kv_heads * length * cfg.head_dim * elt


def _timed(
    fn: Callable[[], int], device: torch.device, repeats: int, warmup: int
) -> tuple[list[float], list[float], int]:
    """Wall-clock and process-CPU milliseconds per call, and the steps the last call took."""
    steps = 0
    for _ in range(warmup):
        fn()
    times, cpu = [], []
    for _ in range(repeats):
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        steps = fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1000.0)
        cpu.append((time.process_time() - c0) * 1000.0)
    return times, cpu, steps


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # process peak RSS (KiB on Linux)


# ------------------------------------------------------------------------------------ decoding
@torch.inference_mode()
def ar_generate(model: torch.nn.Module, prompt: list[int], n_new: int) -> int:
    """Greedy autoregressive decoding with a KV cache; returns the number of forwards. Each new
    token attends to the prompt and the tokens before it (a causal key mask per step)."""
    dev = model.head_weight.device
    p = len(prompt)
    total = p + n_new
    cache = model.new_cache(1, total)
    key_mask = torch.zeros(1, total, dtype=torch.bool, device=dev)
    key_mask[:, :p] = True
    ids = torch.tensor([prompt], device=dev)
    h = model(ids, torch.arange(p, device=dev)[None], key_mask, cache=cache, start=0)
    last = h[:, -1]
    pos = torch.zeros(1, 1, dtype=torch.long, device=dev)
    for i in range(n_new - 1):
        tok = model.logits(last).argmax(-1, keepdim=True)  # [1, 1]
        key_mask[:, p + i] = True
        pos.fill_(p + i)
        last = model(tok, pos, key_mask, cache=cache, start=p + i)[:, -1]
    return n_new


def _canvas(cfg: ModelConfig, context: int, middle: int, seed: int) -> Canvas:
    g = torch.Generator().manual_seed(seed)
    n_suffix = context // 4
    ids = torch.randint(0, cfg.vocab_size - 8, (context,), generator=g).tolist()
    return Canvas(prefix=ids[: context - n_suffix], suffix=ids[context - n_suffix :], max_tokens=middle)


# ------------------------------------------------------------------------------------ running
def _fast_model(model: Transformer) -> torch.nn.Module:
    if model.head_weight.device.type != "cuda":
        return model
    from diffusion_core.cuda_graphs import GraphedTransformer

    return GraphedTransformer(model)


def run_cell(
    name: str,
    model: Transformer,
    fast: torch.nn.Module,
    family: FamilySpec,
    context: int,
    middle: int,
    variant: str,
    cfg: BenchConfig,
    bandwidth: float,
) -> Cell:
    dev = model.head_weight.device
    canvas = _canvas(model.cfg, context, middle, seed=context * 1000 + middle)
    dual = SamplingOptions(block_size=cfg.block_size, steps_per_block=cfg.steps_per_block, cache="dual")
    none = SamplingOptions(block_size=cfg.block_size, steps_per_block=cfg.steps_per_block, cache="none")
    if variant == "engine":
        model.use_kernels = None  # on for CUDA
        fn = lambda: sample_batch(fast, family, [canvas], dual)[0].steps
    elif variant == "eager":
        model.use_kernels = False
        fn = lambda: sample_batch(model, family, [canvas], dual)[0].steps
    elif variant == "reference":
        model.use_kernels = False
        fn = lambda: reference_sample(model, family, canvas, none).steps
    elif variant == "ar":
        model.use_kernels = None
        prompt = canvas.prefix + canvas.suffix
        fn = lambda: ar_generate(fast, prompt, middle)
    elif variant == "coder":
        from diffusion_core.coder.sampler import coder_sample

        adapter, fam = _coder_parts(model)
        coder_opts = SamplingOptions(quality=0.7)
        fn = lambda: coder_sample(model, adapter, fam, canvas, coder_opts, CODER_WINDOW).steps
    else:
        raise ValueError(f"unknown variant {variant!r}")
    repeats = cfg.repeats if variant in ("engine", "eager") else cfg.baseline_repeats
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    try:
        with torch.inference_mode():
            times, cpu, steps = _timed(fn, dev, repeats, cfg.warmup)
    finally:
        model.use_kernels = None
    p50 = statistics.median(times)
    elt = model.head_weight.element_size()
    floor = (weight_bytes(model) + kv_bytes(model.cfg, context + middle + 2, elt)) / bandwidth * 1000.0
    step_ms = p50 / max(steps, 1)
    return Cell(
        model=name, context=context, middle=middle, variant=variant,
        p50_ms=p50, p95_ms=_pct(times, 0.95), mean_ms=statistics.fmean(times), runs=len(times),
        steps=steps, tokens_per_s=middle / p50 * 1000.0, step_ms=step_ms, floor_ms=floor,
        x_floor=step_ms / floor, peak_mem_mb=_peak_mb(dev), cpu_ms=statistics.median(cpu),
    )  # fmt: skip


def _git_commit() -> str:
    try:
        cmd = ["git", "rev-parse", "--short", "HEAD"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _meta(cfg: BenchConfig, device: torch.device, dtype: torch.dtype, bandwidth: float) -> dict:
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "commit": _git_commit(),
        "device": str(device),
        "card": card,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": triton_version,
        "dtype": str(dtype).replace("torch.", ""),
        "bandwidth_gb_s": bandwidth / 1e9,
        "block_size": cfg.block_size,
        "steps_per_block": cfg.steps_per_block,
        "batch": 1,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "config": asdict(cfg),
    }


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict:
    """Run the grid; returns ``{"meta", "cells", "rows"}`` and writes JSON + markdown to ``out_dir``."""
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but CUDA is not available (use --device cpu)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32, "bf16": torch.bfloat16,
             "fp16": torch.float16, "fp32": torch.float32}[cfg.dtype]  # fmt: skip
    bandwidth = measure_bandwidth(device)
    meta = _meta(cfg, device, dtype, bandwidth)
    log(f"device {meta['card']} · {meta['dtype']} · bandwidth {meta['bandwidth_gb_s']:.0f} GB/s · "
        f"{cfg.steps_per_block} steps per {cfg.block_size}-token block")  # fmt: skip
    load = meta["load_average"]
    if device.type == "cpu" and load and load[0] > (os.cpu_count() or 1):
        log(f"warning: host busy (load {load[0]:.1f} on {os.cpu_count()} cores): multi-threaded torch "
            "spins and timings inflate; compare the CPU ms column or use --threads 1")  # fmt: skip
    t_start = time.perf_counter()
    cells: list[Cell] = []
    skipped: list[str] = []
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    json_path = out / f"latency-{device.type}-{stamp}.json"
    md_path = out / f"latency-{device.type}-{stamp}.md"

    def over_budget() -> bool:
        return bool(cfg.max_minutes) and (time.perf_counter() - t_start) / 60.0 > cfg.max_minutes

    for key in cfg.models:
        if over_budget():
            skipped.append(key)
            continue
        if key == "default":
            name, model, family = _load_default(cfg.model_path, device, dtype)
        else:
            name, model, family = key, _random_model(SHAPES[key], device, dtype), _family(SHAPES[key])
        log(f"== {name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
        fast = _fast_model(model)
        grid = [(c, m) for c in cfg.contexts for m in cfg.middles]
        if cfg.targets:  # target cells first, so a time budget never skips them
            first = [(c, m) for (k, c, m) in TARGETS if k == key]
            grid = first + [cell for cell in grid if cell not in first]
        coder_shape = key.startswith("diffill-coder")
        # the coder shape runs its own step and the AR peer; the diffusion shapes never the coder step
        variants = [v for v in cfg.variants if (v in ("coder", "ar")) == coder_shape or v == "ar"]
        for context, middle in grid:
            for variant in variants:
                if over_budget():
                    skipped.append(f"{name}/{context}/{middle}/{variant}")
                    continue
                cell = run_cell(name, model, fast, family, context, middle, variant, cfg, bandwidth)
                cells.append(cell)
                log(f"  ctx {context:5d} mid {middle:4d} {variant:9s} p50 {cell.p50_ms:9.1f} ms  "
                    f"p95 {cell.p95_ms:9.1f}  steps {cell.steps:3d}  {cell.tokens_per_s:8.1f} tok/s  "
                    f"step {cell.step_ms:7.2f} ms = {cell.x_floor:5.2f}x floor")  # fmt: skip
                _write(json_path, md_path, meta, cells, skipped)
        del model, fast
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result = _write(json_path, md_path, meta, cells, skipped)
    log("\n" + markdown(result))
    log(f"wrote {json_path} and {md_path}")
    return result


# ------------------------------------------------------------------------------------ reporting
def summary_rows(cells: list[Cell]) -> list[dict]:
    """One row per (model, context, middle): the engine's numbers and the baselines as ratios."""
    by: dict[tuple, dict[str, Cell]] = {}
    for c in cells:
        by.setdefault((c.model, c.context, c.middle), {})[c.variant] = c
    rows = []
    for (model, context, middle), v in by.items():
        e = v.get("engine") or v.get("coder")  # the coder shape's own step stands for the engine
        if e is None:
            continue
        row = {
            "model": model, "context": context, "middle": middle, "p50_ms": e.p50_ms, "p95_ms": e.p95_ms,
            "steps": e.steps, "tokens_per_s": e.tokens_per_s, "step_ms": e.step_ms, "floor_ms": e.floor_ms,
            "x_floor": e.x_floor, "peak_mem_mb": e.peak_mem_mb, "cpu_ms": e.cpu_ms,
        }  # fmt: skip
        for base in ("reference", "eager"):
            row[f"speedup_vs_{base}"] = v[base].p50_ms / e.p50_ms if base in v else None
        row["tokens_per_s_vs_ar"] = e.tokens_per_s / v["ar"].tokens_per_s if "ar" in v else None
        row["ar_p50_ms"] = v["ar"].p50_ms if "ar" in v else None
        rows.append(row)
    return rows


def _fmt(x: float | None, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def markdown(result: dict) -> str:
    m = result["meta"]
    lines = [
        f"# Latency: {m['card']} ({m['device']}, {m['dtype']}), {m['date']}, commit {m['commit']}",
        "",
        f"Batch 1, greedy, {m['steps_per_block']} denoising steps per {m['block_size']}-token block "
        f"(random weights: fixed steps), DualCache. Measured memory bandwidth {m['bandwidth_gb_s']:.0f} GB/s;"
        " "
        "floor = (weight bytes + K/V bytes) / bandwidth per step. Speedups: p50 of the baseline / p50 of the "
        "engine; (a) reference = no-cache sampler, eager torch; (b) eager = engine with kernels and graphs "
        "off; (c) AR = one token per forward with a KV cache (tokens/s ratio).",
        "",
        "| model | ctx | mid | p50 ms | p95 ms | steps | tok/s | step ms | floor ms | x floor | peak MB "
        "| vs (a) | vs (b) | tok/s vs (c) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['model']} | {r['context']} | {r['middle']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
            f"{r['steps']} | {r['tokens_per_s']:.0f} | {r['step_ms']:.2f} | {r['floor_ms']:.2f} | "
            f"{r['x_floor']:.2f} | {r['peak_mem_mb']:.0f} | {_fmt(r['speedup_vs_reference'], '.1f')}x | "
            f"{_fmt(r['speedup_vs_eager'], '.1f')}x | {_fmt(r['tokens_per_s_vs_ar'], '.1f')}x |"
        )
    lines += ["", "All cells (every variant):", "",
              "| model | ctx | mid | variant | p50 ms | p95 ms | runs | steps | tok/s | step ms | x floor "
              "| CPU ms |",
              "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for c in result["cells"]:
        lines.append(
            f"| {c['model']} | {c['context']} | {c['middle']} | {c['variant']} | {c['p50_ms']:.1f} | "
            f"{c['p95_ms']:.1f} | {c['runs']} | {c['steps']} | {c['tokens_per_s']:.0f} | "
            f"{c['step_ms']:.2f} | {c['x_floor']:.2f} | {c['cpu_ms']:.0f} |"
        )
    hits = [
        f"{k[0]} ctx {k[1]} mid {k[2]}: p50 {r['p50_ms']:.1f} ms (target {t:.0f} ms: "
        f"{'met' if r['p50_ms'] <= t else 'missed'})"
        for k, t in TARGETS.items()
        for r in result["rows"]
        if (r["model"], r["context"], r["middle"]) == k
    ]
    if hits:
        lines += ["", "Targets (H100, batch 1):", ""] + [f"- {h}" for h in hits]
    if m["device"] == "cpu":
        lines += ["", "CPU: no Triton kernels or CUDA graphs, so the engine and (b) run the same code. "
                  f"Load average at the start: {m['load_average']}; on a shared host compare the CPU ms "
                  "column (this process's CPU time per request) with the wall-clock p50."]  # fmt: skip
    if result["skipped"]:
        lines += ["", f"Skipped (time budget): {', '.join(result['skipped'])}"]
    return "\n".join(lines) + "\n"


def _write(json_path: Path, md_path: Path, meta: dict, cells: list[Cell], skipped: list[str]) -> dict:
    result = {
        "meta": meta,
        "rows": summary_rows(cells),
        "cells": [asdict(c) for c in cells],
        "skipped": list(skipped),
    }
    json_path.write_text(json.dumps(result, indent=1))
    md_path.write_text(markdown(result))
    return result


def main_args(args: object) -> int:
    """Entry for ``diffill bench`` (argparse namespace from ``diffill/commands/bench.py``)."""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = BenchConfig(device=device, dtype=args.dtype, out_dir=args.out, model_path=args.model,
                      steps_per_block=args.steps_per_block, block_size=args.block_size,
                      max_minutes=args.max_minutes, threads=args.threads)  # fmt: skip
    if device == "cpu":
        cfg.models, cfg.contexts, cfg.middles = ["default"], [1024], [32]
        cfg.repeats, cfg.baseline_repeats = 10, 3
    if args.quick:
        cfg.repeats, cfg.baseline_repeats, cfg.warmup = 3, 1, 1
        if device != "cpu":
            cfg.models, cfg.contexts, cfg.middles = ["diffill-coder-0.5b", "open-dcoder-0.5b"], [2048], [64]
    for attr in ("models", "contexts", "middles", "variants"):
        value = getattr(args, attr, None)
        if value:
            setattr(cfg, attr, value)
    if args.repeats:
        cfg.repeats = args.repeats
    run_bench(cfg)
    return 0
