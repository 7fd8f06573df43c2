"""Per-family conventions: how each checkpoint family lays out its canvas and reads its logits.

A FamilySpec is everything the sampler needs to know about a family beyond the architecture:
which token is the mask, which tokens end a completion, what goes before the prefix and after
the suffix, and whether logits are shifted (the token at position j is read from output j-1).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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
    expand_id: int | None = None  # DreamOn's <|expand|>: variable-length decoding (expand_sampler.py)
    # trained with mask counts independent of the middle's length, so one forward predicts the
    # length (length.py); only diffill checkpoints that say so in config.json ("length_prediction")
    predicts_length: bool = False
    # (<|fim_prefix|>, <|fim_suffix|>, <|fim_middle|>) for a causal model whose context is its own
    # FIM prompt and whose middle is denoised by an adapter (Diffill-Coder, diffusion_core/coder/)
    fim_ids: tuple[int, int, int] | None = None

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


# --------------------------------------------------------------------------------- building specs
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


FAMILY_NAMES = ("diffill", "dream", "open-dcoder", "coda", "llada")

# model_type (lower case) / architectures entry -> family
_BY_MODEL_TYPE = {
    "diffill": "diffill",
    "dream": "dream",
    "qwen2": "open-dcoder",  # a Qwen2ForCausalLM config fine-tuned for diffusion (Open-dLLM)
    "coda": "coda",
    "llada": "llada",
}
_BY_ARCHITECTURE = {
    "DiffillTransformer": "diffill",
    "DreamModel": "dream",
    "CoDALanguageModel": "coda",
    "LLaDAModelLM": "llada",
}


def detect_family(config: Mapping[str, Any]) -> str | None:
    """Family named by config.json: an explicit ``diffill_family`` key (so a checkpoint whose
    model_type says nothing, e.g. a plain ``llama`` diffusion fine-tune, can be served without
    code), then ``model_type``, then ``architectures``; None when nothing matches."""
    explicit = config.get("diffill_family")
    if isinstance(explicit, str) and explicit:
        return explicit
    name = _BY_MODEL_TYPE.get(str(config.get("model_type", "")).lower())
    if name:
        return name
    for arch in config.get("architectures") or []:
        if str(arch) in _BY_ARCHITECTURE:
            return _BY_ARCHITECTURE[str(arch)]
    return None


def build_family(name: str, config: Mapping[str, Any], tok: Tokenizer, info: TokenizerInfo) -> FamilySpec:
    """The FamilySpec of family ``name`` for a checkpoint with this config and tokenizer."""
    builders = {
        "diffill": diffill_family,
        "dream": dream_family,
        "open-dcoder": open_dcoder_family,
        "coda": coda_family,
        "llada": llada_family,
    }
    if name not in builders:
        raise FamilyError(f"unknown family {name!r} (supported: {', '.join(FAMILY_NAMES)})")
    return builders[name](config, tok, info)


def _tok_id(tok: Tokenizer, token: str | None) -> int | None:
    return None if token is None else tok.token_to_id(token)


def _config_ids(config: Mapping[str, Any], key: str) -> list[int]:
    """An id or list of ids under ``key`` (HF configs use both forms for eos_token_id)."""
    value = config.get(key)
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise FamilyError(f"invalid value for {key!r} in config.json: {value!r} (expected token id(s))")
    return list(values)


def _unique(ids: Iterable[int | None]) -> tuple[int, ...]:
    out: list[int] = []
    for i in ids:
        if i is not None and i not in out:
            out.append(i)
    return tuple(out)


def _mask_id(config: Mapping[str, Any], tok: Tokenizer, candidates: Iterable[str | None], family: str) -> int:
    """The mask id: config.json's ``mask_token_id`` and the tokenizer's mask token must agree when
    both exist; either alone is enough."""
    from_config = _config_ids(config, "mask_token_id")
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


def _eos_pad(
    config: Mapping[str, Any], tok: Tokenizer, info: TokenizerInfo, default_eos: str, family: str
) -> tuple[list[int], int]:
    eos = _config_ids(config, "eos_token_id")
    if not eos:
        tid = _tok_id(tok, info.eos) if info.eos else None
        tid = tid if tid is not None else tok.token_to_id(default_eos)
        if tid is None:
            raise FamilyError(
                f"missing eos token for the {family} family: no 'eos_token_id' in config.json and no "
                f"{info.eos or default_eos!r} in the tokenizer"
            )
        eos = [tid]
    pad = _tok_id(tok, info.pad)
    if pad is None:
        pads = _config_ids(config, "pad_token_id")
        pad = pads[0] if pads else eos[0]
    return eos, pad


def diffill_family(config: Mapping[str, Any], tok: Tokenizer, info: TokenizerInfo) -> FamilySpec:
    """The project's own format: every id (or token string) is written in config.json."""

    def one(key: str, required: bool) -> int | None:
        id_key, tok_key = f"{key}_token_id", f"{key}_token"
        if config.get(id_key) is not None:
            return _config_ids(config, id_key)[0]
        if config.get(tok_key) is not None:
            tid = tok.token_to_id(str(config[tok_key]))
            if tid is None:
                raise FamilyError(
                    f"{key} token {config[tok_key]!r} (from {tok_key!r} in config.json) "
                    "is not in the tokenizer"
                )
            return tid
        if required:
            raise FamilyError(f"missing {key} token: config.json needs {id_key!r} or {tok_key!r}")
        return None

    def many(key: str) -> tuple[int, ...]:
        id_key, tok_key = f"{key}_token_ids", f"{key}_tokens"
        if config.get(id_key) is not None:
            return tuple(_config_ids(config, id_key))
        out = []
        for t in config.get(tok_key) or []:
            tid = tok.token_to_id(str(t))
            if tid is None:
                raise FamilyError(
                    f"{key} token {t!r} (from {tok_key!r} in config.json) is not in the tokenizer"
                )
            out.append(tid)
        return tuple(out)

    mask = one("mask", True)
    eos = many("eos") or (one("eos", True),)
    pad = one("pad", False)
    shifted = config.get("shifted", False)
    predicts_length = config.get("length_prediction", False)
    for key, value in (("shifted", shifted), ("length_prediction", predicts_length)):
        if not isinstance(value, bool):
            raise FamilyError(f"invalid value for {key!r} in config.json: {value!r} (expected bool)")
    assert mask is not None and all(i is not None for i in eos)
    ids = tuple(int(i) for i in eos if i is not None)
    return make_spec(
        name=str(config.get("family") or "diffill"),
        shifted=shifted,
        mask_id=mask,
        eos_ids=ids,
        pad_id=pad if pad is not None else ids[0],
        begin_ids=many("begin"),
        end_ids=many("end"),
        expand_id=one("expand", False),
        tokenizer=tok,
        predicts_length=predicts_length,
    )


