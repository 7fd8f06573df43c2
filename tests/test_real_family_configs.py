"""Each family's control tokens as its published checkpoint declares them.

The family fixtures in model_fixtures.py put a small tokenizer's ids into each family's key names.
Here the ids are the published ones: config.json's token ids and tokenizer_config.json's
``added_tokens_decoder`` and special-token fields of the real checkpoints, with only the vocabulary
itself shrunk (a small BPE, the added tokens at their real ids above a gap). Sources, read with the
search tools (the hub is not reachable here): ../shared/notes/diffusion-models.md, the Qwen2.5 /
Qwen3 tokenizers' added-token tables, and public code that checks these files of pinned revisions
(Dream-org/Dream-v0-Instruct-7B @05334cb9fa, Dream-org/Dream-Coder-v0-Instruct-7B @5d9e88c723,
apple/DiffuCoder-7B-Instruct @4fdd458006: mask 151666, eos/pad 151643, Dream-Coder's bos 151665,
DiffuCoder's tokenizer pad ``<|dlm_pad|>`` 151667 while its config says 151643; GSAI-ML/LLaDA-8B:
``<|startoftext|>`` 126080, ``<|endoftext|>`` 126081, ``<|mdm_mask|>`` 126336, ``<|eot_id|>``
126348). What is checked is what decoding depends on: mask id, shift, end and pad tokens, what goes
before the prefix and after the suffix, and that no control token can reach the user's text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from model_fixtures import _train_bpe

from diffusion_core.checkpoint import load_tokenizer
from diffusion_core.families import build_family, detect_family

# Qwen2.5's added tokens (Qwen2.5-Coder's are the same), ids 151643-151664
QWEN25 = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
]  # fmt: skip
QWEN3 = [*QWEN25, "<tool_response>", "</tool_response>", "<think>", "</think>"]  # 151643-151668
NOT_SPECIAL = {"<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>",
               "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>",
               "<|file_sep|>"}  # fmt: skip


def _qwen(extra: dict[int, str], base: list[str] = QWEN25) -> dict[int, str]:
    return {151643 + i: t for i, t in enumerate(base)} | extra


DREAM_CONFIG = {"architectures": ["DreamModel"], "model_type": "Dream", "bos_token_id": 151643,
                "eos_token_id": 151643, "pad_token_id": 151643, "mask_token_id": 151666,
                "tie_word_embeddings": False, "vocab_size": 152064}  # fmt: skip
DREAM_TOKENS = {"bos_token": "<|beginoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                "mask_token": "<|mask|>"}  # fmt: skip

CHECKPOINTS: dict[str, dict[str, Any]] = {
    "Dream-v0-Base-7B": dict(
        config=DREAM_CONFIG,
        added=_qwen({151665: "<|beginoftext|>", 151666: "<|mask|>"}),
        tokens=DREAM_TOKENS,
        expect=dict(name="dream", shifted=True, mask_id=151666, pad_id=151643, begin_ids=(151665,),
                    end_ids=(), eos=(151643, 151645), expand_id=None),
    ),
    "Dream-Coder-v0-Instruct-7B": dict(
        config=DREAM_CONFIG | {"bos_token_id": 151665},
        added=_qwen({151665: "<|beginoftext|>", 151666: "<|mask|>"}),
        tokens=DREAM_TOKENS | {"eos_token": "<|im_end|>"},
        expect=dict(name="dream", shifted=True, mask_id=151666, pad_id=151643, begin_ids=(151665,),
                    end_ids=(), eos=(151643, 151645), expand_id=None),
    ),
    "DiffuCoder-7B-Instruct": dict(
        config=DREAM_CONFIG,
        added=_qwen({151665: "<|beginoftext|>", 151666: "<|mask|>", 151667: "<|dlm_pad|>"}),
        tokens={"eos_token": "<|im_end|>", "pad_token": "<|dlm_pad|>", "mask_token": "<|mask|>"},
        # the tokenizer's pad (what its answers are padded with) wins over config.json's 151643
        expect=dict(name="dream", shifted=True, mask_id=151666, pad_id=151667, begin_ids=(),
                    end_ids=(), eos=(151643, 151645, 151667), expand_id=None),
    ),
    "DreamOn-v0-7B": dict(
        config=DREAM_CONFIG,
        added=_qwen({151665: "<|beginoftext|>", 151666: "<|mask|>", 151667: "<|expand|>"}),
        tokens=DREAM_TOKENS,
        # DreamOn's infill prompt: bos + prefix + masks + suffix + eos
        expect=dict(name="dream", shifted=True, mask_id=151666, pad_id=151643, begin_ids=(151665,),
                    end_ids=(151643,), eos=(151643,), expand_id=151667),
    ),
    "CoDA-v0-Instruct": dict(
        # no eos_token_id in its config.json (the config class defaults to <|im_end|>)
        config={"architectures": ["CoDALanguageModel"], "model_type": "CoDA", "mask_token_id": 151669,
                "pad_token_id": 151643, "vocab_size": 151936},
        added=_qwen({151669: "<|mask|>"}, QWEN3),
        tokens={"bos_token": "<|im_end|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                "mask_token": "<|mask|>"},
        expect=dict(name="coda", shifted=True, mask_id=151669, pad_id=151643, begin_ids=(),
                    end_ids=(), eos=(151645, 151643), expand_id=None),
    ),
    "LLaDA-8B-Instruct": dict(
        config={"architectures": ["LLaDAModelLM"], "model_type": "llada", "mask_token_id": 126336,
                "eos_token_id": 126081, "pad_token_id": 126081, "vocab_size": 126464,
                "embedding_size": 126464},
        added={126080: "<|startoftext|>", 126081: "<|endoftext|>", 126336: "<|mdm_mask|>",
               126346: "<|start_header_id|>", 126347: "<|end_header_id|>", 126348: "<|eot_id|>"},
        tokens={"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "add_bos_token": True},
        # not shifted: position j predicts token j; the Instruct model's turns end with <|eot_id|>
        expect=dict(name="llada", shifted=False, mask_id=126336, pad_id=126081, begin_ids=(126080,),
                    end_ids=(), eos=(126081, 126348), expand_id=None),
    ),
}  # fmt: skip


def _checkpoint_dir(root: Path, ck: dict[str, Any]) -> Path:
    """config.json and the tokenizer files as published (vocab.json + merges.txt +
    tokenizer_config.json), the vocabulary shrunk to a small BPE below the added tokens."""
    base = json.loads(_train_bpe(()))
    vocab = base["model"]["vocab"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in base["model"]["merges"]]
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(ck["config"]), encoding="utf-8")
    (root / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (root / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    decoder = {
        str(i): {"content": t, "lstrip": False, "rstrip": False, "normalized": False,
                 "single_word": False, "special": t not in NOT_SPECIAL}
        for i, t in sorted(ck["added"].items())
    }  # fmt: skip
    tcfg = {"added_tokens_decoder": decoder, "model_max_length": 32768, **ck["tokens"]}
    (root / "tokenizer_config.json").write_text(json.dumps(tcfg), encoding="utf-8")
    return root


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_published_control_tokens(name: str, tmp_path: Path) -> None:
    ck = CHECKPOINTS[name]
    root = _checkpoint_dir(tmp_path / name, ck)
    family = detect_family(ck["config"])
    tok, info = load_tokenizer(root)
    spec = build_family(family, ck["config"], tok, info)
    want = ck["expect"]
    assert (spec.name, spec.shifted, spec.mask_id, spec.pad_id) == (
        want["name"], want["shifted"], want["mask_id"], want["pad_id"],
    )  # fmt: skip
    assert spec.begin_ids == want["begin_ids"] and spec.end_ids == want["end_ids"]
    assert spec.expand_id == want["expand_id"]
    assert set(want["eos"]) <= set(spec.eos_ids), spec.eos_ids
    # the tokenizer maps the published strings to the published ids
    for i, t in ck["added"].items():
        assert tok.token_to_id(t) == i, t
    # no control token, the mask, the pad or an end token can come back as text
    control = {i for i, t in ck["added"].items() if t not in NOT_SPECIAL}
    assert control | {spec.mask_id, spec.pad_id, *spec.eos_ids} <= spec.special_ids
    assert tok.decode([spec.mask_id, *spec.eos_ids]) == ""
