"""Train the default model's byte-level BPE tokenizer on the corpus.

Byte-level means every string (any indentation, tabs, CRLF, non-ASCII) encodes and decodes
back exactly, which an editor needs: a completion that changes whitespace is a wrong
completion. No normaliser runs for the same reason.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS = "<|endoftext|>"  # end of a completion and padding
MASK = "<|mask|>"
BEGIN = "<|begin|>"
SPECIAL_TOKENS = [EOS, MASK, BEGIN]  # ids 0, 1, 2

DEFAULT_VOCAB = 4096


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB, min_frequency: int = 2
) -> Tokenizer:
    """A byte-level BPE whose first ids are the special tokens (eos=0, mask=1, begin=2)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    for i, s in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    return tok


def token_stats(tok: Tokenizer, records: Iterable[dict]) -> dict:
    """Tokens per language and license, for the corpus statistics."""
    by_lang: Counter = Counter()
    by_license: Counter = Counter()
    total_bytes = 0
    batch: list[dict] = []

    def flush() -> None:
        nonlocal total_bytes
        encs = tok.encode_batch([r["text"] for r in batch], add_special_tokens=False)
        for r, e in zip(batch, encs, strict=True):
            by_lang[r["lang"]] += len(e.ids)
            by_license[r["license"]] += len(e.ids)
            total_bytes += len(r["text"].encode())
        batch.clear()

    for rec in records:
        batch.append(rec)
        if len(batch) >= 256:
            flush()
    if batch:
        flush()
    total = sum(by_lang.values())
    return {
        "tokens": total,
        "bytes_per_token": round(total_bytes / max(total, 1), 3),
        "tokens_by_language": dict(by_lang.most_common()),
        "tokens_by_license": dict(by_license.most_common()),
    }


def main(data_dir: str, out: str, vocab_size: int = DEFAULT_VOCAB, sample_mb: float = 40.0) -> None:
    from .corpus import iter_corpus, read_texts

    texts = read_texts(data_dir, "train", max_bytes=int(sample_mb * 1e6))
    tok = train_tokenizer(texts, vocab_size)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tok.save(out)
    stats_path = Path(data_dir) / "stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    stats["tokenizer"] = {"vocab_size": tok.get_vocab_size(), "trained_on_mb": sample_mb}
    for split in ("train", "validation"):
        stats.setdefault("tokens", {})[split] = token_stats(tok, iter_corpus(data_dir, split))
    stats_path.write_text(json.dumps(stats, indent=1) + "\n")
    print(json.dumps(stats["tokens"], indent=1))


if __name__ == "__main__":
    import sys

    main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:4]))
