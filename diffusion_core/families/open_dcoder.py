"""Open-dCoder (Open-dLLM): a plain Qwen2 causal-LM checkpoint fine-tuned for diffusion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .spec import (
    FamilySpec,
    TokenizerInfo,
    eos_pad,
    make_spec,
    mask_id_of,
    unique,
)

if TYPE_CHECKING:
    from ..tokenizer import Tokenizer

NAME = "open-dcoder"
# config.json ``model_type`` (lower case) this family claims -> the tensor layout its weights use
MODEL_TYPES = {"qwen2": "qwen2"}
ARCHITECTURES = ()  # config.json ``architectures`` entries that name it


def build(config: Mapping[str, Any], tok: Tokenizer, info: TokenizerInfo) -> FamilySpec:
    """Open-dCoder (Open-dLLM): a Qwen2 causal-LM config run bidirectionally, shifted logits.
    Its training script adds ``<M>`` as the tokenizer's mask token; the saved tokenizer config
    names it, so the declared mask token wins and ``<M>`` is the fallback."""
    mask = mask_id_of(config, tok, (info.mask, "<M>"), "open-dcoder")
    eos, pad = eos_pad(config, tok, info, "<|endoftext|>", "open-dcoder")
    return make_spec(
        name="open-dcoder",
        shifted=True,
        mask_id=mask,
        eos_ids=unique([*eos, pad]),
        pad_id=pad,
        tokenizer=tok,
    )
