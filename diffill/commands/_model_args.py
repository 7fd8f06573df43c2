"""Arguments shared by every command that loads a model, and the one way to build an Engine from them."""

from __future__ import annotations

import argparse

from diffusion_core.interface import LENGTH_POLICIES  # torch-free


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        metavar="DIR",
        help="checkpoint directory, or diffill-coder (the default) / diffill-tiny (the test model)",
    )
    p.add_argument(
        "--base",
        metavar="DIR",
        help="Diffill-Coder's base: an upstream Qwen2.5-Coder-0.5B(-Instruct) directory instead of "
        "the weights installed from the registry (default: $DIFFILL_BASE)",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="weights dtype")


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=64, help="masked middle length (default 64)")
    p.add_argument("--quality", type=float, default=0.7, help="0 = fastest, 1 = best (default 0.7)")
    p.add_argument("--block-size", type=int, default=32)
    p.add_argument(
        "--length",
        choices=LENGTH_POLICIES,
        default="auto",
        help="how the middle's length is chosen (default auto: what the model was trained for)",
    )
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int)


def sampling_options(args: argparse.Namespace):  # noqa: ANN201
    from diffusion_core.sampler import SamplingOptions

    return SamplingOptions(
        quality=args.quality,
        block_size=args.block_size,
        length=args.length,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
    )


def load_engine(args: argparse.Namespace, weights: str | None = None):  # noqa: ANN201
    """The engine the flags name; a model that cannot be loaded is a one-line CommandError."""
    from diffusion_core.engine import Engine

    from . import CommandError

    try:
        return Engine.from_pretrained(
            args.model, device=args.device, dtype=args.dtype, base=args.base, weights=weights
        )
    except (ValueError, OSError) as e:  # CheckpointError / BaseWeightsError name the bad file or package
        raise CommandError(f"cannot load the model: {e}") from None
