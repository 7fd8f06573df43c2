"""A qwen2 GGUF file to a Hugging Face-format directory the checkpoint loader reads.

Why convert instead of running the quantized file: the engine's model, kernels and adapter work
on plain dense tensors, and the conversion is done once into a cache (``base.py``). The ``gguf``
package (ggml's own reader) parses the file and dequantizes every tensor type; this module only
maps llama.cpp's tensor names and metadata keys back to Qwen2's and rebuilds the byte-level BPE
tokenizer from the vocabulary and merges stored in the file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import AddedToken

from ..tokenizer import qwen2_style_backend

__all__ = ["GGUFError", "convert_gguf", "gguf_config", "gguf_state_dict", "gguf_tokenizer"]

# llama.cpp token types (gguf.TokenType): 1 normal, 3 control, 4 user-defined, 5 unused
_NORMAL, _CONTROL, _USER = 1, 3, 4

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


class GGUFError(ValueError):
    """The GGUF file is not a qwen2 model this converter understands."""


def _reader(path: str | Path) -> Any:
    import gguf

    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # the reader raises ValueError / struct errors on a broken file
        raise GGUFError(f"cannot read GGUF file {path}: {e}") from None


def _field(reader: Any, key: str, required: bool = True) -> Any:
    f = reader.fields.get(key)
    if f is None:
        if required:
            raise GGUFError(f"missing metadata key {key!r} in the GGUF file")
        return None
    return f.contents()


def hf_name(gguf_name: str) -> str:
    """The Hugging Face Qwen2 tensor name of a llama.cpp tensor name."""
    if gguf_name in _TOP_NAMES:
        return _TOP_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
    raise GGUFError(f"unexpected tensor {gguf_name!r} in a qwen2 GGUF file")


def gguf_config(reader: Any) -> dict[str, Any]:
    """config.json of the model (Hugging Face Qwen2 keys) from the file's metadata."""
    arch = _field(reader, "general.architecture")
    if arch != "qwen2":
        raise GGUFError(f"general.architecture is {arch!r}; only qwen2 GGUF files are supported")
    names = {t.name for t in reader.tensors}
    n_vocab = next(int(t.shape[-1]) for t in reader.tensors if t.name == "token_embd.weight")
    eos = _field(reader, "tokenizer.ggml.eos_token_id", required=False)
    pad = _field(reader, "tokenizer.ggml.padding_token_id", required=False)
    bos = _field(reader, "tokenizer.ggml.bos_token_id", required=False)
    eps = float(_field(reader, "qwen2.attention.layer_norm_rms_epsilon"))
    return {
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
        "vocab_size": n_vocab,
        "hidden_size": int(_field(reader, "qwen2.embedding_length")),
        "num_hidden_layers": int(_field(reader, "qwen2.block_count")),
        "num_attention_heads": int(_field(reader, "qwen2.attention.head_count")),
        "num_key_value_heads": int(_field(reader, "qwen2.attention.head_count_kv")),
        "intermediate_size": int(_field(reader, "qwen2.feed_forward_length")),
        "max_position_embeddings": int(_field(reader, "qwen2.context_length")),
        "rope_theta": float(_field(reader, "qwen2.rope.freq_base")),
        # stored as float32 in the file (1e-6 reads back as 9.99999997e-07)
        "rms_norm_eps": float(f"{eps:.6g}"),
        "hidden_act": "silu",
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": None if bos is None else int(bos),
        "eos_token_id": None if eos is None else int(eos),
        "pad_token_id": None if pad is None else int(pad),
        "torch_dtype": "bfloat16",
    }


def gguf_state_dict(
    reader: Any, dtype: torch.dtype = torch.bfloat16, progress: Callable[[int], None] | None = None
) -> dict[str, torch.Tensor]:
    """Every tensor dequantized to ``dtype`` under its Hugging Face name. ``progress`` is called
    with the number of elements done after each tensor."""
    import gguf

    out: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        name = hf_name(t.name)
        try:
            data = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise GGUFError(f"tensor {t.name!r}: {e}") from None
        # numpy shape is the reverse of ggml's ne[]: rows first, as torch's Linear weight wants
        out[name] = torch.from_numpy(np.array(data, dtype=np.float32)).to(dtype)
        if progress is not None:
            progress(int(t.n_elements))
    return out


def gguf_tokenizer(reader: Any) -> tuple[Any, dict[str, Any]]:
    """The byte-level BPE stored in the file (a ``tokenizers.Tokenizer``) and a
    tokenizer_config.json for it. Unused (padding) vocabulary rows get no token."""
    model = _field(reader, "tokenizer.ggml.model")
    pre = _field(reader, "tokenizer.ggml.pre", required=False)
    if model != "gpt2" or pre not in (None, "qwen2"):
        raise GGUFError(f"unsupported tokenizer {model!r}/{pre!r} (expected gpt2/qwen2)")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    merges = _field(reader, "tokenizer.ggml.merges")
    if len(types) != len(tokens):
        raise GGUFError("tokenizer.ggml.token_type and tokenizer.ggml.tokens differ in length")
    vocab: dict[str, int] = {}
    added: list[tuple[int, AddedToken]] = []
    for i, (tok, kind) in enumerate(zip(tokens, types)):
        if kind == _NORMAL:
            vocab[tok] = i
        elif kind in (_CONTROL, _USER):
            added.append((i, AddedToken(tok, normalized=False, special=kind == _CONTROL)))
    backend = qwen2_style_backend(vocab, merges)
    for i, tok in added:  # in id order, so each lands on its id (checked below)
        (backend.add_special_tokens if tok.special else backend.add_tokens)([tok])
        if backend.token_to_id(tok.content) != i:
            raise GGUFError(f"added token {tok.content!r} should have id {i} in the GGUF vocabulary")

    def text(key: str) -> str | None:
        tid = _field(reader, key, required=False)
        return None if tid is None else tokens[int(tid)]

    tcfg = {
        "tokenizer_class": "Qwen2Tokenizer",
        "bos_token": None,  # Qwen2 never prepends one
        "eos_token": text("tokenizer.ggml.eos_token_id"),
        "pad_token": text("tokenizer.ggml.padding_token_id"),
        "add_bos_token": False,
        "model_max_length": 32768,
    }
    return backend, tcfg


def convert_gguf(
    gguf_path: str | Path,
    out_dir: str | Path,
    dtype: torch.dtype = torch.bfloat16,
    progress: Callable[[int], None] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write config.json, model.safetensors, tokenizer.json and tokenizer_config.json for the
    qwen2 model in ``gguf_path`` into ``out_dir``."""
    reader = _reader(gguf_path)
    cfg = gguf_config(reader)
    backend, tcfg = gguf_tokenizer(reader)
    tensors = gguf_state_dict(reader, dtype, progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if extra:
        cfg.update(extra)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    backend.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=2) + "\n", encoding="utf-8")
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    return out


def gguf_elements(gguf_path: str | Path) -> int:
    """Total number of weights in the file (for a progress bar)."""
    return sum(int(t.n_elements) for t in _reader(gguf_path).tensors)
