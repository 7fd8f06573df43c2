"""CoDA (Salesforce): the Qwen3 shape with QK norm."""

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

NAME = "coda"
# config.json ``model_type`` (lower case) this family claims -> the tensor layout its weights use
MODEL_TYPES = {"coda": "qwen3"}
ARCHITECTURES = ("CoDALanguageModel",)  # config.json ``architectures`` entries that name it


def build(config: Mapping[str, Any], tok: Tokenizer, info: TokenizerInfo) -> FamilySpec:
    """CoDA (Salesforce): Qwen3 shape, shifted logits, ``<|mask|>``; eos ``<|im_end|>`` (its
    config class default when config.json omits it), pad ``<|endoftext|>``. Its tokenizer
    declares ``<|im_end|>`` as bos but never adds it, so nothing goes before the prefix."""
    mask = mask_id_of(config, tok, (info.mask, "<|mask|>"), "coda")
    eos, pad = eos_pad(config, tok, info, "<|im_end|>", "coda", pad_from=("config", "tokenizer"))
    return make_spec(
        name="coda",
        shifted=True,
        mask_id=mask,
        eos_ids=unique([*eos, pad, tok.token_to_id("<|endoftext|>")]),
        pad_id=pad,
        tokenizer=tok,
    )