def dream_family(config: Mapping[str, Any], tok: Tokenizer, info: TokenizerInfo) -> FamilySpec:
    """Dream-v0, Dream-Coder-v0, DiffuCoder, DreamOn: shifted logits, ``<|mask|>``.

    Dream-Coder's evaluation prepends the tokenizer's bos and DreamOn's infill prompt is
    ``bos + prefix + masks + suffix + eos``, so the bos (when the tokenizer declares one) goes
    before the prefix, and for DreamOn the eos goes after the suffix. DiffuCoder-Instruct pads
    answers with ``<|dlm_pad|>``: it is the pad and also ends a completion."""
    mask = _mask_id(config, tok, (info.mask, "<|mask|>"), "dream")
    eos, pad = _eos_pad(config, tok, info, "<|endoftext|>", "dream")
    expand = tok.token_to_id("<|expand|>")
    bos = _tok_id(tok, info.bos)
    return make_spec(
        name="dream",
        shifted=True,
        mask_id=mask,
        eos_ids=_unique([*eos, pad, tok.token_to_id("<|dlm_pad|>"), tok.token_to_id("<|im_end|>")]),
        pad_id=pad,
        begin_ids=(bos,) if bos is not None else (),
        end_ids=(eos[0],) if expand is not None else (),
        expand_id=expand,
        tokenizer=tok,
    )


def open_dcoder_family(config: Mapping[str, Any], tok: Tokenizer, info: TokenizerInfo) -> FamilySpec:
    """Open-dCoder (Open-dLLM): a Qwen2 causal-LM config run bidirectionally, shifted logits.
    Its training script adds ``<M>`` as the tokenizer's mask token; the saved tokenizer config
    names it, so the declared mask token wins and ``<M>`` is the fallback."""
    mask = _mask_id(config, tok, (info.mask, "<M>"), "open-dcoder")
    eos, pad = _eos_pad(config, tok, info, "<|endoftext|>", "open-dcoder")
    return make_spec(
        name="open-dcoder",
        shifted=True,
        mask_id=mask,
        eos_ids=_unique([*eos, pad]),
        pad_id=pad,
        tokenizer=tok,
    )


def coda_family(config: Mapping[str, Any], tok: Tokenizer, info: TokenizerInfo) -> FamilySpec:
    """CoDA (Salesforce): Qwen3 shape, shifted logits, ``<|mask|>``; eos ``<|im_end|>`` (its
    config class default when config.json omits it), pad ``<|endoftext|>``. Its tokenizer
    declares ``<|im_end|>`` as bos but never adds it, so nothing goes before the prefix."""
    mask = _mask_id(config, tok, (info.mask, "<|mask|>"), "coda")
    eos = (
        _config_ids(config, "eos_token_id")
        or [i for i in (_tok_id(tok, info.eos), tok.token_to_id("<|im_end|>")) if i is not None][:1]
    )
    if not eos:
        raise FamilyError("missing eos token for the coda family: no 'eos_token_id' and no '<|im_end|>'")
    pads = _config_ids(config, "pad_token_id")
    pad = pads[0] if pads else _tok_id(tok, info.pad)
    pad = pad if pad is not None else eos[0]
    return make_spec(
        name="coda",
        shifted=True,
        mask_id=mask,
        eos_ids=_unique([*eos, pad, tok.token_to_id("<|endoftext|>")]),
        pad_id=pad,
        tokenizer=tok,
    )


def llada_family(config: Mapping[str, Any], tok: Tokenizer, info: TokenizerInfo) -> FamilySpec:
    """LLaDA: not shifted (position j predicts token j), mask 126336, eos/pad 126081. Its
    reference sampler also stops on ``<|eot_id|>`` for the Instruct model; its tokenizer
    prepends bos, so the bos goes before the prefix."""
    mask = _mask_id(config, tok, (info.mask, "<|mdm_mask|>"), "llada")
    eos, _ = _eos_pad(config, tok, info, "<|endoftext|>", "llada")
    pads = _config_ids(config, "pad_token_id")
    pad = pads[0] if pads else eos[0]
    bos = _tok_id(tok, info.bos) if info.add_bos else None
    return make_spec(
        name="llada",
        shifted=False,
        mask_id=mask,
        eos_ids=_unique([*eos, pad, tok.token_to_id("<|eot_id|>")]),
        pad_id=pad,
        begin_ids=(bos,) if bos is not None else (),
        tokenizer=tok,
    )
