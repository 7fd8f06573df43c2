"""GGUF -> Hugging Face directory: the same weights, config and tokenizer as transformers reads
from the same file (transformers' own GGUF loader is the reference)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffusion_core.checkpoint import load_model
from diffusion_core.coder.gguf_convert import GGUFError, convert_gguf
from diffusion_core.tokenizer import Tokenizer

from .conftest import write_base, write_gguf

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gguf")
    base, _ = write_base(root / "base", seed=3)
    return write_gguf(root / "model.gguf", base)


def test_weights_match_transformers(gguf_file: Path, tmp_path: Path) -> None:
    out = convert_gguf(gguf_file, tmp_path / "hf", dtype=torch.float32)
    ours = load_file(str(out / "model.safetensors"))
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32
    ).state_dict()
    assert set(ours) == set(ref)
    for name, t in ours.items():
        assert t.shape == ref[name].shape, name
        torch.testing.assert_close(t, ref[name], rtol=0, atol=0, msg=name)


def test_logits_match_transformers(gguf_file: Path, tmp_path: Path) -> None:
    out = convert_gguf(gguf_file, tmp_path / "hf", dtype=torch.float32)
    model = load_model(out, device="cpu", dtype=torch.float32, layout="qwen2")
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32
    ).eval()
    ids = torch.tensor([[5, 17, 99, 3, 250, 41, 7, 7, 12]])
    with torch.no_grad():
        want = hf(ids).logits
        got = model.logits(model(ids, causal=True))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_tokenizer_matches_transformers(gguf_file: Path, tmp_path: Path) -> None:
    out = convert_gguf(gguf_file, tmp_path / "hf", dtype=torch.float32)
    ours = Tokenizer.from_file(out / "tokenizer.json")
    ref = transformers.AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    for text in [
        "def read_lines(path: str) -> list[str]:\n\treturn [l.rstrip() for l in open(path)]\r\n",
        "  ünïcødé 漢字 😀   \n\n\n",
        "<|fim_prefix|>x = 1<|fim_suffix|>\n<|fim_middle|>",
    ]:
        assert ours.encode(text, allow_special=True) == ref.encode(text, add_special_tokens=False), text
    for t in ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|endoftext|>"):
        assert ours.token_to_id(t) == ref.convert_tokens_to_ids(t)
        assert ours.token_to_id(t) in ours.special_ids


def test_not_qwen2_is_refused(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "llama.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(GGUFError, match="only qwen2"):
        convert_gguf(path, tmp_path / "out")


def test_broken_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + b"\x00" * 10)
    with pytest.raises(GGUFError, match="cannot read GGUF file"):
        convert_gguf(path, tmp_path / "out")
