"""The whole sampler at its default options with the kernels on equals it with the kernels off.

The per-op and per-forward kernel tests compare hidden states within a tolerance; what a user sees
is tokens. Here the batched DualCache sampler runs end to end both ways (fp32, Triton's interpreter
without a GPU) on a random model, a shifted and an unshifted family, padded rows in one batch.
"""

from __future__ import annotations

import pytest
import torch

from diffill_kernels import _common
from diffusion_core.families import FamilySpec
from diffusion_core.model import ModelConfig, Transformer
from diffusion_core.sampler import Canvas, SamplingOptions, sample_batch

VOCAB, MASK, EOS, BEGIN = 300, 299, 0, 1

CANVASES = [
    Canvas(list(range(5, 25)), list(range(40, 47)), 24),
    Canvas([7, 8], [9], 9),
    Canvas([], [], 5),
]


def _family(shifted: bool) -> FamilySpec:
    return FamilySpec(
        "test", shifted=shifted, mask_id=MASK, eos_ids=(EOS,), pad_id=EOS,
        begin_ids=(BEGIN,), special_ids=frozenset({EOS, BEGIN, MASK}),
    )  # fmt: skip


def _model(device: torch.device) -> Transformer:
    cfg = ModelConfig(
        vocab_size=VOCAB, hidden_size=128, num_layers=2, num_heads=2, num_kv_heads=1,
        intermediate_size=256, head_dim=64, qkv_bias=True,
    )  # fmt: skip
    torch.manual_seed(3)
    model = Transformer(cfg)
    with torch.no_grad():
        model.embed.weight.mul_(8.0)  # peaked predictions, so greedy choices are not near-ties
    return model.to(device).eval()


@pytest.mark.parametrize("shifted", [False, True], ids=["unshifted", "shifted"])
def test_sampler_tokens_with_kernels_on_equal_kernels_off(shifted: bool, device, monkeypatch) -> None:  # noqa: ANN001
    model = _model(device)
    fam = _family(shifted)
    opts = SamplingOptions(block_size=8)  # default options, short blocks: several block refreshes
    outs = {}
    for on in (False, True):
        model.use_kernels = on
        monkeypatch.setenv("DIFFILL_KERNELS", "1" if on else "0")  # the LM-head epilogue too
        before = sum(_common.launches.values())
        outs[on] = sample_batch(model, fam, CANVASES, opts)
        assert (sum(_common.launches.values()) > before) == on
    assert [o.tokens for o in outs[True]] == [o.tokens for o in outs[False]]
    assert [o.steps for o in outs[True]] == [o.steps for o in outs[False]]
    assert sum(len(o.tokens) for o in outs[False]) >= 10  # the comparison covers real tokens
