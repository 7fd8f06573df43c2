"""Weight-only int8 and int4 for few-row calls (diffusion_core/weight_only.py) against their
plain references."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from diffusion_core.engine import Engine
from diffusion_core.model import ModelConfig, random_transformer
from diffusion_core.weight_only import (
    INT4_GROUP,
    MAX_ROWS,
    QUANT_KINDS,
    Int4Weight,
    Int8Weight,
    quant_available,
)

from .conftest import assert_next_tokens_close, coder_engines

KINDS = [
    pytest.param(
        kind, marks=pytest.mark.skipif(not quant_available(kind), reason=f"this torch has no {kind} kernel")
    )
    for kind in QUANT_KINDS
]
QUANT = {"int8": Int8Weight, "int4": Int4Weight}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("rows", [1, 2, MAX_ROWS])
def test_the_kernel_matches_the_dequantized_weight(rows: int, dtype: torch.dtype, kind: str) -> None:
    gen = torch.Generator().manual_seed(rows)
    w = (torch.randn(320, 96, generator=gen) * 0.05).to(dtype)
    q, values = QUANT[kind].quantize(w)
    # the stand-in is close to the original weight: about half a level (a row of 96 shares int8's
    # scale, a group of 32 int4's scale and zero), plus the rounding of the values, scale and
    # zero to the activation dtype
    level = w.float().abs().amax(1, keepdim=True) / 127
    if kind == "int4":
        g = w.float().reshape(320, 96 // INT4_GROUP, INT4_GROUP)
        level = ((g.amax(-1) - g.amin(-1)) / 15).repeat_interleave(INT4_GROUP, dim=1)
    err = (values.float() - w.float()).abs()
    assert bool((err <= 0.6 * level + w.float().abs() / 128 + 1e-6).all())
    x = torch.randn(rows, 96, generator=gen).to(dtype)
    ref = x.float() @ values.float().t()
    out = q.matmul(x).float()
    assert out.shape == (rows, 320)
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)


@pytest.mark.skipif(not quant_available("int4"), reason="this torch has no int4 kernel")
def test_int4_rows_never_depend_on_the_other_rows_of_their_call() -> None:
    """Batched requests share a call: each row's result is bitwise what it is alone."""
    gen = torch.Generator().manual_seed(3)
    q, _ = Int4Weight.quantize(torch.randn(64, 96, generator=gen).bfloat16())
    x = torch.randn(MAX_ROWS, 96, generator=gen).bfloat16()
    together = q.matmul(x)
    alone = torch.cat([q.matmul(x[i : i + 1]) for i in range(MAX_ROWS)])
    assert torch.equal(together, alone)


@pytest.fixture(scope="module")
def engines(coder_dirs: tuple[Path, Path]) -> dict[str, Engine]:
    kinds = [k for k in QUANT_KINDS if quant_available(k)]
    return dict(zip(["plain", *kinds], coder_engines(coder_dirs, "bf16", "plain", *kinds)))


