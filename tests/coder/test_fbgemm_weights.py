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


def record_packed_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The row count of every packed matmul from now on (the test's calls still run)."""
    rows: list[int] = []
    real = PackedWeight.matmul
    monkeypatch.setattr(
        PackedWeight, "matmul", lambda self, x, groups=None: rows.append(x.shape[-2]) or real(self, x, groups)
    )
    return rows


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
    rows = record_packed_rows(monkeypatch)
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
    # a forced fp16 format brings its fp32 activations when no dtype was asked for; w8a8 also
    # runs with bf16 (its few-row calls), so it keeps the dtype measured faster
    assert runtime.cpu_numerics(None, "fp16")[0] == fp32 or not packed_available("fp16")
    assert runtime.cpu_numerics(None, "w8a8") == (bf16, "w8a8") or not packed_available("w8a8")


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


@needs_w8a8
@pytest.mark.parametrize("rows", [1, 3, fbgemm_weights.FEW_ROWS])
def test_w8a8_with_bf16_rows_is_its_plain_reference(rows: int) -> None:
    """bf16 rows go through fbgemm as fp32 and come back in bf16: the same w8a8 rounding."""
    gen = torch.Generator().manual_seed(rows)
    w = torch.randn(300, 96, generator=gen) * 0.05
    x = (torch.randn(rows, 96, generator=gen) * 3).bfloat16()
    packed, _ = pack_weight(w.bfloat16(), "w8a8")
    out = packed.matmul(x)
    assert out.dtype == torch.bfloat16 and out.shape == (rows, 300)
    # exactly the fp32 call (the test above: its plain reference), rounded to bf16
    assert torch.equal(out, packed.matmul(x.float()).bfloat16())
    ref = w8a8_reference(x.float(), w.bfloat16().float(), reduce_range=not fbgemm_weights.has_vnni())
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=2e-2)
    assert (F.linear(x.float(), w) - out.float()).abs().max() > 1e-2  # the rounding is real


@pytest.fixture(scope="module")
def bf16_engines(coder_dirs: tuple[Path, Path]) -> tuple[Engine, ...]:
    return coder_engines(coder_dirs, "bf16", "plain", "w8a8")


@needs_w8a8
def test_with_bf16_activations_only_few_row_calls_take_w8a8(
    bf16_engines: tuple[Engine, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a CPU with AMX the prompt runs fastest on the bf16 weights, the decoding steps on w8a8:
    calls of at most FEW_ROWS rows take the packed weight, wider ones the bf16 weight, which
    stays as it is; the engine stays close to the plain bf16 one."""
    plain, w8a8 = bf16_engines
    m = w8a8.model
    assert w8a8.about["cpu_weights"]["format"] == "w8a8" and m.head_weight.dtype == torch.bfloat16
    ref = dict(plain.model.named_parameters())
    assert all(torch.equal(p, ref[name]) for name, p in m.named_parameters())
    rows = record_packed_rows(monkeypatch)
    linears = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)]
    per_layer = len(linears) - (m.lm_head is not None)
    few, wide = fbgemm_weights.FEW_ROWS, fbgemm_weights.FEW_ROWS + 1
    with torch.inference_mode():
        for n in (1, few, wide):
            rows.clear()
            h = m(torch.arange(5, 5 + n)[None], causal=True)[0]
            m.logits(h[-1:])  # the head reads one row: packed whatever the prompt's width
            assert rows == ([n] * per_layer if n <= few else []) + [1]
    monkeypatch.undo()
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3]])
    assert_next_tokens_close(plain, w8a8, ids, max_tv=0.1)


@needs_w8a8
def test_the_measurement_offers_w8a8_with_bf16_where_the_cpu_has_vnni() -> None:
    speeds = runtime.weight_format_speeds((torch.bfloat16,))
    assert ((torch.bfloat16, "w8a8") in speeds) == fbgemm_weights.has_vnni()
    assert all(v > 0 for v in speeds.values())


@needs_w8a8
def test_in_a_batch_each_requests_bf16_rows_take_the_path_they_take_alone() -> None:
    """With bf16 activations a batch's call can be wide (another request's prompt) while one
    request's rows are a few-row step: that request's rows still take w8a8, rounded as its own,
    and whatever the other request brings (3 rows or 40, any values) they do not move by a bit."""
    gen = torch.Generator().manual_seed(11)
    lin = torch.nn.Linear(96, 300, bias=False).bfloat16()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(300, 96, generator=gen) * 0.05)
    lin.packed = pack_weight(lin.weight, "w8a8")[0]
    mine = (torch.randn(3, 96, generator=gen) * 3).bfloat16()

    def call(theirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([theirs[:1], mine, theirs[1:]])[None]
        groups = torch.tensor([1] + [0] * 3 + [1] * (len(theirs) - 1))
        with torch.inference_mode():
            q = fbgemm_weights.use_packed(lin, x, groups)
            assert q is not None
            return q.matmul(x, groups)[0], groups

    few, _ = call((torch.randn(3, 96, generator=gen) * 0.5).bfloat16())
    wide_theirs = (torch.randn(40, 96, generator=gen) * 0.5).bfloat16()
    wide, groups = call(wide_theirs)
    assert torch.equal(wide[1:4], few[1:4])  # the same rows for me, however many the other sends
    assert torch.equal(call(wide_theirs * 40)[0][1:4], wide[1:4])
    with torch.inference_mode():  # mine: the w8a8 rounding of my own call
        torch.testing.assert_close(wide[1:4].float(), lin.packed.matmul(mine).float(), rtol=1e-2, atol=2e-2)
        theirs_rows = groups == 1
        torch.testing.assert_close(wide[theirs_rows], F.linear(wide_theirs, lin.weight), rtol=1e-2, atol=1e-2)
    # a call of only wide requests runs bf16 throughout
    assert fbgemm_weights.use_packed(lin, wide_theirs[None], torch.zeros(40, dtype=torch.long)) is None
