"""Variable-length infilling for families that can grow and shrink their canvas (DreamOn).

Why a separate sampler: a fixed mask count is the weak spot of diffusion FIM (the model must
guess the middle's length up front). DreamOn was trained so that a masked position may become
``<|expand|>`` (it stands for two tokens) or an end token (it stands for nothing). Decoding then
starts from a few masks and lets the model resize the middle as it goes:

- each step runs a full forward over ``begin + prefix + middle + suffix + end`` (the canvas
  changes length, so there is no K/V reuse and no batching; positions are always contiguous);
- every masked position of the middle is scored (shifted families read position j from output
  j-1), and the Fast-dLLM rule commits those at or above ``tau``, at least the best one;
- a committed ``<|expand|>`` becomes two masks, unless the middle is already ``max_tokens`` long
  (then expand is banned); a committed end token deletes its position;
- it stops when no mask is left (or after a step bound, with the leftover masks dropped).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from .families import FamilySpec
from .interface import Cancelled, SamplingOptions
from .sampler import (
    CancelCheck,
    Canvas,
    SampleOutput,
    _banned,
    _generator,
    _head,
    _score,
    commit_counts,
    top_k_mask,
)


@torch.inference_mode()
def expand_sample(
    model: torch.nn.Module,
    family: FamilySpec,
    canvas: Canvas,
    opts: SamplingOptions,
    cancel: CancelCheck | None = None,
) -> SampleOutput:
    """Fill one canvas, letting the model choose the middle's length (up to ``max_tokens``)."""
    if family.expand_id is None:
        raise ValueError(f"family {family.name!r} has no expand token; use sample_batch")
    head = _head(family, canvas.prefix)
    tail = list(canvas.suffix) + list(family.end_ids)
    limit = canvas.max_tokens
    middle = [family.mask_id] * min(opts.initial_masks, limit)
    device = model.head_weight.device
    shift = 1 if family.shifted else 0
    banned = [t for t in _banned(family) if t != family.expand_id]
    end_ids = set(family.eos_ids) | {family.pad_id}
    gen = _generator(opts, device)
    uncapped = replace(opts, steps_per_block=None)  # every confident position, at least one
    # DreamOn's own bound: every position resolved at most once, each expansion at most once
    max_steps = 4 * limit + 4
    steps, logconf, count, deleted = 0, 0.0, 0, False
    while family.mask_id in middle and steps < max_steps:
        if cancel is not None and cancel():
            raise Cancelled()
        x = torch.tensor([head + middle + tail], device=device)
        h = model(x)
        steps += 1
        pos = [j for j, t in enumerate(middle) if t == family.mask_id]
        logits = model.logits(h[0, [len(head) + j - shift for j in pos]])
        logits[:, banned] = float("-inf")
        if len(middle) >= limit:
            logits[:, family.expand_id] = float("-inf")
        tok, conf = _score(logits, opts, gen)
        # the commit rule with no step cap (the canvas changes length: steps are capped above)
        n = torch.tensor([len(pos)], device=device)
        k = commit_counts(conf[None], n, n, uncapped)
        order = top_k_mask(conf[None], k)[0].nonzero().flatten().tolist()
        for i in order:
            middle[pos[i]] = int(tok[i])
            logconf += math.log(max(float(conf[i]), 1e-30))
            count += 1
        # resize right to left so earlier indices stay valid
        for j in sorted((pos[i] for i in order), reverse=True):
            if middle[j] in end_ids:
                del middle[j]
                deleted = True
            elif middle[j] == family.expand_id:
                grow = 2 if len(middle) < limit else 1
                middle[j : j + 1] = [family.mask_id] * grow
    tokens = [t for t in middle if t != family.mask_id and t not in family.special_ids]
    reason = "eos" if deleted or len(middle) < limit else "length"
    return SampleOutput(tokens, steps, reason, logconf / max(count, 1), head + middle + tail)
