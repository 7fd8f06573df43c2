"""Weight-only int8 for few-row calls (diffusion_core/int8.py) against its plain reference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffusion_core import int8
from diffusion_core.engine import Engine
from diffusion_core.int8 import MAX_ROWS, Int8Weight, int8_available

from .conftest import assert_next_tokens_close, coder_engines

pytestmark = pytest.mark.skipif(not int8_available(), reason="this torch has no weight-only int8 kernel")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("rows", [1, 2, MAX_ROWS])
def test_int8_matmul_matches_the_dequantized_weight(rows: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(rows)
    w = (torch.randn(320, 96, generator=gen) * 0.05).to(dtype)
    q = Int8Weight.quantize(w)
    # the stand-in is close to the original weight (one scale per row of 96)
    err = (q.dequantize().float() - w.float()).abs().max() / w.float().abs().max()
    assert err <= 1 / 254 + 1e-3
    x = torch.randn(rows, 96, generator=gen).to(dtype)
    ref = x.float() @ q.dequantize().float().t()
    out = q.matmul(x).float()
    assert out.shape == (rows, 320)
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)


@pytest.fixture(scope="module")
def engines(coder_dirs: tuple[Path, Path]) -> tuple[Engine, ...]:
    return coder_engines(coder_dirs, "bf16", "plain", "int8")


def test_wide_calls_use_the_dequantized_weights_and_few_row_calls_the_kernel(
    engines: tuple[Engine, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, quant = engines
    lin = quant.model.layers[0].mlp.gate_up
    assert torch.equal(lin.weight, lin.int8.dequantize())  # both paths compute the same function
    calls: list[int] = []
    real = Int8Weight.matmul
    monkeypatch.setattr(
        Int8Weight, "matmul", lambda self, x, groups=None: calls.append(x.shape[-2]) or real(self, x, groups)
    )
    with torch.inference_mode():
        quant.model(torch.tensor([[5] * (MAX_ROWS + 1)]), causal=True)
        assert calls == []
        quant.model(torch.tensor([[5] * MAX_ROWS]), causal=True)
        assert calls and set(calls) == {MAX_ROWS}
    calls.clear()
    with torch.enable_grad():  # training never takes the int8 path
        quant.model(torch.tensor([[5]]), causal=True)
    assert calls == []


def test_one_row_forward_and_head_agree_with_the_wide_path(engines: tuple[Engine, Engine]) -> None:
    """The last position's logits from a one-row cached step (int8 kernel) against the same
    position computed in a five-row forward (bf16 weights holding the same values)."""
    _, quant = engines
    m = quant.model
    ids = torch.tensor([[7, 11, 13, 17, 19]])
    with torch.inference_mode():
        wide = m.logits(m(ids, causal=True)[0, -1:])  # 5 rows: bf16 path; head on 1 row: int8
        cache = m.new_cache(1, 8)
        mask = torch.ones(1, 1, 4, 8, dtype=torch.bool).tril()
        m(ids[:, :4], cache=cache, start=0, attn_mask=mask)
        step_mask = torch.zeros(1, 1, 1, 8, dtype=torch.bool)
        step_mask[..., :5] = True
        narrow = m.logits(m(ids[:, 4:], cache=cache, start=4, attn_mask=step_mask)[0])
    torch.testing.assert_close(narrow, wide, rtol=0.05, atol=0.05)
    assert int(narrow.argmax()) == int(wide.argmax())


def test_the_quantized_model_stays_close_to_the_original(engines: tuple[Engine, Engine]) -> None:
    """Per-row int8 is an approximation of the bf16 weights: the next-token distribution of a
    prompt moves by little (total variation) and keeps its most likely token."""
    plain, quant = engines
    assert quant.about["cpu_weights"]["format"] == "int8" and quant.about["cpu_weights"]["added_mb"] > 0
    assert plain.about["cpu_weights"] == {"format": "plain", "added_mb": 0.0}
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    assert_next_tokens_close(plain, quant, ids)


def test_the_int8_choice_can_be_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusion_core.runtime import cpu_numerics

    monkeypatch.setenv("DIFFILL_WEIGHTS", "int8")
    assert cpu_numerics(torch.bfloat16) == (torch.bfloat16, "int8")
    monkeypatch.setenv("DIFFILL_WEIGHTS", "plain")
    assert cpu_numerics(torch.bfloat16) == (torch.bfloat16, "plain")
    assert int8.MAX_ROWS == MAX_ROWS
