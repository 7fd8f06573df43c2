"""CoDA (Salesforce): the Qwen3 shape with QK norm."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .spec import (
    FamilyError,
    FamilySpec,
    TokenizerInfo,
    config_ids,
    make_spec,
    mask_id_of,
    tok_id,
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
    eos = (
        config_ids(config, "eos_token_id")
        or [i for i in (tok_id(tok, info.eos), tok.token_to_id("<|im_end|>")) if i is not None][:1]
    )
    if not eos:
        raise FamilyError("missing eos token for the coda family: no 'eos_token_id' and no '<|im_end|>'")
    pads = config_ids(config, "pad_token_id")
    pad = pads[0] if pads else tok_id(tok, info.pad)
    pad = pad if pad is not None else eos[0]
    return make_spec(
        name="coda",
        shifted=True,
        mask_id=mask,
        eos_ids=unique([*eos, pad, tok.token_to_id("<|endoftext|>")]),
        pad_id=pad,
        tokenizer=tok,
    )
