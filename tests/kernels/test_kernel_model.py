"""The model with kernels on (Triton, interpreted here) equals the model with kernels off."""

from __future__ import annotations

import pytest
import torch

from diffill_kernels import _common
from diffill_kernels.lm_head import stats_from_logits
from diffusion_core.model import ModelConfig, Transformer

CONFIGS = {
    "qwen2": dict(qkv_bias=True, tie_embeddings=True),  # Open-dCoder / Dream style
    "qwen3": dict(qk_norm=True, num_kv_heads=1),  # CoDA style: QK RMSNorm, GQA 4
}


def _model(kind: str, dtype: torch.dtype, device: torch.device) -> Transformer:
    shape = dict(
        vocab_size=300, hidden_size=256, num_layers=2, num_heads=4, num_kv_heads=2,
        intermediate_size=384, head_dim=64, rope_theta=10000.0,
    )  # fmt: skip
    cfg = ModelConfig(**{**shape, **CONFIGS[kind]})
    torch.manual_seed(0)
    model = Transformer(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)  # not all ones: the fused norms must really apply the weight
            elif name.endswith("bias"):
                p.normal_(0, 0.5)
    return model.to(device, dtype).eval()


def _canvas(b: int, t: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 300, (b, t), generator=g)
    key_mask = torch.ones(b, t, dtype=torch.bool)
    key_mask[1, :7] = False  # row 1 is left-padded, as the batched sampler pads
    positions = (key_mask.long().cumsum(-1) - 1).clamp_min(0)
    return ids.to(device), positions.to(device), key_mask.to(device)


def _run(model: Transformer, on: bool, *args, **kwargs) -> torch.Tensor:  # noqa: ANN002, ANN003
    model.use_kernels = on
    before = sum(_common.launches.values())
    with torch.inference_mode():
        out = model(*args, **kwargs)
    ran = sum(_common.launches.values()) - before
    assert (ran > 0) == on, "kernels on must launch Triton kernels; off must not"
    return out


TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.bfloat16: dict(rtol=5e-2, atol=5e-2)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", list(CONFIGS))
def test_full_canvas_and_window_match(kind, dtype, device) -> None:  # noqa: ANN001
    model = _model(kind, dtype, device)
    b, t = 2, 40
    ids, positions, key_mask = _canvas(b, t, device)

    # whole canvas, no cache
    ref = _run(model, False, ids, positions, key_mask)
    got = _run(model, True, ids, positions, key_mask)
    torch.testing.assert_close(got.float(), ref.float(), **TOL[dtype])

    # whole canvas into a cache, then a 17-token window (DualCache step) with a write mask
    caches = {on: model.new_cache(b, t) for on in (False, True)}
    for on, cache in caches.items():
        _run(model, on, ids, positions, key_mask, cache=cache)
        cache.write_mask = torch.ones(b, t, dtype=torch.bool, device=device)
        cache.write_mask[0, 25:] = False  # row 0's suffix stays frozen
    ids2 = ids.clone()
    ids2[:, 12:29] = torch.randint(0, 300, (b, 17), generator=torch.Generator().manual_seed(2)).to(device)
    win = {
        on: _run(model, on, ids2[:, 12:29], positions[:, 12:29], key_mask, cache=caches[on], start=12)
        for on in (False, True)
    }
    torch.testing.assert_close(win[True].float(), win[False].float(), **TOL[dtype])
    torch.testing.assert_close(caches[True].k.float(), caches[False].k.float(), **TOL[dtype])
    torch.testing.assert_close(caches[True].v.float(), caches[False].v.float(), **TOL[dtype])

    # the LM-head epilogue agrees with full logits on the window's rows
    if dtype == torch.float32:
        from diffusion_core.fast_path import token_stats

        rows = torch.tensor([0, 3, 16, 20, 33], device=device)
        stats = token_stats(model, win[True], rows)
        ref_stats = stats_from_logits(model.logits(win[True].reshape(-1, 256)[rows]))
        assert torch.equal(stats.token, ref_stats.token)
        torch.testing.assert_close(stats.prob, ref_stats.prob, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(stats.entropy, ref_stats.entropy, rtol=1e-4, atol=1e-4)


def test_default_switch_is_cuda_only() -> None:
    model = _model("qwen2", torch.float32, torch.device("cpu"))
    assert model.use_kernels is None
    ids, positions, key_mask = _canvas(2, 9, torch.device("cpu"))
    before = sum(_common.launches.values())
    with torch.inference_mode():
        model(ids, positions, key_mask)
    assert sum(_common.launches.values()) == before  # CPU input: the reference path