@pytest.mark.parametrize("kind", KINDS)
def test_wide_calls_use_the_dequantized_weights_and_few_row_calls_the_kernel(
    engines: dict[str, Engine], kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    quant = engines[kind]
    lin = quant.model.layers[0].mlp.gate_up
    assert isinstance(lin.wq, QUANT[kind])
    one = torch.randn(1, lin.weight.shape[1]).to(lin.weight.dtype)
    with torch.inference_mode():  # both paths compute the same function
        torch.testing.assert_close(lin.wq.matmul(one), one @ lin.weight.t(), rtol=2e-2, atol=2e-2)
    calls: list[int] = []
    real = QUANT[kind].matmul
    monkeypatch.setattr(
        QUANT[kind], "matmul", lambda self, x, groups=None: calls.append(x.shape[-2]) or real(self, x, groups)
    )
    with torch.inference_mode():
        quant.model(torch.tensor([[5] * (MAX_ROWS + 1)]), causal=True)
        assert calls == []
        quant.model(torch.tensor([[5] * MAX_ROWS]), causal=True)
        assert calls and set(calls) == {MAX_ROWS}
    calls.clear()
    with torch.enable_grad():  # training never takes the quantized path
        quant.model(torch.tensor([[5]]), causal=True)
    assert calls == []


@pytest.mark.parametrize("kind", KINDS)
def test_one_row_forward_and_head_agree_with_the_wide_path(engines: dict[str, Engine], kind: str) -> None:
    """The last position's logits from a one-row cached step (the kernel) against the same
    position computed in a five-row forward (bf16 weights holding the same values)."""
    m = engines[kind].model
    ids = torch.tensor([[7, 11, 13, 17, 19]])
    with torch.inference_mode():
        wide = m.logits(m(ids, causal=True)[0, -1:])  # 5 rows: bf16 path; head on 1 row: kernel
        cache = m.new_cache(1, 8)
        mask = torch.ones(1, 1, 4, 8, dtype=torch.bool).tril()
        m(ids[:, :4], cache=cache, start=0, attn_mask=mask)
        step_mask = torch.zeros(1, 1, 1, 8, dtype=torch.bool)
        step_mask[..., :5] = True
        narrow = m.logits(m(ids[:, 4:], cache=cache, start=4, attn_mask=step_mask)[0])
    torch.testing.assert_close(narrow, wide, rtol=0.05, atol=0.05)
    assert int(narrow.argmax()) == int(wide.argmax())


@pytest.mark.parametrize("kind", KINDS)
def test_the_quantized_model_stays_close_to_the_original(engines: dict[str, Engine], kind: str) -> None:
    """Weight-only int8 / int4 approximate the bf16 weights: the next-token distribution of a
    prompt moves by little (total variation) and keeps its most likely token."""
    plain, quant = engines["plain"], engines[kind]
    assert quant.about["cpu_weights"]["format"] == kind
    assert plain.about["cpu_weights"] == {"format": "plain", "added_mb": 0.0}
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    assert_next_tokens_close(plain, quant, ids, max_tv=0.05 if kind == "int8" else 0.1)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("kind", KINDS)
def test_the_lm_head_stays_8_bit_or_exact(kind: str, tied: bool) -> None:
    """A tied head is the embedding, whose lookups must stay exact; an int4 head cost quality, so
    int4 quantizes the blocks only (load_coder packs its head in 8 bits, runtime.head_format)."""
    cfg = ModelConfig(
        vocab_size=256, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=96,
        tie_embeddings=tied,
    )  # fmt: skip
    model = random_transformer(cfg, seed=5, dtype=torch.bfloat16).eval()
    embedding = model.embed.weight.detach().clone()
    assert model.quantize(kind) > 0
    assert torch.equal(model.embed.weight, embedding) and not hasattr(model.embed, "wq")
    assert all(hasattr(m, "wq") for blk in model.layers for m in blk.modules() if isinstance(m, nn.Linear))
    if not tied:
        assert hasattr(model.lm_head, "wq") == (kind == "int8")


def test_an_int4_model_packs_its_head_in_w8a8_where_that_is_offered(engines: dict[str, Engine]) -> None:
    from diffusion_core.runtime import _offered, head_format

    if "int4" not in engines:
        pytest.skip("this torch has no int4 kernel")
    head = engines["int4"].model.lm_head
    assert not hasattr(head, "wq")
    want = "w8a8" if _offered("w8a8", torch.bfloat16) else None
    assert head_format("int4", torch.bfloat16) == want and head_format("int8", torch.bfloat16) is None
    assert (getattr(head, "packed", None) is not None) == (want is not None)


@pytest.mark.parametrize("kind", QUANT_KINDS)
def test_a_weight_only_format_can_be_forced(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusion_core.runtime import cpu_numerics

    monkeypatch.setenv("DIFFILL_WEIGHTS", kind)
    if quant_available(kind):
        assert cpu_numerics(torch.bfloat16) == (torch.bfloat16, kind)
    else:
        with pytest.raises(ValueError, match=kind):
            cpu_numerics(torch.bfloat16)
    monkeypatch.setenv("DIFFILL_WEIGHTS", "plain")
    assert cpu_numerics(torch.bfloat16) == (torch.bfloat16, "plain")


def test_the_measured_choice_never_picks_int4() -> None:
    """int4 costs about a point of pass@1 and a load-time timing cannot see its gain (runtime's
    ``_offered``): it runs only when asked for."""
    from diffusion_core import runtime

    assert not runtime._offered("int4", torch.bfloat16) and not runtime._offered("int4", torch.float32)
    assert all(fmt != "int4" for _, fmt in runtime.weight_format_speeds((torch.bfloat16,), repeats=1))
