"""Tiny random-weight checkpoints for tests of every layer (engine, sampler, servers, editors).

:func:`make_tiny_model_dir` writes a complete directory in the project's own format in well under
a second: a byte-level BPE tokenizer of a few hundred tokens trained on a small built-in code
sample, and seeded random weights. Outputs are gibberish but deterministic, which is all tests
of plumbing, batching, caching and cancellation need.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, pre_tokenizers, trainers
from tokenizers import Tokenizer as Backend
from tokenizers.models import BPE

from .checkpoint import save_pretrained
from .families import make_spec
from .model import ModelConfig, Transformer
from .tokenizer import Tokenizer, configure_qwen2_pipeline

MASK_TOKEN = "<|mask|>"
EOS_TOKEN = "<|endoftext|>"
BEGIN_TOKEN = "<|begin|>"
SPECIAL_TOKENS = (EOS_TOKEN, MASK_TOKEN, BEGIN_TOKEN)
TINY_VOCAB = 512

# Written for this project: a little of several languages so common code pieces get merges.
CODE_SAMPLE = '''\
import os
import sys
from pathlib import Path


def read_lines(path: str) -> list[str]:
    """Return the lines of a text file without trailing newlines."""
    with open(path, encoding="utf-8") as handle:
        return [line.rstrip("\\n") for line in handle]


class Counter:
    def __init__(self, start: int = 0) -> None:
        self.value = start

    def increment(self, step: int = 1) -> int:
        self.value += step
        return self.value

    def __repr__(self) -> str:
        return f"Counter(value={self.value})"


def fibonacci(n: int) -> int:
    if n < 2:
        return n
    a, b = 0, 1
    for _ in range(n - 1):
        a, b = b, a + b
    return b


def main(argv: list[str]) -> int:
    total = 0
    for name in argv[1:]:
        if not os.path.exists(name):
            print("missing:", name, file=sys.stderr)
            continue
        total += len(read_lines(name))
    print(total)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))

function sum(values) {
  let total = 0;
  for (const value of values) {
    total += value;
  }
  return total;
}

export const greet = (name) => {
  if (!name) {
    throw new Error("name is required");
  }
  return `Hello, ${name}!`;
};

fn max_of(items: &[i32]) -> Option<i32> {
    let mut best: Option<i32> = None;
    for &item in items {
        best = match best {
            Some(b) if b >= item => Some(b),
            _ => Some(item),
        };
    }
    best
}

#include <stdio.h>

int main(void) {
    int i;
    for (i = 0; i < 10; i++) {
        printf("%d\\n", i * i);
    }
    return 0;
}
'''


@functools.lru_cache(maxsize=1)
def _tiny_tokenizer_json() -> str:
    """Train once per process; training is deterministic for a fixed corpus and settings."""
    backend = Backend(
        BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
    )
    configure_qwen2_pipeline(backend)
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        min_frequency=2,
        show_progress=False,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = [CODE_SAMPLE] * 4
    backend.train_from_iterator(corpus, trainer=trainer)
    return backend.to_str()


def tiny_tokenizer() -> Tokenizer:
    """The tiny byte-level BPE (a fresh object each call; the trained JSON is cached)."""
    return Tokenizer(Backend.from_str(_tiny_tokenizer_json()))


def make_tiny_model_dir(path: str | Path, **cfg_overrides: Any) -> Path:
    """Write a random-weight model with the tiny tokenizer to ``path`` and return it.

    ``cfg_overrides`` may set any :class:`ModelConfig` field, plus ``seed`` (weights), ``shifted``
    (family convention; default False) and ``model_id``."""
    out = Path(path)
    seed = int(cfg_overrides.pop("seed", 0))
    shifted = bool(cfg_overrides.pop("shifted", False))
    model_id = str(cfg_overrides.pop("model_id", "diffill-tiny"))
    tok = tiny_tokenizer()
    cfg_kw: dict[str, Any] = {
        "vocab_size": tok.vocab_size,
        "hidden_size": 64,
        "num_layers": 2,
        "num_heads": 4,
        "num_kv_heads": 2,
        "intermediate_size": 128,
        "rope_theta": 10000.0,
        "qkv_bias": True,
        "max_position": 4096,
    }
    cfg_kw.update(cfg_overrides)
    cfg = ModelConfig(**cfg_kw)
    if cfg.vocab_size < tok.vocab_size:
        raise ValueError(f"vocab_size {cfg.vocab_size} is smaller than the tokenizer's {tok.vocab_size}")
    gen = torch.Generator().manual_seed(seed)
    model = Transformer(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.02 * noise)
            else:  # fan-in scaling keeps activations and logits O(1) at any width
                p.copy_(noise * p.shape[-1] ** -0.5)
    eos = tok.token_to_id(EOS_TOKEN)
    mask = tok.token_to_id(MASK_TOKEN)
    begin = tok.token_to_id(BEGIN_TOKEN)
    assert eos is not None and mask is not None and begin is not None
    family = make_spec(
        name="diffill",
        shifted=shifted,
        mask_id=mask,
        eos_ids=(eos,),
        pad_id=eos,
        begin_ids=(begin,),
        tokenizer=tok,
    )
    return save_pretrained(model, tok.backend, family, out, extra={"model_id": model_id})
