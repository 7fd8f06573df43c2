"""What a family is: :class:`FamilySpec` (everything the sampler needs to know about a checkpoint
beyond its architecture), how one is made, and the helpers every family's builder reads tokens
with (config.json's ids and the tokenizer's declared tokens must agree)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..tokenizer import Tokenizer


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
    expand_id: int | None = None  # DreamOn's <|expand|>: variable-length decoding (expand_sampler.py)
    # trained with mask counts independent of the middle's length, so one forward predicts the
    # length (length.py); only diffill checkpoints that say so in config.json ("length_prediction")
    predicts_length: bool = False
    # (<|fim_prefix|>, <|fim_suffix|>, <|fim_middle|>) for a causal model whose context is its own
    # FIM prompt and whose middle is denoised by an adapter (Diffill-Coder, diffusion_core/coder/)
    fim_ids: tuple[int, int, int] | None = None
    fim_order: str = "psm"  # how those tokens lay the prompt out (coder/family.py: FIM_ORDERS)

    @property
    def native_length(self) -> str:
        """The length policy this family was trained for (what ``length="auto"`` decodes with)."""
        if self.expand_id is not None:
            return "expand"
        return "predict" if self.predicts_length else "fixed"


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
    predicts_length: bool = False,
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
        predicts_length=predicts_length,
    )


class FamilyError(ValueError):
    """A checkpoint lacks a token its family needs (the loader re-raises it as a CheckpointError)."""


@dataclass(frozen=True)
class TokenizerInfo:
    """Special-token strings a checkpoint's tokenizer_config.json / special_tokens_map.json declare."""

    bos: str | None = None
    eos: str | None = None
    pad: str | None = None
    mask: str | None = None
    add_bos: bool = False  # the reference tokenizer prepends bos when encoding


def tok_id(tok: Tokenizer, token: str | None) -> int | None:
    return None if token is None else tok.token_to_id(token)


def config_ids(config: Mapping[str, Any], key: str) -> list[int]:
    """An id or list of ids under ``key`` (HF configs use both forms for eos_token_id)."""
    value = config.get(key)
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise FamilyError(f"invalid value for {key!r} in config.json: {value!r} (expected token id(s))")
    return list(values)


def unique(ids: Iterable[int | None]) -> tuple[int, ...]:
    out: list[int] = []
    for i in ids:
        if i is not None and i not in out:
            out.append(i)
    return tuple(out)


def mask_id_of(
    config: Mapping[str, Any], tok: Tokenizer, candidates: Iterable[str | None], family: str
) -> int:
    """The mask id: config.json's ``mask_token_id`` and the tokenizer's mask token must agree when
    both exist; either alone is enough."""
    from_config = config_ids(config, "mask_token_id")
    named = [t for t in candidates if t is not None]
    from_tok = next(((t, i) for t in named if (i := tok.token_to_id(t)) is not None), None)
    if from_config and from_tok and from_config[0] != from_tok[1]:
        raise FamilyError(
            f"mask token mismatch: config.json mask_token_id is {from_config[0]} but the tokenizer maps "
            f"{from_tok[0]!r} to {from_tok[1]}"
        )
    if from_config:
        return from_config[0]
    if from_tok:
        return from_tok[1]
    tried = ", ".join(repr(t) for t in named)
    raise FamilyError(
        f"missing mask token for the {family} family: config.json has no 'mask_token_id' and the "
        f"tokenizer has none of {tried}"
    )


def eos_pad(
    config: Mapping[str, Any],
    tok: Tokenizer,
    info: TokenizerInfo,
    default_eos: str,
    family: str,
    pad_from: tuple[str, ...] = ("tokenizer", "config"),
) -> tuple[list[int], int]:
    """A family's end tokens and pad: eos from config.json, else the tokenizer's declared eos,
    else ``default_eos``; the pad from the first of ``pad_from`` that names one ("tokenizer":
    tokenizer_config.json's pad token, "config": config.json's ``pad_token_id``), else the eos.
    The order is the family's (the one place it is said): DiffuCoder's tokenizer pad differs from
    its config's, and its reference code pads with the tokenizer's."""
    eos = config_ids(config, "eos_token_id")
    if not eos:
        tid = tok_id(tok, info.eos) if info.eos else None
        tid = tid if tid is not None else tok.token_to_id(default_eos)
        if tid is None:
            raise FamilyError(
                f"missing eos token for the {family} family: no 'eos_token_id' in config.json and no "
                f"{info.eos or default_eos!r} in the tokenizer"
            )
        eos = [tid]
    pad = None
    for source in pad_from:
        if source == "tokenizer":
            pad = tok_id(tok, info.pad)
        else:
            pads = config_ids(config, "pad_token_id")
            pad = pads[0] if pads else None
        if pad is not None:
            break
    return eos, pad if pad is not None else eos[0]
