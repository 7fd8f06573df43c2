"""A tiny Diffill-Coder for tests: a random qwen2-shaped base directory in the upstream layout
(Qwen's control tokens, a vocabulary padded past the tokenizer, untied head) and an adapter
directory with random, non-zero LoRA factors and mask embedding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from model_fixtures import _train_bpe, export_tensors, random_model
from safetensors.torch import save_file
from tokenizers import AddedToken

from diffusion_core.coder.adapter import Adapter, AdapterConfig, save_adapter
from diffusion_core.coder.load import CODER_MODEL_TYPE, SHAPE_KEYS
from diffusion_core.coder.sampler import step_mask
from diffusion_core.engine import Engine
from diffusion_core.model import Adapted, ModelConfig, Transformer
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


@pytest.fixture(scope="session")
def coder_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(base directory, adapter directory) of the tiny test coder."""
    root = tmp_path_factory.mktemp("coder")
    base, model = write_base(root / "base")
    mask_id = model.cfg.vocab_size - PADDING_ROWS  # the first row past the tokenizer
    adapter = write_adapter(root / "adapter", model, mask_id)
    return base, adapter


# ----------------------------------------------------------------------------- a GGUF of the base
_GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_GGUF_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf: str) -> str:
    if hf in _GGUF_NAMES:
        return _GGUF_NAMES[hf]
    _, _, layer, rest = hf.split(".", 3)
    return f"blk.{layer}.{_GGUF_LAYER[rest]}"


def write_gguf(path: Path, base_dir: Path) -> Path:
    """The test base as a llama.cpp-style qwen2 GGUF, its matrices quantized (Q4_0, Q5_0, Q8_0)
    the way a real Q4_K_M file mixes types, norms and biases in F32."""
    import gguf
    import numpy as np
    from safetensors.torch import load_file
    from tokenizers import Tokenizer as Backend

    cfg = json.loads((base_dir / "config.json").read_text())
    tensors = load_file(str(base_dir / "model.safetensors"))
    backend = Backend.from_file(str(base_dir / "tokenizer.json"))
    data = json.loads(backend.to_str())
    n_tok = backend.get_vocab_size(with_added_tokens=True)
    tokens, types = [], []
    for i in range(cfg["vocab_size"]):
        t = backend.id_to_token(i) if i < n_tok else None
        tokens.append(t if t is not None else f"[PAD{i}]")
        types.append(5 if t is None else 3 if t in QWEN_TOKENS else 1)
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(backend.token_to_id("<|im_end|>"))
    w.add_pad_token_id(backend.token_to_id("<|endoftext|>"))
    w.add_bos_token_id(backend.token_to_id("<|endoftext|>"))
    kinds = [gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q5_0, gguf.GGMLQuantizationType.Q8_0]
    for i, (name, t) in enumerate(sorted(tensors.items())):
        arr = t.float().numpy()
        if arr.ndim == 2:
            kind = kinds[i % len(kinds)]
            w.add_tensor(gguf_name(name), gguf.quants.quantize(arr, kind), raw_dtype=kind)
        else:
            w.add_tensor(gguf_name(name), np.ascontiguousarray(arr, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def coder_engines(coder_dirs: tuple[Path, Path], dtype: str, *weights: str) -> tuple[Engine, ...]:
    """The tiny test coder loaded once per CPU weight format (the format tests compare them)."""
    base, adapter = coder_dirs
    return tuple(
        Engine.from_pretrained(adapter, base=base, device="cpu", dtype=dtype, weights=w) for w in weights
    )


def assert_next_tokens_close(a: Engine, b: Engine, ids: torch.Tensor, max_tv: float = 0.05) -> None:
    """Two engines' next-token distributions over ``ids`` differ by at most ``max_tv`` (total
    variation) at every position and agree on the most likely token."""
    with torch.inference_mode():
        p = torch.softmax(a.model.logits(a.model(ids, causal=True)[0]), -1)
        q = torch.softmax(b.model.logits(b.model(ids, causal=True)[0]), -1)
    tv = 0.5 * (p - q).abs().sum(-1)
    assert float(tv.max()) < max_tv, tv
    assert torch.equal(p.argmax(-1), q.argmax(-1))


def first_step(
    model: torch.nn.Module, adapter: object, ctx: list[int], window: list[int], room: int = 8
) -> tuple:
    """The coder sampler's first forward, alone: the whole context, then a window of masks with
    the adapter, into a fresh cache; its hidden rows [T, hidden] and the cache."""
    cache = model.new_cache(1, len(ctx) + room)
    h = model(
        torch.tensor([ctx + window]),
        cache=cache,
        start=0,
        attn_mask=step_mask(0, len(ctx), len(window), torch.device("cpu")),
        adapted=Adapted(adapter, rows_from=len(ctx)),
    )
    return h[0], cache
