"""fp16-packed weights (diffusion_core/fp16_weights.py) against their plain fp32 reference, and the
measured choice of the CPU weight format (runtime.cpu_weights)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from diffusion_core import runtime
from diffusion_core.checkpoint import CheckpointError
from diffusion_core.coder.ar import ar_sample
from diffusion_core.engine import Engine
from diffusion_core.fp16_weights import Fp16Weight, fp16_available
from diffusion_core.sampler import Canvas

from .conftest import coder_engines

needs_fp16 = pytest.mark.skipif(not fp16_available(), reason="this torch build has no fbgemm fp16 matmul")


@needs_fp16
@pytest.mark.parametrize("rows", [1, 3, 70])
def test_packed_matmul_is_the_fp16_rounded_weight_in_fp32(rows: int) -> None:
    gen = torch.Generator().manual_seed(rows)
    w = torch.randn(300, 96, generator=gen) * 0.05
    x = torch.randn(2, rows, 96, generator=gen) * 3  # activations stay fp32: not rounded
    out = Fp16Weight.pack(w).matmul(x)
    assert out.shape == (2, rows, 300) and out.dtype == torch.float32
    torch.testing.assert_close(out, F.linear(x, w.half().float()), rtol=1e-5, atol=1e-5)
    # and it is not the unrounded weight's product (so the reference above is the right one)
    assert (F.linear(x, w) - F.linear(x, w.half().float())).abs().max() > 1e-5


@pytest.fixture(scope="module")
def engines(coder_dirs: tuple[Path, Path]) -> tuple[Engine, ...]:
    return coder_engines(coder_dirs, "fp32", "plain", "fp16")


@needs_fp16
def test_every_inference_matmul_takes_the_packed_weights(
    engines: tuple[Engine, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, packed = engines
    m = packed.model
    assert packed.about["cpu_weights"]["format"] == "fp16" and packed.about["cpu_weights"]["added_mb"] > 0
    linears = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)]
    for lin in linears:  # the reference weight holds exactly the packed values
        assert torch.equal(lin.weight, lin.weight.half().float())
    rows: list[int] = []
    real = Fp16Weight.matmul
    monkeypatch.setattr(Fp16Weight, "matmul", lambda self, x: rows.append(x.shape[-2]) or real(self, x))
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])
    with torch.inference_mode():
        m.logits(m(ids, causal=True)[0])  # 7 rows: packed as well (fp16 has no row limit)
    per_layer = len(linears) - (m.lm_head is not None)
    assert len(rows) == per_layer + 1 and set(rows) == {7}  # every block linear, and the LM head
    rows.clear()
    with torch.enable_grad():  # training never takes the packed path
        m.logits(m(ids, causal=True)[0])
    assert rows == []


@needs_fp16
def test_packed_model_is_the_rounded_model(engines: tuple[Engine, Engine]) -> None:
    """The packed engine computes what the plain engine computes with fp16-rounded weights:
    hidden states to fp32 rounding, and the same greedy tokens through the AR decoder."""
    plain, packed = engines
    m = plain.model
    rounded = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)]
    with torch.no_grad():  # the reference: every matmul weight rounded the same way, unpacked
        for mod in rounded + ([m.embed] if m.lm_head is None else []):
            mod.weight.copy_(mod.weight.half().float())
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3]])
    with torch.inference_mode():
        ref = plain.model.logits(plain.model(ids, causal=True)[0])
        out = packed.model.logits(packed.model(ids, causal=True)[0])
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    canvas = Canvas(prefix=[40, 41, 42, 43], suffix=[44, 45], max_tokens=12)
    a = ar_sample(plain.model, plain.family, canvas)
    b = ar_sample(packed.model, packed.family, canvas)
    assert a.tokens == b.tokens and a.steps == b.steps


def test_the_weight_format_follows_the_measurement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIFFILL_WEIGHTS", raising=False)
    speeds = {"plain": 1.0, "int8": 0.9, "fp16": 0.5}
    monkeypatch.setattr(runtime, "weight_format_speeds", lambda dtype: speeds)
    assert runtime.cpu_weights(torch.float32) == "fp16"
    speeds["fp16"] = 0.8  # fastest, but under the margin (1.3x): not worth a second copy
    assert runtime.cpu_weights(torch.float32) == "plain"
    speeds.update(int8=0.4)
    assert runtime.cpu_weights(torch.float32) == "int8"


def test_a_bad_weight_format_is_refused_by_name(
    coder_dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, adapter = coder_dirs
    monkeypatch.setenv("DIFFILL_WEIGHTS", "int3")
    with pytest.raises(CheckpointError, match="DIFFILL_WEIGHTS='int3'"):
        Engine.from_pretrained(adapter, base=base, device="cpu", dtype="fp32")
    monkeypatch.delenv("DIFFILL_WEIGHTS")
    with pytest.raises(CheckpointError, match="weights='fp16'.*bfloat16"):
        Engine.from_pretrained(adapter, base=base, device="cpu", dtype="bf16", weights="fp16")


@needs_fp16
def test_a_tied_head_packs_the_embedding_and_looks_up_the_same_rounded_rows() -> None:
    from diffusion_core.model import ModelConfig, random_transformer

    cfg = ModelConfig(
        vocab_size=500, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
        intermediate_size=128, qkv_bias=True, tie_embeddings=True,
    )  # fmt: skip
    m = random_transformer(cfg, seed=3)
    ref = random_transformer(cfg, seed=3)
    m.pack_fp16()
    assert torch.equal(m.embed.weight, ref.embed.weight.half().float())  # lookups: the rounded rows
    with torch.no_grad():
        for mod in [*(x for x in ref.modules() if isinstance(x, torch.nn.Linear)), ref.embed]:
            mod.weight.copy_(mod.weight.half().float())
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.inference_mode():
        h = m(ids, causal=True)[0]
        torch.testing.assert_close(h, ref(ids, causal=True)[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m.logits(h), F.linear(h, m.embed.weight), rtol=1e-5, atol=1e-5)
