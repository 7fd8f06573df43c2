"""Rebuild a checkpoint's tokenizer from its files (tokenizer.json, or vocab.json + merges.txt with
the added tokens of tokenizer_config.json / added_tokens.json), without running any code from the
directory, and read which tokens it declares (bos, eos, pad, mask)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tokenizers import AddedToken
from tokenizers import Tokenizer as Backend

from .checkpoint_config import (
    ADDED_TOKENS_FILE,
    MERGES_FILE,
    SPECIAL_TOKENS_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    VOCAB_FILE,
    CheckpointError,
    _read_json,
)
from .families import TokenizerInfo
from .tokenizer import Tokenizer, qwen2_style_backend, read_merges, read_vocab


def _token_str(value: Any) -> str | None:
    """tokenizer_config.json writes special tokens as strings or as AddedToken dicts."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _added_entries(root: Path, tcfg: Mapping[str, Any] | None) -> tuple[list[tuple[int, AddedToken]], str]:
    """Added tokens with their fixed ids, from tokenizer_config.json's ``added_tokens_decoder``
    (which carries the special flags) or else added_tokens.json (control tokens: all special)."""
    decoder = (tcfg or {}).get("added_tokens_decoder")
    entries: list[tuple[int, AddedToken]] = []
    if isinstance(decoder, dict) and decoder:
        for key, spec in decoder.items():
            content = _token_str(spec)
            if content is None or not str(key).isdigit():
                raise CheckpointError(
                    f"invalid entry {key!r} in 'added_tokens_decoder' of {TOKENIZER_CONFIG_FILE}"
                )
            entries.append(
                (
                    int(key),
                    AddedToken(
                        content,
                        single_word=bool(spec.get("single_word", False)),
                        lstrip=bool(spec.get("lstrip", False)),
                        rstrip=bool(spec.get("rstrip", False)),
                        normalized=bool(spec.get("normalized", False)),
                        special=bool(spec.get("special", True)),
                    ),
                )
            )
        return sorted(entries, key=lambda e: e[0]), TOKENIZER_CONFIG_FILE
    added = _read_json(root / ADDED_TOKENS_FILE, required=False)
    if added:
        for content, tid in added.items():
            if not isinstance(tid, int):
                raise CheckpointError(f"invalid id for {content!r} in {ADDED_TOKENS_FILE}: {tid!r}")
            entries.append((tid, AddedToken(content, normalized=False, special=True)))
    return sorted(entries, key=lambda e: e[0]), ADDED_TOKENS_FILE


def _install_added(backend: Backend, entries: list[tuple[int, AddedToken]], source: str) -> None:
    missing = [tok for tid, tok in entries if backend.token_to_id(tok.content) is None]
    present = [tok for tid, tok in entries if backend.token_to_id(tok.content) is not None]
    # re-adding a present token keeps its id and applies the special / strip flags
    backend.add_special_tokens([t for t in present if t.special])
    backend.add_tokens([t for t in present if not t.special])
    for tok in missing:
        (backend.add_special_tokens if tok.special else backend.add_tokens)([tok])
    for tid, tok in entries:
        got = backend.token_to_id(tok.content)
        if got != tid:
            raise CheckpointError(
                f"added token {tok.content!r} has id {tid} in {source} but the tokenizer gives it id {got}"
            )


def load_tokenizer(root: str | Path) -> tuple[Tokenizer, TokenizerInfo]:
    """The tokenizer of a checkpoint directory and the special tokens its config declares.

    tokenizer.json is used when present; otherwise a byte-level BPE is rebuilt from vocab.json +
    merges.txt the way the Qwen2 tokenizer builds it (the Dream family ships only those files and
    a custom tokenizer class), with the added tokens from tokenizer_config.json / added_tokens.json
    placed at their exact ids."""
    root = Path(root)
    tcfg = _read_json(root / TOKENIZER_CONFIG_FILE, required=False) or {}
    smap = _read_json(root / SPECIAL_TOKENS_FILE, required=False) or {}
    entries, source = _added_entries(root, tcfg)
    tok_path, vocab_path, merges_path = root / TOKENIZER_FILE, root / VOCAB_FILE, root / MERGES_FILE
    if tok_path.is_file():
        try:
            backend = Backend.from_file(str(tok_path))
        except Exception as e:  # tokenizers raises a bare Exception for malformed files
            raise CheckpointError(f"invalid {TOKENIZER_FILE} in {root}: {e}") from None
    elif vocab_path.is_file() and merges_path.is_file():
        try:
            vocab = read_vocab(vocab_path)
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError, TypeError) as e:
            raise CheckpointError(f"invalid {VOCAB_FILE} in {root}: {e}") from None
        try:
            merges = read_merges(merges_path)
        except (UnicodeDecodeError, ValueError) as e:
            raise CheckpointError(f"invalid {MERGES_FILE} in {root}: {e}") from None
        for tid, tok in entries:  # added tokens keep their published ids even across gaps
            vocab.setdefault(tok.content, tid)
        try:
            backend = qwen2_style_backend(vocab, merges)
        except Exception as e:
            raise CheckpointError(
                f"cannot build a tokenizer from {VOCAB_FILE} + {MERGES_FILE} in {root}: {e}"
            ) from None
    else:
        raise CheckpointError(
            f"missing tokenizer files in {root}: expected {TOKENIZER_FILE}, or {VOCAB_FILE} + {MERGES_FILE}"
        )
    _install_added(backend, entries, source)

    def declared(key: str) -> str | None:
        return _token_str(smap.get(key)) or _token_str(tcfg.get(key))

    extra = [_token_str(t) for t in (smap.get("additional_special_tokens") or [])]
    for t in (
        declared("bos_token"),
        declared("eos_token"),
        declared("pad_token"),
        declared("mask_token"),
        *extra,
    ):
        if t is not None and backend.token_to_id(t) is not None:
            backend.add_special_tokens([AddedToken(t, normalized=False, special=True)])
    bos = declared("bos_token")
    add_bos = tcfg.get("add_bos_token") is True
    bos_id = backend.token_to_id(bos) if bos else None
    if bos_id is not None and not add_bos:  # a post-processor (tokenizer.json) may add it
        with_specials = backend.encode("a", add_special_tokens=True).ids
        add_bos = bool(with_specials) and with_specials[0] == bos_id
    info = TokenizerInfo(
        bos=bos,
        eos=declared("eos_token"),
        pad=declared("pad_token"),
        mask=declared("mask_token"),
        add_bos=add_bos,
    )
    return Tokenizer(backend), info


# --------------------------------------------------------------------------------- inspection
