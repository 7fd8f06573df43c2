"""Coder test helpers: the tiny Diffill-Coder's writers (tests/coder_fixtures.py, re-exported
here for this folder's tests; its ``coder_dirs`` fixture is suite-wide, tests/conftest.py), a
GGUF of its base, engines in each CPU weight format."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from coder_fixtures import PADDING_ROWS, QWEN_TOKENS, random_adapter, write_adapter, write_base

from diffusion_core.coder.sampler import step_mask
from diffusion_core.engine import Engine
from diffusion_core.model import Adapted

__all__ = ["PADDING_ROWS", "QWEN_TOKENS", "random_adapter", "write_adapter", "write_base"]

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
