"""The DualCache sampler at its default options, where it really uses its cache.

The reference comparison in test_sampler.py runs DualCache with ``refresh_every=1``, where every
step is a full forward and the cache is never read. These tests pin the default path down: one
full forward at the start of every block and window forwards over the cache after it, windows
that see the cached context (not just themselves), and a stated token agreement with the plain
reference sampler on random models.
"""

from __future__ import annotations

import pytest
import torch
from test_sampler import CANVASES, VOCAB, family

from diffusion_core.model import ModelConfig, Transformer
from diffusion_core.sampler import SamplingOptions, reference_sample, sample_batch


def random_model(seed: int) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=VOCAB, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
        intermediate_size=128, qkv_bias=True,
    )  # fmt: skip
    return Transformer(cfg).eval()


class Spy(torch.nn.Module):
    """Wraps the model and records each forward: full (start 0, whole canvas) or window. For a
    window it also measures how far its output is from a full forward of the current canvas, and
    from the same window run alone (no context at all)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.cfg = model.cfg
        self.calls: list[tuple[str, int, int]] = []  # (kind, start, length)
        self.window_err: list[tuple[float, float]] = []  # (vs full forward, alone vs full forward)
        self._full: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @property
    def head_weight(self) -> torch.Tensor:
        return self.model.head_weight

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.logits(hidden)

    def new_cache(self, batch: int, length: int):  # noqa: ANN201
        return self.model.new_cache(batch, length)

    def forward(self, ids, positions=None, key_mask=None, cache=None, start=0):  # noqa: ANN001, ANN201
        out = self.model(ids, positions, key_mask, cache=cache, start=start)
        if key_mask is not None and ids.shape[1] == key_mask.shape[1]:
            self.calls.append(("full", start, ids.shape[1]))
            self._full = (ids, positions, key_mask)  # the sampler edits these tensors in place
        else:
            self.calls.append(("window", start, ids.shape[1]))
            full_ids, full_pos, full_mask = self._full
            t = ids.shape[1]
            truth = self.model(full_ids, full_pos, full_mask)[:, start : start + t]
            alone = self.model(ids, positions, key_mask[:, start : start + t])
            self.window_err.append((float((out - truth).abs().max()), float((alone - truth).abs().max())))
        return out


@pytest.mark.parametrize("shifted", [False, True])
def test_default_path_refreshes_once_per_block_then_uses_the_cache(shifted: bool) -> None:
    opts = SamplingOptions(block_size=8)  # the defaults (cache="dual", refresh_every=0), short blocks
    assert opts.cache == "dual" and opts.refresh_every == 0
    fam = family(shifted)
    spy = Spy(random_model(0))
    sample_batch(spy, fam, CANVASES, opts)
    shift = 1 if shifted else 0
    m0 = max(len(fam.begin_ids) + len(c.prefix) for c in CANVASES)
    block_starts = [m0 + b - shift for b in range(0, max(c.max_tokens for c in CANVASES), 8)]
    # the blocks in order, each opened by one full forward, then windows of exactly that block
    # (read one position early on a shifted family) over the cache
    blocks: list[list[tuple[str, int, int]]] = []
    for call in spy.calls:
        if call[0] == "full":
            blocks.append([])
        else:
            assert blocks, "a window forward before any full forward"
            blocks[-1].append(call)
    assert len(blocks) == len(block_starts), f"{len(blocks)} full forwards for {len(block_starts)} blocks"
    for start, windows in zip(block_starts, blocks):
        assert windows, f"block at {start} never used its cache"
        assert {(s, n) for _, s, n in windows} == {(start, 8 + shift)}


def test_a_window_forward_sees_the_cached_context() -> None:
    spy = Spy(random_model(1))
    sample_batch(spy, family(True), CANVASES, SamplingOptions(block_size=16))
    assert len(spy.window_err) >= 3
    for with_cache, alone in spy.window_err:
        # DualCache is an approximation (the context's K/V are from the block's first step), but
        # far closer to the full forward than a window that ignored the cache
        assert with_cache < 0.5 * alone, (with_cache, alone)


@pytest.mark.parametrize("block_size", [32, 8])
def test_default_path_agrees_with_the_reference(block_size: int) -> None:
    """At the default options the fast sampler may differ from the reference (the context's K/V
    are from the block's first step); over three random models, both shifts and the canvases of
    test_sampler.py it must still agree on at least 80% of the tokens. (Measured: 92-96%; a window
    that ignores the cache gives 70%.)"""
    opts = SamplingOptions(block_size=block_size)
    same = total = 0
    for seed in range(3):
        model = random_model(seed)
        for shifted in (False, True):
            fam = family(shifted)
            fast = sample_batch(model, fam, CANVASES, opts)
            for canvas, out in zip(CANVASES, fast):
                ref = reference_sample(model, fam, canvas, opts)
                same += sum(a == b for a, b in zip(ref.tokens, out.tokens))
                total += max(len(ref.tokens), len(out.tokens))
    assert total > 0
    assert same / total >= 0.8, f"{same}/{total} tokens agree with the reference"
