"""Per-family conventions: how each checkpoint family lays out its canvas and reads its logits.

One module per family (``dream.py``, ``coda.py``, ...) holds everything about it: the
``model_type`` / ``architectures`` values that name it, the tensor layout its weights use
(``diffusion_core/layouts.py``) and the builder of its :class:`FamilySpec` (mask, end and pad
tokens, what goes before the prefix and after the suffix, whether logits are shifted). Adding a
family is adding a module here and naming it in the registry below. (Diffill-Coder, a causal base with an
adapter, is its own package: ``diffusion_core/coder/``.)
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

from . import coda, diffill, dream, llada, open_dcoder
from .spec import FamilyError, FamilySpec, TokenizerInfo, make_spec

if TYPE_CHECKING:
    from ..tokenizer import Tokenizer

__all__ = [
    "FAMILY_NAMES",
    "FamilyError",
    "FamilySpec",
    "TokenizerInfo",
    "build_family",
    "detect_family",
    "family_layouts",
    "make_spec",
]


# the registry: every family module, by its NAME (a static list, so the import graph is plain)
FAMILIES: dict[str, ModuleType] = {m.NAME: m for m in (diffill, dream, open_dcoder, coda, llada)}
FAMILY_NAMES = tuple(FAMILIES)
_BY_MODEL_TYPE = {t: name for name, m in FAMILIES.items() for t in m.MODEL_TYPES}
_BY_ARCHITECTURE = {a: name for name, m in FAMILIES.items() for a in m.ARCHITECTURES}


def family_layouts() -> dict[str, str]:
    """``model_type`` -> tensor layout, as the families declare them (layouts.py adds the plain
    architectures that no family claims)."""
    return {t: layout for m in FAMILIES.values() for t, layout in m.MODEL_TYPES.items()}


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
    if name not in FAMILIES:
        raise FamilyError(f"unknown family {name!r} (supported: {', '.join(FAMILY_NAMES)})")
    return FAMILIES[name].build(config, tok, info)
