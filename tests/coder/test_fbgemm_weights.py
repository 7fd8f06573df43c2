"""Weights packed for fbgemm (diffusion_core/fbgemm_weights.py), fp16 and w8a8, against plain
references of exactly their rounding, and the measured choice of the CPU's dtype and weight
format (runtime.cpu_numerics)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from diffusion_core import fbgemm_weights, runtime
from diffusion_core.checkpoint import CheckpointError
from diffusion_core.coder.ar import ar_sample
from diffusion_core.engine import Engine
from diffusion_core.fbgemm_weights import PackedWeight, pack_weight, packed_available
from diffusion_core.sampler import Canvas

from .conftest import assert_next_tokens_close, coder_engines

needs_fp16 = pytest.mark.skipif(
    not packed_available("fp16"), reason="this torch build has no fbgemm fp16 matmul"
)
needs_w8a8 = pytest.mark.skipif(
    not packed_available("w8a8"), reason="this torch build has no fbgemm int8 matmul"
)


def w8a8_reference(x: torch.Tensor, w: torch.Tensor, reduce_range: bool) -> torch.Tensor:
    """What the w8a8 path stands for, in plain torch: int8 weights with one scale per output row,
    the activations quantized affinely to 8 bits (7 with ``reduce_range``) over their range."""
    w_scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    wq = torch.round(w / w_scale[:, None]).clamp(-128, 127) * w_scale[:, None]
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    qmax = 127 if reduce_range else 255
    scale = (hi - lo) / qmax
    zero = min(qmax, max(0, round(-lo / scale)))
    xq = (torch.clamp(torch.round(x / scale) + zero, 0, qmax) - zero) * scale
    return xq @ wq.T


@needs_fp16
@pytest.mark.parametrize("rows", [1, 3, 70])
def test_packed_matmul_is_the_fp16_rounded_weight_in_fp32(rows: int) -> None:
    gen = torch.Generator().manual_seed(rows)
    w = torch.randn(300, 96, generator=gen) * 0.05
    x = torch.randn(2, rows, 96, generator=gen) * 3  # activations stay fp32: not rounded
    packed, values = pack_weight(w, "fp16")
    out = packed.matmul(x)
    assert out.shape == (2, rows, 300) and out.dtype == torch.float32
    assert torch.equal(values, w.half().float())
    torch.testing.assert_close(out, F.linear(x, w.half().float()), rtol=1e-5, atol=1e-5)
    # and it is not the unrounded weight's product (so the reference above is the right one)
    assert (F.linear(x, w) - F.linear(x, w.half().float())).abs().max() > 1e-5


@needs_w8a8
@pytest.mark.parametrize("vnni", [True, False], ids=["8-bit", "7-bit"])
@pytest.mark.parametrize("rows", [1, 3, 70])
def test_w8a8_matmul_is_its_plain_reference(rows: int, vnni: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Activations keep 8 bits where the CPU has VNNI, 7 without (fbgemm's dot product would
    saturate); either way the packed call is the plain reference of that rounding."""
    monkeypatch.setattr(fbgemm_weights, "has_vnni", lambda: vnni)
    gen = torch.Generator().manual_seed(rows)
    w = torch.randn(300, 96, generator=gen) * 0.05
    x = torch.randn(2, rows, 96, generator=gen) * 3
    packed, _ = pack_weight(w, "w8a8")
    out = packed.matmul(x)
    assert out.shape == (2, rows, 300) and out.dtype == torch.float32
    # one request's call: one activation scale for all its rows (both [rows, 96] slices)
    ref = w8a8_reference(x.reshape(-1, 96), w, reduce_range=not vnni).reshape(out.shape)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # the rounding is real: the unquantized product differs by far more than the tolerance
    assert (F.linear(x, w) - out).abs().max() > 1e-3


