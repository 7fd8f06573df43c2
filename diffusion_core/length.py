"""How many masks a middle gets: the model predicts it from one forward.

Why: a fixed mask count is diffusion FIM's weak spot. The published open models lose more to it
than to their size (Open-dCoder-0.5B: 32.5 single-line pass@1 with a fixed count, 77.4 with the
true one), and a small model told "32 masks" tends to write 32 tokens' worth or nothing.

A model trained to pad its middle with end tokens, with mask counts drawn independently of the
middle's length (``mask_counts="independent"`` in ``training/train.py``), already knows the
length: with every position masked, its probability of an end token at middle position j is the
probability that the middle is at most j tokens long. The first j where that reaches one half is
the median of its length estimate. The middle is then decoded with exactly that many masks (the
model may still end it earlier). One extra full forward per request, batched over canvases.

Models trained otherwise (a mask count that hints at the length, or no end padding at all) give
a biased or meaningless estimate; for them this is an option to measure, not a default.
"""

from __future__ import annotations

import torch

from .families import FamilySpec
from .interface import SamplingOptions
from .sampler import Canvas, _banned, layout

__all__ = ["end_probabilities", "predict_lengths", "resolve_length"]


def resolve_length(opts: SamplingOptions, family: FamilySpec) -> str:
    """The length policy a request runs with ("auto" made concrete for this model)."""
    if opts.length == "auto":
        return family.native_length
    if opts.length == "expand" and family.expand_id is None:
        raise ValueError(
            f"length='expand' needs a model with an expand token (DreamOn); {family.name!r} has none"
        )
    return opts.length


@torch.inference_mode()
def end_probabilities(
    model: torch.nn.Module, family: FamilySpec, canvases: list[Canvas]
) -> list[list[float]]:
    """P(end token) at each middle position of each canvas with all ``max_tokens`` positions
    masked, among the tokens the sampler may commit (the mask and other specials excluded)."""
    rows = [(c, c.max_tokens) for c in canvases]
    device = model.head_weight.device
    ids, key_mask, positions, m0 = layout(family, rows)
    max_n = max(n for _, n in rows)
    if max_n == 0:
        return [[] for _ in canvases]
    shift = 1 if family.shifted else 0
    hidden = model(ids.to(device), positions.to(device), key_mask.to(device))
    hidden = hidden[:, m0 - shift : m0 - shift + max_n]
    logits = model.logits(hidden)
    logits[..., _banned(family)] = float("-inf")
    probs = torch.softmax(logits, dim=-1)
    end_ids = sorted(set(family.eos_ids) | {family.pad_id})
    p_end = probs[..., end_ids].sum(-1).tolist()
    return [p[:n] for p, (_, n) in zip(p_end, rows)]


def predict_lengths(
    model: torch.nn.Module, family: FamilySpec, canvases: list[Canvas], threshold: float = 0.5
) -> list[int]:
    """Mask count for each canvas: the first middle position whose end probability reaches
    ``threshold`` (0.5: the median predicted length), or ``max_tokens`` when none does."""
    out = []
    for c, p in zip(canvases, end_probabilities(model, family, canvases)):
        out.append(next((j for j, pe in enumerate(p) if pe >= threshold), c.max_tokens))
    return out
