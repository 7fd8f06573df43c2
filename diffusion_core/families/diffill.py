"""The project's own format (the tiny test model, models trained with ``diffill train``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .spec import (
    FamilyError,
    FamilySpec,
    TokenizerInfo,
    config_ids,
    make_spec,
)

if TYPE_CHECKING:
    from ..tokenizer import Tokenizer

NAME = "diffill"
# config.json ``model_type`` (lower case) this family claims -> the tensor layout its weights use
MODEL_TYPES = {"diffill": "diffill"}
ARCHITECTURES = ("DiffillTransformer",)  # config.json ``architectures`` entries that name it


def build(config: Mapping[str, Any], tok: Tokenizer, info: TokenizerInfo) -> FamilySpec:
    """The project's own format: every id (or token string) is written in config.json."""

    def one(key: str, required: bool) -> int | None:
        id_key, tok_key = f"{key}_token_id", f"{key}_token"
        if config.get(id_key) is not None:
            return config_ids(config, id_key)[0]
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
            return tuple(config_ids(config, id_key))
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
