"""A tiny Diffill-Coder for tests anywhere in the suite: a random qwen2-shaped base directory in
the upstream layout (Qwen's control tokens, a vocabulary padded past the tokenizer, untied head)
and an adapter directory with random, non-zero LoRA factors and mask embedding."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from model_fixtures import _train_bpe, export_tensors, random_model
from safetensors.torch import save_file
from tokenizers import AddedToken

from diffusion_core.coder.adapter import Adapter, AdapterConfig, save_adapter
from diffusion_core.coder.load import CODER_MODEL_TYPE, SHAPE_KEYS
from diffusion_core.model import ModelConfig, Transformer
from diffusion_core.tokenizer import qwen2_style_backend

# Qwen2.5's control tokens, in its id order (a subset: the ones the coder family reads)
QWEN_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
PADDING_ROWS = 8  # never-trained embedding rows past the tokenizer, as Qwen2.5 has 271


def write_base(path: Path, seed: int = 0, **shape: int) -> tuple[Path, Transformer]:
    path.mkdir(parents=True, exist_ok=True)
    base = json.loads(_train_bpe(()))
    vocab: dict[str, int] = base["model"]["vocab"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in base["model"]["merges"]]
    backend = qwen2_style_backend(vocab, merges)
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in QWEN_TOKENS])
    n_tok = backend.get_vocab_size(with_added_tokens=True)
    mc = ModelConfig(
        vocab_size=n_tok + PADDING_ROWS,
        hidden_size=shape.get("hidden_size", 64),
        num_layers=shape.get("num_layers", 2),
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=96,
        rope_theta=1_000_000.0,
        qkv_bias=True,
        max_position=4096,
    )
    model = random_model(mc, seed)
    model.eval()
    cfg = {
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
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
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "eos_token_id": backend.token_to_id("<|im_end|>"),
    }
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file(export_tensors(model, "qwen2"), str(path / "model.safetensors"), metadata={"format": "pt"})
    backend.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None})
    )
    return path, model


def random_adapter(model: Transformer, mask_id: int, seed: int = 1, scale: float = 0.3) -> Adapter:
    """Non-zero everywhere, so a test notices an adapter that is not applied (or applied where it
    must not be)."""
    ad = Adapter(model.cfg, AdapterConfig(rank=4, alpha=8.0, mask_id=mask_id))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ad.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale / max(p.shape[-1], 1) ** 0.5)
        ad.mask_embed.mul_(10.0)
    ad.eval()
    return ad


def write_adapter(path: Path, model: Transformer, mask_id: int, seed: int = 1, window: int = 8) -> Path:
    ad = random_adapter(model, mask_id, seed)
    shape = {k: getattr(model.cfg, k) for k in SHAPE_KEYS}
    save_adapter(
        ad,
        path,
        {
            "model_type": CODER_MODEL_TYPE,
            "model_id": "diffill-coder-test",
            "window": window,
            "base": {"name": "test base", "shape": shape},
        },
        dtype=torch.float32,
    )
    return path


def make_tiny_coder(root: Path) -> tuple[Path, Path]:
    """(base directory, adapter directory) of the tiny test coder, written under ``root``."""
    base, model = write_base(root / "base")
    mask_id = model.cfg.vocab_size - PADDING_ROWS  # the first row past the tokenizer
    return base, write_adapter(root / "adapter", model, mask_id)