@needs_w8a8
@pytest.mark.parametrize("vnni", [True, False], ids=["8-bit", "7-bit"])
def test_w8a8_rounds_each_group_of_rows_as_its_own_call(vnni: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows of several requests in one call (a batch): each request's rows get the rounding of
    their own call, and nothing another request sends changes them by a bit."""
    monkeypatch.setattr(fbgemm_weights, "has_vnni", lambda: vnni)
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(300, 96, generator=gen) * 0.05
    packed, _ = pack_weight(w, "w8a8")
    mine, theirs = torch.randn(3, 96, generator=gen) * 3, torch.randn(4, 96, generator=gen) * 0.5
    groups = torch.tensor([1, 0, 1, 0, 0, 1, 0])  # interleaved, as a packed forward lays them out
    at = [torch.nonzero(groups == g).flatten() for g in (0, 1)]

    def call(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x = torch.empty(7, 96)
        x[at[0]], x[at[1]] = b, a
        return packed.matmul(x, groups)

    out = call(mine, theirs)
    for rows, x in ((at[1], mine), (at[0], theirs)):  # its own call: the reference's rounding above
        torch.testing.assert_close(out[rows], packed.matmul(x), rtol=1e-5, atol=1e-5)
    for louder in (theirs * 40, -theirs, torch.zeros_like(theirs)):
        assert torch.equal(call(mine, louder)[at[1]], out[at[1]])
    # without groups one scale spans the call: the quiet request's rows would move
    x = torch.empty(7, 96)
    x[at[0]], x[at[1]] = theirs * 40, mine
    assert (packed.matmul(x)[at[1]] - out[at[1]]).abs().max() > 1e-3


@pytest.fixture(scope="module")
def engines(coder_dirs: tuple[Path, Path]) -> tuple[Engine, ...]:
    return coder_engines(coder_dirs, "fp32", "plain", "fp16", "w8a8")


@needs_fp16
@needs_w8a8
@pytest.mark.parametrize("kind", ["fp16", "w8a8"])
def test_every_inference_matmul_takes_the_packed_weights(
    engines: tuple[Engine, ...], kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain, fp16, w8a8 = engines
    packed = fp16 if kind == "fp16" else w8a8
    m = packed.model
    assert packed.about["cpu_weights"]["format"] == kind and packed.about["cpu_weights"]["added_mb"] > 0
    linears = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)]
    if kind == "fp16":  # the reference weight holds exactly the packed values
        assert all(torch.equal(lin.weight, lin.weight.half().float()) for lin in linears)
    else:  # w8a8 leaves every weight as it is (a tied embedding: exact lookups)
        ref = dict(plain.model.named_parameters())
        assert all(torch.equal(p, ref[name]) for name, p in m.named_parameters())
    rows: list[int] = []
    real = PackedWeight.matmul
    monkeypatch.setattr(
        PackedWeight, "matmul", lambda self, x, groups=None: rows.append(x.shape[-2]) or real(self, x, groups)
    )
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])
    with torch.inference_mode():
        m.logits(m(ids, causal=True)[0])  # 7 rows: packed as well (no row limit)
    per_layer = len(linears) - (m.lm_head is not None)
    assert len(rows) == per_layer + 1 and set(rows) == {7}  # every block linear, and the LM head
    rows.clear()
    with torch.enable_grad():  # training never takes the packed path
        m.logits(m(ids, causal=True)[0])
    assert rows == []


@needs_fp16
def test_packed_model_is_the_rounded_model(engines: tuple[Engine, ...]) -> None:
    """The packed engine computes what the plain engine computes with fp16-rounded weights:
    hidden states to fp32 rounding, and the same greedy tokens through the AR decoder."""
    plain, packed, _ = engines
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


def test_the_dtype_and_weight_format_follow_the_measurement(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every (dtype, format) pair is timed on a typical request; a format that changes answers
    is taken only when it beats plain weights in the default dtype by the margin (1.3x)."""
    monkeypatch.delenv("DIFFILL_WEIGHTS", raising=False)
    bf16, fp32 = torch.bfloat16, torch.float32
    speeds = {(bf16, "plain"): 1.0, (bf16, "int8"): 0.9, (fp32, "plain"): 2.0, (fp32, "w8a8"): 0.5}
    asked: list[tuple] = []
    monkeypatch.setattr(runtime, "weight_format_speeds", lambda dtypes: asked.append(dtypes) or speeds)
    monkeypatch.setattr(runtime, "bf16_is_faster", lambda: True)
    assert runtime.cpu_numerics(None) == (fp32, "w8a8")  # fp32 activations win with w8a8 weights
    assert asked[-1] == (bf16, fp32)
    speeds[(fp32, "w8a8")] = 0.8  # fastest, but under the margin: not worth the rounding
    assert runtime.cpu_numerics(None) == (bf16, "plain")
    speeds[(bf16, "int8")] = 0.4
    assert runtime.cpu_numerics(None) == (bf16, "int8")
    # a dtype the caller fixed is kept: only its formats are timed
    speeds = {(fp32, "plain"): 1.0, (fp32, "fp16"): 0.5}
    assert runtime.cpu_numerics(fp32) == (fp32, "fp16") and asked[-1] == (fp32,)
    # so does $DIFFILL_CPU_DTYPE
    monkeypatch.setenv("DIFFILL_CPU_DTYPE", "bf16")
    speeds = {(bf16, "plain"): 1.0, (bf16, "int8"): 0.5}
    assert runtime.cpu_numerics(None) == (bf16, "int8") and asked[-1] == (bf16,)
    monkeypatch.delenv("DIFFILL_CPU_DTYPE")
    # a forced fbgemm format brings its fp32 activations when no dtype was asked for
    assert runtime.cpu_numerics(None, "w8a8")[0] == fp32 or not packed_available("w8a8")


def test_a_bad_weight_format_is_refused_by_name(
    coder_dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, adapter = coder_dirs
    monkeypatch.setenv("DIFFILL_WEIGHTS", "int3")
    with pytest.raises(CheckpointError, match="DIFFILL_WEIGHTS='int3'"):
        Engine.from_pretrained(adapter, base=base, device="cpu", dtype="fp32")
    monkeypatch.delenv("DIFFILL_WEIGHTS")
    for fmt in ("fp16", "w8a8"):
        with pytest.raises(CheckpointError, match=f"weights='{fmt}'.*bfloat16"):
            Engine.from_pretrained(adapter, base=base, device="cpu", dtype="bf16", weights=fmt)


@needs_fp16
def test_a_tied_head_packs_the_embedding_and_looks_up_the_same_rounded_rows() -> None:
    from diffusion_core.model import ModelConfig, random_transformer

    cfg = ModelConfig(
        vocab_size=500, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
        intermediate_size=128, qkv_bias=True, tie_embeddings=True,
    )  # fmt: skip
    m = random_transformer(cfg, seed=3)
    ref = random_transformer(cfg, seed=3)
    m.pack("fp16")
    assert torch.equal(m.embed.weight, ref.embed.weight.half().float())  # lookups: the rounded rows
    with torch.no_grad():
        for mod in [*(x for x in ref.modules() if isinstance(x, torch.nn.Linear)), ref.embed]:
            mod.weight.copy_(mod.weight.half().float())
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.inference_mode():
        h = m(ids, causal=True)[0]
        torch.testing.assert_close(h, ref(ids, causal=True)[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m.logits(h), F.linear(h, m.embed.weight), rtol=1e-5, atol=1e-5)


@needs_w8a8
def test_a_w8a8_engine_stays_close_to_the_plain_one(engines: tuple[Engine, ...]) -> None:
    """Rounding weights and activations to 8 bits moves the next-token distribution a little and
    keeps its argmax (the README's tables measure what it costs in pass@1 on the real model)."""
    plain, _, w8a8 = engines
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3]])
    assert_next_tokens_close(plain, w8a8, ids)
