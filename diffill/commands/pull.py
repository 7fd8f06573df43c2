"""`diffill pull ORG/NAME[@REVISION]`: fetch a hub model into the Hugging Face cache ahead of time.

Only the files Diffill reads are downloaded (config, safetensors, tokenizer; never pickles or
code) and every safetensors file is checked against the hub's sha256. Afterwards the model loads
offline by the same id (``--model ORG/NAME``, ``diffill.modelPath``).
"""

from __future__ import annotations

import argparse

HELP = "download a hub model (org/name[@revision]) into the Hugging Face cache, checked by hash"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="ORG/NAME[@REVISION]", help="hub model id, optionally pinned")


def run(args: argparse.Namespace) -> int:
    from diffusion_core import hub
    from diffusion_core.checkpoint import CheckpointError, inspect_checkpoint

    from . import CommandError

    try:
        path = hub.fetch(args.model)
    except hub.HubError as e:
        raise CommandError(str(e)) from None
    try:
        family = inspect_checkpoint(path).family.name
    except CheckpointError as e:
        raise CommandError(f"downloaded to {path}, but it does not load: {e}") from None
    print(f"{args.model}: {family} checkpoint in {path}")
    return 0
