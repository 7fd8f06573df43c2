"""Per-family conventions: how each checkpoint family lays out its canvas and reads its logits.

A FamilySpec is everything the sampler needs to know about a family beyond the architecture:
which token is the mask, which tokens end a completion, what goes before the prefix and after
the suffix, and whether logits are shifted (the token at position j is read from output j-1).
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
