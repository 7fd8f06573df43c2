"""Greedy left-to-right decoding of the base model with a KV cache: the peer Diffill-Coder is
measured against (what a user of the same weights would run without the adapter).

Same prompt, same banned tokens, same end tokens and stop rule as the diffusion sampler, so the
two differ only in how many tokens a forward commits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..families import FamilySpec
from ..interface import Cancelled
from ..sampler import Canvas, SampleOutput, _banned
from .prefix_cache import PrefixCache
from .sampler import context_ids, lend_cache, step_mask

__all__ = ["ar_sample"]


@torch.inference_mode()
def ar_sample(
    model: torch.nn.Module,
    family: FamilySpec,
    canvas: Canvas,
    cancel: Callable[[], bool] | None = None,
    stop: Callable[[list[int]], bool] | None = None,
    prefix_cache: PrefixCache | None = None,
) -> SampleOutput:
    """One token per forward: the prompt once (what ``prefix_cache`` does not already hold),
    then each new token appended to the cache."""
    n = canvas.max_tokens
    ctx = context_ids(family, canvas.prefix, canvas.suffix)
    cache, reused = lend_cache(model, prefix_cache, ctx, len(ctx) + n + 1, canvas.cache_scope)
    out = SampleOutput([], 0, "length")
    try:
        out = _decode(model, family, ctx, n, cache, reused, cancel, stop)
        return out
    finally:
        if prefix_cache is not None:
            prefix_cache.put(ctx if out.steps else ctx[:reused], cache, canvas.cache_scope)


def _decode(model, family, ctx, n, cache, reused, cancel, stop) -> SampleOutput:  # noqa: ANN001
    device = model.head_weight.device
    banned = torch.tensor(_banned(family), device=device)
    ends = set(family.eos_ids) | {family.pad_id}
    out: list[int] = []
    pending, start, forwards = ctx[reused:], reused, 0
    reason = "length"
    while len(out) < n:
        if cancel is not None and cancel():
            raise Cancelled()
        mask = step_mask(start, len(pending), 0, device)
        h = model(torch.tensor([pending], device=device), cache=cache, start=start, attn_mask=mask)
        forwards += 1
        start += len(pending)
        logits = model.logits(h[0, -1])
        logits[banned] = float("-inf")
        tok = int(logits.argmax())
        if tok in ends:
            reason = "eos"
            break
        out.append(tok)
        if stop is not None and stop(out):
            reason = "stop"
            break
        pending = [tok]
    return SampleOutput(out, forwards, reason)
