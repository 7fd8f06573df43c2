"""The model with kernels on (Triton, interpreted here) equals the model with kernels off."""

from __future__ import annotations

import pytest
import torch

from diffill_kernels import _common
from diffill_kernels.lm_head import lm_head_stats, stats_from_logits
from diffusion_core.model import ModelConfig, Transformer, random_transformer

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
        rows = torch.tensor([0, 3, 16, 20, 33], device=device)
        stats = lm_head_stats(win[True], model.head_weight, rows)
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


class _LowRankAdapter:
    """A stand-in for Diffill-Coder's adapter (the model's RowAdapter protocol): a fixed random
    low-rank delta on every linear and an embedding for the mask token."""

    mask_id = 299

    def __init__(self, model: Transformer) -> None:
        g = torch.Generator().manual_seed(3)
        blk = model.layers[0]
        self.w = {}
        for name, lin in (
            ("qkv", blk.attn.qkv),
            ("o_proj", blk.attn.o_proj),
            ("gate_up", blk.mlp.gate_up),
            ("down_proj", blk.mlp.down_proj),
        ):
            a = torch.randn(lin.in_features, 4, generator=g) * 0.1
            self.w[name] = (a, torch.randn(4, lin.out_features, generator=g) * 0.1)
        self.emb = torch.randn(model.cfg.hidden_size, generator=g)

    def delta(self, layer: int, name: str, x: torch.Tensor) -> torch.Tensor:
        a, b = (t.to(x.device) for t in self.w[name])
        return (x.float() @ a @ b).to(x.dtype) * (layer + 1)

    def embed_masks(self, ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.where((ids == self.mask_id)[..., None], self.emb.to(x), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_the_coder_step_matches_with_kernels_on(dtype, device) -> None:  # noqa: ANN001
    """Diffill-Coder's calls (a causal context into the cache, then committed rows plus a masked
    window with the adapter under an attention pattern) run the same forward: with kernels on, the
    norms, RoPE + cache write and SwiGLU are fused and the patterned attention is SDPA."""
    from diffusion_core.coder.sampler import step_mask
    from diffusion_core.model import Adapted

    model = _model("qwen3", dtype, device)
    adapter = _LowRankAdapter(model)
    ctx = torch.randint(0, 290, (1, 30), generator=torch.Generator().manual_seed(4)).to(device)
    step = torch.tensor([[7, 8] + [adapter.mask_id] * 5], device=device)
    outs, caches = {}, {}
    for on in (False, True):
        cache = caches[on] = model.new_cache(1, 40)
        _run(model, on, ctx, cache=cache, start=0, attn_mask=step_mask(0, 30, 0, device))
        mask = step_mask(30, 2, 5, device)
        outs[on] = _run(model, on, step, cache=cache, start=30, attn_mask=mask, adapted=Adapted(adapter, 2))
    torch.testing.assert_close(outs[True].float(), outs[False].float(), **TOL[dtype])
    torch.testing.assert_close(caches[True].k.float(), caches[False].k.float(), **TOL[dtype])
    # the adapter really acted on the window rows (and only there)
    with torch.inference_mode():
        model.use_kernels = False
        plain = model(step, cache=model.new_cache(1, 40), start=30, attn_mask=mask)
    assert not torch.allclose(plain[0, 2:].float(), outs[False][0, 2:].float(), atol=1e-2)


def test_autograd_never_runs_the_kernels(device) -> None:  # noqa: ANN001
    """Training's forward: kernels forced on, but they have no backward, so with autograd on every
    op runs its reference (and gradients reach the weights)."""
    model = _model("qwen2", torch.float32, device)
    model.use_kernels = True
    ids, positions, key_mask = _canvas(2, 12, device)
    before = sum(_common.launches.values())
    model(ids, positions, key_mask).float().pow(2).mean().backward()
    assert sum(_common.launches.values()) == before
    assert model.layers[0].mlp.gate_up.weight.grad is not None


def test_a_narrow_attention_mask_reads_only_the_filled_cache() -> None:
    """A cached call whose mask ends at its last row gives what the full-width mask (keys past it
    masked) gives: the forward reads only the keys the mask covers."""
    cfg = ModelConfig(
        vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64
    )
    m = random_transformer(cfg, seed=5)
    ids = torch.tensor([[3, 9, 27, 81, 5, 15]])
    outs = []
    with torch.no_grad():
        for width in (6, 16):
            cache = m.new_cache(1, 16)
            causal = torch.ones(5, 5, dtype=torch.bool).tril()
            full = torch.zeros(1, 1, 5, width, dtype=torch.bool)
            full[0, 0, :, :5] = causal
            m(ids[:, :5], cache=cache, start=0, attn_mask=full)
            step = torch.zeros(1, 1, 1, width, dtype=torch.bool)
            step[..., :6] = True
            outs.append(m(ids[:, 5:], cache=cache, start=5, attn_mask=step))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-6, atol=1e-6)
