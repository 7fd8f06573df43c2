"""Per-family conventions: how each checkpoint family lays out its canvas and reads its logits.

A FamilySpec is everything the sampler needs to know about a family beyond the architecture:
which token is the mask, which tokens end a completion, what goes before the prefix and after
the suffix, and whether logits are shifted (the token at position j is read from output j-1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .tokenizer import Tokenizer


@dataclass
class FamilySpec:
    name: str  # "dream", "open-dcoder", "coda", "llada", "diffill"
    shifted: bool
    mask_id: int
    eos_ids: tuple[int, ...]  # a committed one of these inside the middle ends the completion
    pad_id: int  # what positions after the end become
    begin_ids: tuple[int, ...] = ()  # placed before the prefix
    end_ids: tuple[int, ...] = ()  # placed after the suffix
    special_ids: frozenset[int] = field(default_factory=frozenset)  # never appear in returned text
    expand_id: int | None = None  # DreamOn's <|expand|> (recorded; not used for decoding yet)


def make_spec(
    name: str,
    shifted: bool,
    mask_id: int,
    eos_ids: tuple[int, ...],
    pad_id: int,
    begin_ids: tuple[int, ...] = (),
    end_ids: tuple[int, ...] = (),
    expand_id: int | None = None,
    tokenizer: Tokenizer | None = None,
) -> FamilySpec:
    """A FamilySpec whose ``special_ids`` cover every id that must never reach the user's text:
    the tokenizer's special tokens plus the family's own control ids."""
    special = set(tokenizer.special_ids) if tokenizer is not None else set()
    special.update((mask_id, pad_id, *eos_ids, *begin_ids, *end_ids))
    if expand_id is not None:
        special.add(expand_id)
    return FamilySpec(
        name=name,
        shifted=shifted,
        mask_id=mask_id,
        eos_ids=tuple(eos_ids),
        pad_id=pad_id,
        begin_ids=tuple(begin_ids),
        end_ids=tuple(end_ids),
        special_ids=frozenset(special),
        expand_id=expand_id,
    )
