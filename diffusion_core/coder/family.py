"""The ``diffill-coder`` family: Qwen2.5-Coder's own FIM tokens, a mask in an unused vocabulary
row, and the tokens that end a middle."""

from __future__ import annotations

from ..families import FamilySpec, make_spec
from ..tokenizer import Tokenizer

__all__ = ["END_TOKEN", "FIM_ORDERS", "FIM_TOKENS", "coder_family", "fim_prompt", "fim_token_ids"]

FIM_TOKENS = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")
END_TOKEN = "<|endoftext|>"  # what the adapter is trained to put after the middle
# the base itself sometimes closes a middle with one of these; any of them ends the completion
OTHER_ENDS = ("<|im_end|>", "<|fim_pad|>", "<|file_sep|>")


def fim_token_ids(tok: Tokenizer) -> tuple[int, int, int]:
    ids = tuple(tok.token_to_id(t) for t in FIM_TOKENS)
    if any(i is None for i in ids):
        missing = [t for t, i in zip(FIM_TOKENS, ids) if i is None]
        raise ValueError(
            f"the base tokenizer lacks the FIM tokens {missing} (not a Qwen2.5-Coder tokenizer?)"
        )
    return ids  # type: ignore[return-value]


# The two prompt layouts of the FIM paper (Bavarian et al. 2022) in Qwen's tokens. "spm" puts the
# prefix last, right before the middle: a keystroke at the cursor then changes only the end of the
# context (the K/V of everything before it is reused), and Qwen2.5-Coder-0.5B fills single lines
# better in it (README, "Measured numbers": 78 vs 51 pass@1). The other suffix-first layout
# (<|fim_suffix|>S<|fim_prefix|>P<|fim_middle|>) was measured too and is not offered: the base
# barely handles it.
FIM_ORDERS = ("psm", "spm")


def fim_prompt(fim_ids: tuple[int, int, int], order: str, prefix: list[int], suffix: list[int]) -> list[int]:
    """The context ids before the middle: psm ``<|fim_prefix|>P<|fim_suffix|>S<|fim_middle|>``,
    spm ``<|fim_prefix|><|fim_suffix|>S<|fim_middle|>P`` (the middle continues the prefix)."""
    fp, fs, fm = fim_ids
    if order == "psm":
        return [fp, *prefix, fs, *suffix, fm]
    if order == "spm":
        return [fp, fs, *suffix, fm, *prefix]
    raise ValueError(f"unknown FIM order {order!r} (use {' or '.join(FIM_ORDERS)})")


def coder_family(tok: Tokenizer, mask_id: int, vocab_size: int, fim_order: str = "psm") -> FamilySpec:
    """The spec the engine and sampler use. Vocabulary rows past the tokenizer (Qwen2.5 pads its
    embedding to 151,936 rows; they were never trained) are special: never committed, never shown."""
    end = tok.token_to_id(END_TOKEN)
    if end is None:
        raise ValueError(f"the base tokenizer lacks {END_TOKEN!r}")
    others = [i for t in OTHER_ENDS if (i := tok.token_to_id(t)) is not None]
    spec = make_spec(
        "diffill-coder",
        shifted=True,
        mask_id=mask_id,
        eos_ids=(end, *others),
        pad_id=end,
        tokenizer=tok,
    )
    padding = frozenset(range(tok.vocab_size, vocab_size))
    spec.special_ids = spec.special_ids | padding
    spec.fim_ids = fim_token_ids(tok)
    spec.fim_order = fim_order  # checked where it is read (load.py names the file); fim_prompt refuses others
    return spec
