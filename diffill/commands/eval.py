"""`diffill eval humaneval-infilling`: execution-based pass@1 of a model (or a samples file)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import CommandError
from ._model_args import add_model_arguments

HELP = "evaluate a model: `diffill eval humaneval-infilling --subset single-line --data DIR`"

DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "benchmarks" / "humaneval-infilling"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("benchmark", choices=["humaneval-infilling"])
    p.add_argument(
        "--subset",
        default="single-line",
        choices=["single-line", "random-span-light", "multi-line", "random-span"],
    )
    p.add_argument("--data", default=str(DEFAULT_DATA), help="directory holding the *.jsonl.gz files")
    add_model_arguments(p)
    p.add_argument(
        "--limit",
        type=int,
        default=0,
        help="only N problems, evenly spaced over the subset so every task is represented (0 = all)",
    )
    p.add_argument(
        "--length",
        default="fixed",
        choices=["fixed", "predict", "ensemble", "oracle"],
        help="mask-count policy: fixed --max-tokens, predicted by the model from --max-tokens masks, "
        "the sampler's length ensemble, or the true length",
    )
    p.add_argument(
        "--max-tokens", type=int, default=32, help="mask count for --length fixed / predict (default 32)"
    )
    p.add_argument("--quality", type=float, default=1.0, help="sampler quality (default 1: best)")
    p.add_argument(
        "--samples", metavar="FILE", help="score this {task_id, completion} jsonl instead of generating"
    )
    p.add_argument(
        "--control",
        choices=["empty", "canonical"],
        help="score the empty completion (harness must fail it) or the true middle (must pass)",
    )
    p.add_argument("--save-samples", metavar="FILE", help="write the generated completions here")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per program (wall clock)")
    p.add_argument("--workers", type=int, default=2, help="programs run in parallel")
    p.add_argument("--out", metavar="FILE", help="write the summary JSON here too")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument(
        "--compare",
        metavar="LIST",
        help="run several decoders in one interleaved run, e.g. ar,q1.0,q0.7,q0.3,tiny: ar = greedy "
        "decoding of the base alone, qX = the model at quality X, tiny = the 1.3M test model, "
        "prompt = the prompt and one answer token (the floor every decoder's latency sits on), "
        "llama.cpp = the same GGUF through llama-cpp-python (if installed); qX/wN sets the window to N, "
        "a +plain, +int8, +int4, +fp16 or +w8a8 suffix forces that CPU weight format "
        "(default: as measured at load)",
    )
    p.add_argument("--out-dir", metavar="DIR", help="with --compare: write JSON, markdown and samples here")


def run(args: argparse.Namespace) -> int:
    from diffusion_core.evaluation.humaneval import (
        generate,
        load_problems,
        read_samples,
        score,
        spread,
        write_samples,
    )

    try:
        problems = load_problems(args.data, args.subset)
    except FileNotFoundError as exc:  # no benchmark data here: say where it was looked for
        raise CommandError(str(exc)) from None
    if args.limit and args.limit < len(problems):
        problems = spread(problems, args.limit)
    if args.compare:
        return _compare(args, problems)
    settings: dict = {}
    info: dict[str, dict] = {}
    if args.samples:
        completions = read_samples(args.samples)
        settings["source"] = f"samples:{args.samples}"
    elif args.control:
        key = "canonical_solution"
        completions = {p["task_id"]: (p[key] if args.control == "canonical" else "") for p in problems}
        settings["source"] = f"control:{args.control}"
    else:
        import torch

        from diffusion_core.sampler import SamplingOptions

        from ._model_args import load_engine

        if args.threads:
            torch.set_num_threads(args.threads)
        engine = load_engine(args)
        completions, info = generate(
            engine,
            problems,
            length=args.length,
            max_tokens=args.max_tokens,
            options=SamplingOptions(quality=args.quality),
        )
        settings.update(model=engine.model_id, length=args.length, quality=args.quality)
        if args.length in ("fixed", "predict"):
            settings["max_tokens"] = args.max_tokens
        if args.save_samples:
            write_samples(args.save_samples, completions, info)
    res = score(problems, completions, args.subset, timeout=args.timeout, workers=args.workers)
    if info:
        res.mean_latency_ms = sum(v["latency_ms"] for v in info.values()) / len(info)
        res.mean_tokens = sum(v["tokens"] for v in info.values()) / len(info)
    if args.limit:
        settings["limit"] = args.limit
    res.settings = settings
    summary = res.summary()
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    return 0


def _compare(args: argparse.Namespace, problems: list[dict]) -> int:
    import dataclasses
    import datetime

    import torch

    from diffusion_core.coder.family import FIM_ORDERS
    from diffusion_core.engine import Engine, tiny_model_dir
    from diffusion_core.evaluation.compare import Decoder, compare, markdown_table, write_results
    from diffusion_core.interface import SamplingOptions
    from diffusion_core.runtime import WEIGHT_FORMATS, cpu_name

    from . import CommandError
    from ._model_args import load_engine

    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.compare.split(",") if n.strip()]

    def default_order() -> str:  # the prompt order of the model under test (its config.json)
        from diffusion_core.checkpoint_config import read_config
        from diffusion_core.engine import resolve_model_path

        try:
            return str(read_config(resolve_model_path(args.model)).get("fim_order", "psm"))
        except (ValueError, OSError):
            return "psm"

    long = 64 if args.subset.startswith("single-line") else 128
    main = None
    engines: dict[str, object] = {}  # "" = the weight format measured at load, else the one forced
    decoders = []
    for name in names:
        if name == "tiny":
            tiny = Engine.from_pretrained(tiny_model_dir(), device=args.device)
            decoders.append(
                Decoder("tiny (1.3M, quality 1)", tiny, SamplingOptions(quality=1.0, length="fixed"), 32)
            )
            continue
        name, _, order = name.partition("@")  # "ar@psm": that prompt order (default: the model's)
        if order and order not in FIM_ORDERS:
            raise CommandError(f"--compare: unknown prompt order @{order} ({', '.join(FIM_ORDERS)})")
        if name == "llama.cpp":
            from diffusion_core.evaluation.llama_cpp_peer import LlamaCppPeer

            order = order or default_order()
            try:
                peer = LlamaCppPeer(threads=args.threads or torch.get_num_threads(), fim_order=order)
            except (ValueError, OSError) as e:
                raise CommandError(str(e)) from None
            decoders.append(Decoder(f"{peer.model_id}, greedy, {order.upper()}", peer, None, long))
            continue
        base_name, _, variant = name.partition("+")  # "+fp16": that CPU weight format, forced
        if variant not in ("", *WEIGHT_FORMATS):
            raise CommandError(
                f"--compare: unknown variant {variant!r} in {name!r} (+{', +'.join(WEIGHT_FORMATS)})"
            )
        if variant not in engines:
            engines[variant] = load_engine(args, weights=variant or None)
            # every decoder pays for its own prompt: with the shared K/V cache the second decoder
            # on a task would get the first one's context for free
            engines[variant].prefix_cache = None
        eng = main = engines[variant]
        if order and order != eng.family.fim_order:
            eng = dataclasses.replace(eng, family=dataclasses.replace(eng.family, fim_order=order))
        tag = f", {eng.family.fim_order.upper()}" if eng.family.fim_ids else ""
        # every row's label says what ran: the weight format (forced or measured) and bf16
        fmt = eng.about.get("cpu_weights", {}).get("format", "plain")
        tag += f", {fmt} weights" if fmt != "plain" else ""
        tag += " (bf16)" if eng.dtype == torch.bfloat16 else ""
        if base_name == "ar":
            decoders.append(Decoder(f"AR greedy (base alone){tag}", eng, SamplingOptions(decoder="ar"), long))
        elif base_name == "prompt":
            # the floor every decoder pays: the prompt and one answer token; what is left of a
            # row's latency above it is the decoding that a faster decoder can shorten
            label = f"prompt only (AR, 1 answer token){tag}"
            decoders.append(Decoder(label, eng, SamplingOptions(decoder="ar"), 1))
        elif base_name.startswith("q"):
            q_text, _, window = base_name[1:].partition("/w")  # "q0.7/w2": a window of 2
            try:
                q = float(q_text)
                opts = SamplingOptions(quality=q, block_size=int(window) if window else 32)
            except ValueError as e:
                raise CommandError(f"--compare: bad decoder {name!r} ({e})") from None
            if window:  # a window given: that window, whatever this machine's measurement chose
                eng = dataclasses.replace(eng, window=int(window))
                label = f"{eng.model_id} quality {q:g}, window {window}{tag}"
            else:
                label = f"{eng.model_id} quality {q:g}, window {eng.window} (as loaded){tag}"
            decoders.append(Decoder(label, eng, opts, long))
        else:
            raise CommandError(
                f"--compare: unknown decoder {name!r} "
                "(ar, qX, qX/wN, prompt, tiny, llama.cpp; a +FORMAT of runtime.WEIGHT_FORMATS on ar, "
                "prompt and qX)"
            )
    rows = compare(decoders, problems, args.subset, workers=args.workers)
    print(markdown_table(rows, args.subset))
    if args.out_dir:
        meta = {
            "date": datetime.date.today().isoformat(),
            "cpu": cpu_name(),
            "threads": torch.get_num_threads(),
            "dtype": str(main.dtype).removeprefix("torch.") if main else None,
            "draft_window": main.about.get("draft_window") if main else None,
            "limit": args.limit,
            "tasks": len(problems),
        }
        out = write_results(args.out_dir, args.subset, rows, decoders, meta)
        print(f"wrote {out}/{args.subset}.json, .md, .samples.jsonl")
    return 0
