"""CUDA-graph window steps equal eager steps (GPU); the wrapper is transparent without CUDA."""

from __future__ import annotations

import pytest
import torch

from diffusion_core.cuda_graphs import GraphedTransformer, length_bucket
from diffusion_core.families import FamilySpec
from diffusion_core.model import ModelConfig, Transformer
from diffusion_core.sampler import Canvas, SamplingOptions, sample_batch

FAMILY = FamilySpec(name="test", shifted=True, mask_id=250, eos_ids=(251,), pad_id=252, end_ids=(251,))


def _model(device: str, dtype: torch.dtype) -> Transformer:
    cfg = ModelConfig(
        vocab_size=256, hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
        intermediate_size=256, head_dim=32, qkv_bias=True, tie_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    return Transformer(cfg).to(device, dtype).eval()


def _canvases() -> list[Canvas]:
    g = torch.Generator().manual_seed(3)
    rand = lambda n: torch.randint(0, 240, (n,), generator=g).tolist()
    return [Canvas(rand(n), rand(m), k) for n, m, k in [(40, 9, 20), (23, 30, 7)]]


def test_length_bucket() -> None:
    assert [length_bucket(n) for n in (1, 256, 257, 1100, 4096, 9000)] == [256, 256, 512, 1536, 4096, 12288]


def test_wrapper_is_transparent_on_cpu() -> None:
    """Without CUDA the wrapper only delegates: same samples as the bare model."""
    model = _model("cpu", torch.float32)
    opts = SamplingOptions(steps_per_block=3, block_size=8)
    want = sample_batch(model, FAMILY, _canvases(), opts)
    got = sample_batch(GraphedTransformer(model), FAMILY, _canvases(), opts)
    assert [o.tokens for o in got] == [o.tokens for o in want]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_graph_window_matches_eager(dtype) -> None:  # noqa: ANN001
    model = _model("cuda", dtype)
    graphed = GraphedTransformer(model)
    b, n = 2, 300
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 250, (b, n), generator=g).cuda()
    key_mask = torch.ones(b, n, dtype=torch.bool, device="cuda")
    key_mask[1, :11] = False
    positions = (key_mask.long().cumsum(-1) - 1).clamp_min(0)
    with torch.inference_mode():
        eager_cache, graph_cache = model.new_cache(b, n), graphed.new_cache(b, n)
        assert graph_cache.bucket == 512 and graph_cache.length == n
        for cache, m in ((eager_cache, model), (graph_cache, graphed)):
            m(ids, positions, key_mask, cache=cache)
            cache.write_mask = torch.ones(b, n, dtype=torch.bool, device="cuda")
            cache.write_mask[0, 200:] = False
        for start in [100, 100, 133, 180, 100]:
            ids[:, start : start + 33] = torch.randint(0, 250, (b, 33), generator=g).cuda()
            sl = slice(start, start + 33)
            want = model(ids[:, sl], positions[:, sl], key_mask, cache=eager_cache, start=start)
            got = graphed(ids[:, sl], positions[:, sl], key_mask, cache=graph_cache, start=start)
            tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
            torch.testing.assert_close(got.float(), want.float(), **tol)
            torch.testing.assert_close(graph_cache.k.float(), eager_cache.k.float(), **tol)
    assert graphed.captures == 1 and graphed.replays == 5


@pytest.mark.gpu
def test_graphed_sampler_matches_eager() -> None:
    model = _model("cuda", torch.float32)
    opts = SamplingOptions(steps_per_block=4, block_size=8)
    want = sample_batch(model, FAMILY, _canvases(), opts)
    graphed = GraphedTransformer(model)
    got = sample_batch(graphed, FAMILY, _canvases(), opts)
    assert [o.tokens for o in got] == [o.tokens for o in want]
    assert graphed.replays > 0


def _emulated(model: Transformer) -> GraphedTransformer:
    model.use_kernels = True  # interpreted Triton on the CPU
    graphed = GraphedTransformer(model)
    graphed.emulate = True
    return graphed


def test_static_buffers_match_eager_on_cpu() -> None:
    """The graph path's data flow without CUDA: pooled bucket cache, padding keys masked, start and
    write mask from static buffers. Same hidden states and cache as the eager window forward."""
    model = _model("cpu", torch.float32)
    graphed = _emulated(model)
    b, n = 2, 70
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 250, (b, n), generator=g)
    key_mask = torch.ones(b, n, dtype=torch.bool)
    key_mask[1, :5] = False
    positions = (key_mask.long().cumsum(-1) - 1).clamp_min(0)
    with torch.inference_mode():
        eager_cache, graph_cache = model.new_cache(b, n), graphed.new_cache(b, n)
        assert graph_cache.bucket == 256 and graph_cache.length == n
        graph_cache.pool_k.normal_()  # stale K/V beyond the canvas must stay masked out
        graph_cache.pool_v.normal_()
        for cache, m in ((eager_cache, model), (graph_cache, graphed)):
            m(ids, positions, key_mask, cache=cache)
            cache.write_mask = torch.ones(b, n, dtype=torch.bool)
            cache.write_mask[0, 50:] = False
        for start in [20, 41, 20]:
            ids[:, start : start + 17] = torch.randint(0, 250, (b, 17), generator=g)
            sl = slice(start, start + 17)
            want = model(ids[:, sl], positions[:, sl], key_mask, cache=eager_cache, start=start)
            got = graphed(ids[:, sl], positions[:, sl], key_mask, cache=graph_cache, start=start)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(graph_cache.k, eager_cache.k, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(graph_cache.v, eager_cache.v, rtol=1e-4, atol=1e-4)
    assert graphed.captures == 1 and graphed.replays == 3


def test_emulated_graphs_sample_like_the_reference_path() -> None:
    """End to end on the CPU: the sampler through kernels + the graph path picks the same tokens as
    the plain torch model."""
    model = _model("cpu", torch.float32)
    opts = SamplingOptions(steps_per_block=2, block_size=8)
    want = sample_batch(model, FAMILY, _canvases(), opts)
    graphed = _emulated(model)
    got = sample_batch(graphed, FAMILY, _canvases(), opts)
    assert [o.tokens for o in got] == [o.tokens for o in want]
    assert graphed.replays > 0
