"""Give the model a prefix that ends where its tokens end.

A BPE tokenizer (Qwen's, and most code models') writes indentation and spaces together with the
word after them: ``"\\n    return"`` is ``"\\n   "`` + ``" return"``. A prefix that stops after the
spaces (the cursor on an indented blank line, or after ``return ``) ends in a token the model
never saw there, and it often answers with the indentation again: measured with Diffill-Coder,
``def is_even(n):\\n    |`` gave ``"    return n % 2 == 0"``, which the editor shows 8 columns
deep. So on such a line the indentation is taken off the prefix before the model runs and taken
back off the start of its answer. Only there: after code (``return |``) the same change made the
answers of the golden cases worse (tests/lsp/golden/postprocess_golden.json), not better.
"""

from __future__ import annotations

__all__ = ["heal_prefix", "unheal"]


def heal_prefix(prefix: str) -> tuple[str, str]:
    """The prefix without the indentation of its last line when that line is nothing else, and
    what was taken off."""
    kept = prefix.rstrip(" \t")
    if kept == prefix or (kept and not kept.endswith(("\n", "\r"))):
        return prefix, ""
    return kept, prefix[len(kept) :]


def unheal(text: str, taken: str) -> str:
    """The model's answer as it continues the user's prefix (``taken`` typed already).

    The answer normally starts with ``taken`` (drop it). One that starts with less of the same
    whitespace (a shallower indent) cannot take back what the user typed, so it only loses its
    own leading whitespace; one that starts with code right away is kept as it is."""
    if not taken:
        return text
    if text.startswith(taken):
        return text[len(taken) :]
    lead = text[: len(text) - len(text.lstrip(" \t"))]
    if lead and taken.startswith(lead):
        return text[len(lead) :]
    return text
