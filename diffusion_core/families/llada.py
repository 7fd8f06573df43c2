"""LLaDA (GSAI-ML): its own config keys and tensor names, logits not shifted."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .spec import (
    FamilySpec,
    TokenizerInfo,
    eos_pad,
    make_spec,
    mask_id_of,
    tok_id,
    unique,
)

if TYPE_CHECKING:
    from ..tokenizer import Tokenizer

NAME = "llada"
# config.json ``model_type`` (lower case) this family claims -> the tensor layout its weights use
MODEL_TYPES = {"llada": "llada"}
ARCHITECTURES = ("LLaDAModelLM",)  # config.json ``architectures`` entries that name it


def build(config: Mapping[str, Any], tok: Tokenizer, info: TokenizerInfo) -> FamilySpec:
    """LLaDA: not shifted (position j predicts token j), mask 126336, eos/pad 126081. Its
    reference sampler also stops on ``<|eot_id|>`` for the Instruct model; its tokenizer
    prepends bos, so the bos goes before the prefix."""
    mask = mask_id_of(config, tok, (info.mask, "<|mdm_mask|>"), "llada")
    eos, pad = eos_pad(config, tok, info, "<|endoftext|>", "llada", pad_from=("config",))
    bos = tok_id(tok, info.bos) if info.add_bos else None
    return make_spec(
        name="llada",
        shifted=False,
        mask_id=mask,
        eos_ids=unique([*eos, pad, tok.token_to_id("<|eot_id|>")]),
        pad_id=pad,
        begin_ids=(bos,) if bos is not None else (),
        tokenizer=tok,
    )
