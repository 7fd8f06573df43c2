"""Dream-v0, Dream-Coder-v0, DiffuCoder and DreamOn (Qwen2.5-based, ``model_type`` "Dream")."""

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

NAME = "dream"
# config.json ``model_type`` (lower case) this family claims -> the tensor layout its weights use
MODEL_TYPES = {"dream": "qwen2"}
ARCHITECTURES = ("DreamModel",)  # config.json ``architectures`` entries that name it


def build(config: Mapping[str, Any], tok: Tokenizer, info: TokenizerInfo) -> FamilySpec:
    """Dream-v0, Dream-Coder-v0, DiffuCoder, DreamOn: shifted logits, ``<|mask|>``.

    Dream-Coder's evaluation prepends the tokenizer's bos and DreamOn's infill prompt is
    ``bos + prefix + masks + suffix + eos``, so the bos (when the tokenizer declares one) goes
    before the prefix, and for DreamOn the eos goes after the suffix. DiffuCoder-Instruct pads
    answers with ``<|dlm_pad|>``: it is the pad and also ends a completion."""
    mask = mask_id_of(config, tok, (info.mask, "<|mask|>"), "dream")
    eos, pad = eos_pad(config, tok, info, "<|endoftext|>", "dream")
    expand = tok.token_to_id("<|expand|>")
    bos = tok_id(tok, info.bos)
    return make_spec(
        name="dream",
        shifted=True,
        mask_id=mask,
        eos_ids=unique([*eos, pad, tok.token_to_id("<|dlm_pad|>"), tok.token_to_id("<|im_end|>")]),
        pad_id=pad,
        begin_ids=(bos,) if bos is not None else (),
        end_ids=(eos[0],) if expand is not None else (),
        expand_id=expand,
        tokenizer=tok,
    )
