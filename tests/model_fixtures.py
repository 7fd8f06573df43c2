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

from diffusion_core.checkpoint import save_pretrained
from diffusion_core.families import make_spec
from diffusion_core.model import ModelConfig, Transformer, random_transformer
from diffusion_core.tokenizer import Tokenizer, configure_qwen2_pipeline

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


def random_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
    """A seeded random Transformer on the CPU in fp32 (``diffusion_core.model.random_transformer``):
    tests see varied, non-degenerate token choices."""
    return random_transformer(cfg, seed)


@functools.lru_cache(maxsize=4)
def _train_bpe(specials: tuple[str, ...] = SPECIAL_TOKENS) -> str:
    """Train once per process; training is deterministic for a fixed corpus and settings."""
    backend = Backend(
        BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
    )
    configure_qwen2_pipeline(backend)
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        min_frequency=2,
        show_progress=False,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in specials],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = [CODE_SAMPLE] * 4
    backend.train_from_iterator(corpus, trainer=trainer)
    return backend.to_str()


def tiny_tokenizer() -> Tokenizer:
    """The tiny byte-level BPE (a fresh object each call; the trained JSON is cached)."""
    return Tokenizer(Backend.from_str(_train_bpe()))


def make_tiny_model_dir(path: str | Path, **cfg_overrides: Any) -> Path:
    """Write a random-weight model with the tiny tokenizer to ``path`` and return it.

    ``cfg_overrides`` may set any :class:`ModelConfig` field, plus ``seed`` (weights), ``shifted``
    (family convention; default False), ``predicts_length`` (default False) and ``model_id``."""
    out = Path(path)
    seed = int(cfg_overrides.pop("seed", 0))
    shifted = bool(cfg_overrides.pop("shifted", False))
    predicts_length = bool(cfg_overrides.pop("predicts_length", False))
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
    model = random_model(cfg, seed)
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
        predicts_length=predicts_length,
    )
    return save_pretrained(model, tok.backend, family, out, extra={"model_id": model_id})


# --------------------------------------------------------------------------------- family layouts
# Control tokens appended after the base vocabulary, in id order, the way each family's published
# tokenizer carries them (the ids differ from the real checkpoints; the layout does not).
FAMILY_TOKENS: dict[str, tuple[str, ...]] = {
    "dream": ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|beginoftext|>", "<|mask|>"),
    "dreamon": ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|beginoftext|>", "<|mask|>", "<|expand|>"),
    "diffucoder-instruct": ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>", "<|dlm_pad|>"),
    "open-dcoder": ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_prefix|>", "<M>"),
    "coda": ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_prefix|>", "<|mask|>"),
    "llada": ("<|startoftext|>", "<|endoftext|>", "<|eot_id|>", "<|mdm_mask|>"),
}


def _piece_rows(name: str, mc: ModelConfig) -> int:
    """Rows a source tensor contributes to its fused canonical parameter."""
    if name.endswith(("q_proj.weight", "q_proj.bias")):
        return mc.num_heads * mc.head_dim
    if name.endswith(("k_proj.weight", "k_proj.bias", "v_proj.weight", "v_proj.bias")):
        return mc.num_kv_heads * mc.head_dim
    return mc.intermediate_size  # gate_proj / up_proj / ff_proj


def export_tensors(model: Transformer, layout: str) -> dict[str, torch.Tensor]:
    """``model``'s weights under a layout's tensor names (fused parameters split back apart)."""
    from diffusion_core.checkpoint import LAYOUTS

    params = dict(model.named_parameters())
    out: dict[str, torch.Tensor] = {}
    for canon, names in LAYOUTS[layout].sources(model.cfg).items():
        t = params[canon].detach().to("cpu")
        if len(names) == 1:
            out[names[0]] = t.clone().contiguous()
            continue
        parts = t.split([_piece_rows(n, model.cfg) for n in names], dim=0)
        out.update({n: p.clone().contiguous() for n, p in zip(names, parts)})
    return out


def _family_config(kind: str, mc: ModelConfig, ids: dict[str, int]) -> dict[str, Any]:
    """config.json in the family's own key names."""
    qwen = {
        "hidden_act": "silu",
        "hidden_size": mc.hidden_size,
        "intermediate_size": mc.intermediate_size,
        "num_hidden_layers": mc.num_layers,
        "num_attention_heads": mc.num_heads,
        "num_key_value_heads": mc.num_kv_heads,
        "vocab_size": mc.vocab_size,
        "rope_theta": mc.rope_theta,
        "rms_norm_eps": mc.rms_eps,
        "max_position_embeddings": mc.max_position,
        "rope_scaling": None,
        "use_sliding_window": False,
        "torch_dtype": "float32",
    }
    if kind in ("dream", "dreamon", "diffucoder-instruct"):
        return {
            **qwen,
            "model_type": "Dream",
            "architectures": ["DreamModel"],
            "tie_word_embeddings": False,
            "mask_token_id": ids["<|mask|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|endoftext|>"],
            "bos_token_id": ids["<|endoftext|>"],
        }
    if kind == "open-dcoder":
        return {
            **qwen,
            "model_type": "qwen2",
            "architectures": ["Qwen2ForCausalLM"],
            "tie_word_embeddings": True,
            "eos_token_id": ids["<|endoftext|>"],
            "bos_token_id": ids["<|endoftext|>"],
        }
    if kind == "coda":  # CoDA's config.json has no tie_word_embeddings and no eos_token_id
        return {
            **qwen,
            "model_type": "CoDA",
            "architectures": ["CoDALanguageModel"],
            "head_dim": mc.head_dim,
            "attention_bias": False,
            "mask_token_id": ids["<|mask|>"],
            "pad_token_id": ids["<|endoftext|>"],
        }
    if kind == "llada":
        return {
            "model_type": "llada",
            "architectures": ["LLaDAModelLM"],
            "activation_type": "silu",
            "block_type": "llama",
            "layer_norm_type": "rms",
            "alibi": False,
            "rope": True,
            "include_bias": False,
            "include_qkv_bias": mc.qkv_bias,
            "attention_layer_norm": False,
            "input_emb_norm": False,
            "scale_logits": False,
            "block_group_size": 1,
            "weight_tying": mc.tie_embeddings,
            "d_model": mc.hidden_size,
            "n_layers": mc.num_layers,
            "n_heads": mc.num_heads,
            "n_kv_heads": mc.num_kv_heads,
            "mlp_hidden_size": mc.intermediate_size,
            "mlp_ratio": 4,
            "vocab_size": mc.vocab_size,
            "embedding_size": mc.vocab_size,
            "max_sequence_length": mc.max_position,
            "rope_theta": mc.rope_theta,
            "rms_norm_eps": mc.rms_eps,
            "mask_token_id": ids["<|mdm_mask|>"],
            "eos_token_id": ids["<|endoftext|>"],
            "pad_token_id": ids["<|endoftext|>"],
        }
    raise ValueError(f"unknown family layout {kind!r}")


