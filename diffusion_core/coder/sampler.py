"""Block diffusion on a causal context: Diffill-Coder's sampler.

The context is Qwen's own FIM prompt, ``<|fim_prefix|>P<|fim_suffix|>S<|fim_middle|>``, encoded
causally by the untouched base model once; its K/V never depends on the middle, so it is reused
exactly by every step (no DualCache approximation). On top of it sits a window of middle
positions, masked or already committed, that the adapter denoises: the window attends to the
whole context and to itself in both directions. Logits are shifted (position j is read from
output j-1), so the leftmost masked position — the *frontier* — is always read from the last
context token, i.e. predicted by the base model itself, while the adapter predicts the positions
after it in parallel.

One forward per step does both jobs: its first rows are the tokens committed since the last step
at the frontier (run through the base, causally, appended to the context K/V), the rest are the
window (run with the adapter). After it, the frontier takes the base's token and every other
masked window position whose confidence reaches tau takes the adapter's. At quality 1 only the
frontier commits, so the output is the base model's greedy decoding, token for token.

Why a sliding window rather than fixed blocks: the adapter always sees the frontier at the
window's start, the same situation it was trained on, and every forward commits at least one
token.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..families import FamilySpec
from ..interface import Cancelled, SamplingOptions
from ..kv_cache import KVCache
from ..model import Adapted, RowAdapter
from ..sampler import Canvas, SampleOutput, _banned, _generator, _score

__all__ = ["CoderStats", "coder_sample", "context_ids", "step_mask"]

CancelCheck = Callable[[], bool]
StopCheck = Callable[[list[int]], bool]


def context_ids(family: FamilySpec, prefix: list[int], suffix: list[int]) -> list[int]:
    """Qwen's PSM prompt: ``<|fim_prefix|>`` prefix ``<|fim_suffix|>`` suffix ``<|fim_middle|>``."""
    assert family.fim_ids is not None
    fp, fs, fm = family.fim_ids
    return [fp, *prefix, fs, *suffix, fm]


def step_mask(start: int, pending: int, window: int, length: int, device: torch.device) -> torch.Tensor:
    """Attention mask [1, 1, pending + window, length] for one step's rows at positions
    ``[start, start + pending + window)``: the pending rows are causal (they become context and
    must never see the window), the window rows see every key up to the window's end."""
    keys = torch.arange(length, device=device)
    qpos = torch.arange(start, start + pending + window, device=device)
    causal = keys[None, :] <= qpos[:, None]
    visible = keys[None, :] < start + pending + window
    in_window = (torch.arange(pending + window, device=device) >= pending)[:, None]
    return torch.where(in_window, visible, causal)[None, None]


@dataclass
class CoderStats:
    forwards: int = 0
    base_commits: int = 0  # frontier tokens (the base model's own choice)
    adapter_commits: int = 0  # window tokens committed ahead of the frontier


@torch.inference_mode()
def coder_sample(
    model: torch.nn.Module,
    adapter: RowAdapter,
    family: FamilySpec,
    canvas: Canvas,
    opts: SamplingOptions,
    window: int,
    cancel: CancelCheck | None = None,
    stop: StopCheck | None = None,
    stats: CoderStats | None = None,
) -> SampleOutput:
    """Fill one middle of at most ``canvas.max_tokens`` tokens. ``stop`` is asked about the
    committed run from the start of the middle whenever it grows; True ends the completion there
    (the engine's stop strings, e.g. a newline for a single-line completion)."""
    stats = stats if stats is not None else CoderStats()
    device = model.head_weight.device
    n = canvas.max_tokens
    if n == 0:
        return SampleOutput([], 0, "length")
    ctx = context_ids(family, canvas.prefix, canvas.suffix)
    cache: KVCache = model.new_cache(1, len(ctx) + n + 1)
    banned = torch.tensor(_banned(family), device=device)
    end_ids = set(family.eos_ids) | {family.pad_id}
    gen = _generator(opts, device)
    ahead = opts.quality < 1.0  # quality 1: the frontier only, i.e. the base's greedy decoding
    window = max(1, min(window, opts.block_size))

    mid: list[int | None] = [None] * n  # committed middle tokens (None = masked)
    end = n  # the middle is mid[:end]; a committed end token moves it in
    start = 0  # absolute position of the first row of the next forward
    pending = list(ctx)  # tokens to append to the context in the next forward
    b0 = 0  # the frontier: the first middle position after the context and ``pending``
    logconf, count = 0.0, 0
    stop_reason = "length"
    while True:
        if cancel is not None and cancel():
            raise Cancelled()
        b1 = min(b0 + window, end)
        block = [family.mask_id if t is None else t for t in mid[b0:b1]]
        ids = torch.tensor([pending + block], device=device)
        p = len(pending)
        mask = step_mask(start, p, len(block), cache.length, device)
        h = model(ids, cache=cache, start=start, attn_mask=mask, adapted=Adapted(adapter, rows_from=p))
        stats.forwards += 1
        start += p

        # the frontier b0 from the base (the last context row); b0+1.. from the window rows
        todo = [j for j in range(b0 + 1, b1) if mid[j] is None] if ahead else []
        rows = [p - 1] + [p + (j - b0) - 1 for j in todo]
        logits = model.logits(h[0, rows])
        logits[:, banned] = float("-inf")
        tok, conf = _score(logits, opts, gen)
        tok, conf = tok.tolist(), conf.tolist()
        mid[b0] = tok[0]
        stats.base_commits += 1
        committed = [(b0, conf[0])]
        for j, t, c in zip(todo, tok[1:], conf[1:]):
            if c >= opts.tau:
                mid[j] = t
                committed.append((j, c))
                stats.adapter_commits += 1
        for _, c in committed:
            logconf += math.log(max(c, 1e-30))
            count += 1
        first_end = next((j for j in range(b0, end) if mid[j] in end_ids), None)
        if first_end is not None:
            end = first_end
            mid[end + 1 :] = [None] * (n - end - 1)
        # the committed run from the frontier: the next forward appends it to the context
        run = b0
        while run < end and mid[run] is not None:
            run += 1
        if stop is not None and stop([t for t in mid[:run] if t is not None]):
            end, stop_reason = run, "stop"
        if run >= end:
            if end < n and stop_reason != "stop":
                stop_reason = "eos"
            break
        pending = [t for t in mid[b0:run] if t is not None]
        b0 = run

    toks = [t for t in mid[:end] if t is not None and t not in family.special_ids]
    return SampleOutput(toks, stats.forwards, stop_reason, logconf / max(count, 1))
