"""Text <-> token ids for the engine, on top of a Hugging Face ``tokenizers.Tokenizer``.

Editor buffers can be megabytes long while the model only ever sees ~2K tokens around the cursor,
so :meth:`Tokenizer.encode_prefix` / :meth:`Tokenizer.encode_suffix` encode a character window
near the cursor instead of the whole buffer. The window is cut at a token boundary and the kept
text is re-encoded, so the returned ids are always exactly ``encode(kept_text)`` for a kept text
that touches the cursor (what the model sees is a faithful encoding of real text).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend
from tokenizers.models import BPE

# Split pattern of the Qwen2 tokenizer family (GPT-4-like, single digits, newline runs kept apart).
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Characters per token we assume before looking: code averages 3-4, so 8 is generous; the window
# grows if it turns out to be too small.
_CHARS_PER_TOKEN = 8
# Extra tokens the window must hold beyond the budget, so the ids we keep are far from the
# window's cut edge (whose first/last pre-token may be split differently from the full text).
_MARGIN_TOKENS = 16


class Tokenizer:
    """The engine's tokenizer: plain ids in, text out; never adds BOS/EOS by itself."""

    def __init__(self, backend: Backend) -> None:
        # The Tokenizer owns its backend: special-token strings in user text are encoded as plain
        # text, so a buffer that contains "<|endoftext|>" or "<|mask|>" (say, tokenizer code)
        # cannot end the document or open a hole. (Not serialised: save() is unaffected.)
        backend.encode_special_tokens = True
        self.backend = backend
        self._with_specials: Backend | None = None
        self._special_ids = frozenset(
            i for i, tok in backend.get_added_tokens_decoder().items() if tok.special
        )

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        return cls(Backend.from_file(str(path)))

    # ----------------------------------------------------------------------------- basics
    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce (base vocabulary plus added tokens)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids of added tokens flagged special: they are dropped by :meth:`decode`."""
        return self._special_ids

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Ids of ``text`` with no special tokens added. Special-token strings inside the text
        are plain text unless ``allow_special`` (then they become their ids, as the reference
        Hugging Face tokenizers do; for prompts built by code, never for user buffers)."""
        if not allow_special:
            return self.backend.encode(text, add_special_tokens=False).ids
        if self._with_specials is None:
            self._with_specials = Backend.from_str(self.backend.to_str())
            self._with_specials.encode_special_tokens = False
        return self._with_specials.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` with special tokens dropped; ids outside the vocabulary (a model head
        padded beyond the tokenizer) are dropped too rather than crashing the request."""
        n = self.vocab_size
        keep = [int(i) for i in ids if 0 <= int(i) < n and int(i) not in self._special_ids]
        return self.backend.decode(keep, skip_special_tokens=True)

    # ----------------------------------------------------------------------------- context windows
    def encode_prefix(self, text: str, budget: int) -> list[int]:
        """At most ``budget`` ids encoding the end of ``text`` (the code just before the cursor).

        Equals ``encode(text)`` when that fits; otherwise ``encode(text[cut:])`` for a token
        boundary ``cut`` chosen so the result fits the budget (nearly always exactly ``budget``).
        """
        if budget <= 0 or not text:
            return []
        width = budget * _CHARS_PER_TOKEN + 256
        while True:
            start = max(0, len(text) - width)
            window = text[start:]
            enc = self.backend.encode(window, add_special_tokens=False)
            n = len(enc.ids)
            if start == 0 and n <= budget:
                return list(enc.ids)
            if start == 0 or n >= budget + _MARGIN_TOKENS:
                break
            width *= 2
        k = n - budget
        while k < n:
            kept = self.encode(window[enc.offsets[k][0] :])
            if len(kept) <= budget:
                return kept
            # the cut fell inside a merge or a multi-byte character: move towards the cursor
            k += max(1, len(kept) - budget)
        return []

    def encode_suffix(self, text: str, budget: int) -> list[int]:
        """At most ``budget`` ids encoding the start of ``text`` (the code just after the cursor).

        Equals ``encode(text)`` when that fits; otherwise ``encode(text[:cut])`` for a token
        boundary ``cut`` chosen so the result fits the budget (nearly always exactly ``budget``).
        """
        if budget <= 0 or not text:
            return []
        width = budget * _CHARS_PER_TOKEN + 256
        while True:
            end = min(len(text), width)
            window = text[:end]
            enc = self.backend.encode(window, add_special_tokens=False)
            n = len(enc.ids)
            if end == len(text) and n <= budget:
                return list(enc.ids)
            if end == len(text) or n >= budget + _MARGIN_TOKENS:
                break
            width *= 2
        k = budget - 1
        while k >= 0:
            kept = self.encode(window[: enc.offsets[k][1]])
            if len(kept) <= budget:
                return kept
            k -= max(1, len(kept) - budget)
        return []


# --------------------------------------------------------------------------------- builders
def qwen2_style_backend(
    vocab: Mapping[str, int],
    merges: Iterable[tuple[str, str]] | Iterable[str],
    added_tokens: Iterable[AddedToken] = (),
) -> Backend:
    """A byte-level BPE configured like the Qwen2 tokenizer (NFC, Qwen2 split regex, byte-level
    alphabet, no prefix space). Used when a checkpoint ships only vocab.json + merges.txt and for
    the tiny test tokenizer, so tests exercise the same pipeline as real checkpoints."""
    pairs = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]
    model = BPE(
        vocab=dict(vocab),
        merges=pairs,
        unk_token=None,
        continuing_subword_prefix="",
        end_of_word_suffix="",
        fuse_unk=False,
        byte_fallback=False,
    )
    backend = Backend(model)
    configure_qwen2_pipeline(backend)
    tokens = list(added_tokens)
    if tokens:
        backend.add_special_tokens([t for t in tokens if t.special])
        backend.add_tokens([t for t in tokens if not t.special])
    return backend


def configure_qwen2_pipeline(backend: Backend) -> None:
    """Install the Qwen2 normalizer / pre-tokenizer / decoder on ``backend`` (in place)."""
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)


def read_merges(path: Path) -> list[tuple[str, str]]:
    """merges.txt: one "left right" pair per line; a leading "#version" line is a comment."""
    pairs: list[tuple[str, str]] = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line or (i == 0 and line.startswith("#version")):
            continue
        left, sep, right = line.partition(" ")
        if not sep:
            raise ValueError(f"{path.name} line {i + 1}: expected two space-separated symbols")
        pairs.append((left, right))
    return pairs


def read_vocab(path: Path) -> dict[str, int]:
    vocab = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(vocab, dict):
        raise ValueError(f"{path.name} must be a JSON object of token -> id")
    return {str(k): int(v) for k, v in vocab.items()}