_FAMILY_SHAPE: dict[str, dict[str, Any]] = {
    "dream": {"qkv_bias": True},
    "dreamon": {"qkv_bias": True},
    "diffucoder-instruct": {"qkv_bias": True},
    "open-dcoder": {"qkv_bias": True, "tie_embeddings": True},
    "coda": {"qk_norm": True, "head_dim": 32},
    "llada": {"num_kv_heads": 4},
}
_LAYOUT_OF = {
    "dream": "qwen2",
    "dreamon": "qwen2",
    "diffucoder-instruct": "qwen2",
    "open-dcoder": "qwen2",
    "coda": "qwen3",
    "llada": "llada",
}


def make_family_dir(
    path: str | Path,
    kind: str,
    *,
    seed: int = 0,
    shards: int = 1,
    tokenizer_json: bool | None = None,
    tokenizer_config: bool = True,
) -> tuple[Path, Transformer]:
    """A tiny random-weight checkpoint in a real family's directory layout (its config keys,
    tensor names, tokenizer files and control tokens). Returns the directory and the model whose
    weights it holds, so tests can compare the loader's logits against it.

    ``kind``: dream, dreamon, diffucoder-instruct, open-dcoder, coda, llada. The Dream kinds
    ship vocab.json + merges.txt + added_tokens.json (no tokenizer.json) unless
    ``tokenizer_json`` is True; the others ship tokenizer.json."""
    import json

    from safetensors.torch import save_file

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokens = FAMILY_TOKENS[kind]
    base = json.loads(_train_bpe(()))
    vocab: dict[str, int] = base["model"]["vocab"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in base["model"]["merges"]]
    ids = {t: len(vocab) + i for i, t in enumerate(tokens)}
    shape: dict[str, Any] = {
        "vocab_size": len(vocab) + len(tokens) + 7,  # a padded head, as the real checkpoints have
        "hidden_size": 64,
        "num_layers": 2,
        "num_heads": 4,
        "num_kv_heads": 2,
        "intermediate_size": 96,
        "rope_theta": 10000.0,
        "rms_eps": 1e-6,
        "max_position": 2048,
        **_FAMILY_SHAPE[kind],
    }
    mc = ModelConfig(**shape)
    model = random_model(mc, seed)
    model.eval()
    cfg = _family_config(kind, mc, ids)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")

    tensors = export_tensors(model, _LAYOUT_OF[kind])
    if shards <= 1:
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    else:
        names = sorted(tensors)
        weight_map = {}
        for k in range(shards):
            file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
            part = names[k::shards]
            save_file({n: tensors[n] for n in part}, str(out / file), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(part, file))
        index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")

    dream_like = kind in ("dream", "dreamon", "diffucoder-instruct")
    use_json = (not dream_like) if tokenizer_json is None else tokenizer_json
    if use_json:
        from diffusion_core.tokenizer import qwen2_style_backend

        backend = qwen2_style_backend(vocab, merges)
        backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in tokens])
        backend.save(str(out / "tokenizer.json"))
    else:
        (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        (out / "added_tokens.json").write_text(json.dumps(ids, indent=2), encoding="utf-8")
    if tokenizer_config:
        special = {
            "dream": {
                "bos_token": "<|beginoftext|>",
                "eos_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
            },
            "dreamon": {
                "bos_token": "<|beginoftext|>",
                "eos_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
            },
            "diffucoder-instruct": {"eos_token": "<|im_end|>", "pad_token": "<|dlm_pad|>"},
            "open-dcoder": {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "mask_token": "<M>"},
            "coda": {"bos_token": "<|im_end|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
            "llada": {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "add_bos_token": True},
        }[kind]
        if kind != "open-dcoder" and "<|mask|>" in ids:
            special["mask_token"] = "<|mask|>"
        tcfg = {
            "added_tokens_decoder": {
                str(i): {"content": t, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
                for t, i in ids.items()
            },
            "model_max_length": mc.max_position,
            **special,
        }
        (out / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=2), encoding="utf-8")
    return out, model
