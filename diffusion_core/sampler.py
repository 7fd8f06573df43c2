"""Masked-diffusion fill-in-the-middle sampling.

The canvas is ``begin + prefix + [mask] * n + suffix + end``. Each step runs one forward, reads
the masked positions of the active block (shifted families read position j from output j-1),
scores them, and commits every position whose confidence reaches ``tau`` — at least the best one
(the Fast-dLLM rule). Middles longer than a block are decoded block by block, left to right.
A committed end token (eos/pad) ends the completion: the positions after it become padding.

Two samplers live here on purpose:
- :func:`reference_sample`: one canvas, a full forward every step, no cache. Slow and obvious;
  the fast path is tested against it.
- :func:`sample_batch`: many canvases in one batch (left-padded so every middle starts at the
  same index), DualCache K/V reuse (prefix and suffix K/V computed at the start of each block and
  reused while only the active block is recomputed), and length-ensemble decoding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from diffill_kernels.lm_head import TokenStats, lm_head_stats

from .families import FamilySpec
from .interface import CONFIDENCE_KINDS, CancelCheck, Cancelled, SamplingOptions  # noqa: F401 - re-exported (torch-free)


@dataclass
class Canvas:
    prefix: list[int]
    suffix: list[int]
    max_tokens: int
    cache_scope: str | None = ""  # InfillRequest.cache_scope: whose cached context K/V it may reuse


@dataclass
class SampleOutput:
    tokens: list[int]  # completion tokens, end token and padding excluded
    steps: int
    stop_reason: str  # "eos" | "length"
    score: float = 0.0  # mean log-confidence of the committed tokens (length-ensemble ranking)
    canvas: list[int] | None = None  # the final canvas (begin + prefix + middle + suffix + end)


# --------------------------------------------------------------------------------- scoring
def _score(
    logits: torch.Tensor, opts: SamplingOptions, gen: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen token and its confidence in [0, 1] for each row of ``logits`` [N, V]."""
    if opts.temperature > 0:
        probs = torch.softmax(logits / opts.temperature, dim=-1)
        if opts.top_p < 1:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p > opts.top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
            probs = probs / probs.sum(-1, keepdim=True)
        tokens = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
    else:
        probs = torch.softmax(logits, dim=-1)
        tokens = probs.argmax(dim=-1)
    if opts.confidence == "maxprob":
        conf = probs.gather(-1, tokens[:, None]).squeeze(-1)
    elif opts.confidence == "entropy":
        ent = -(probs * probs.clamp_min(1e-30).log()).sum(-1)
        conf = 1.0 - ent / math.log(probs.shape[-1])
    else:
        top2 = probs.topk(2, dim=-1).values
        conf = top2[:, 0] - top2[:, 1]
    return tokens, conf


def _confidence(stats: TokenStats, opts: SamplingOptions, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy token and confidence from LM-head statistics (same scale as :func:`_score`)."""
    if opts.confidence == "maxprob":
        return stats.token, stats.prob
    if opts.confidence == "entropy":
        return stats.token, 1.0 - stats.entropy / math.log(vocab)
    return stats.token, stats.margin


def _banned(family: FamilySpec) -> list[int]:
    """Tokens the sampler must never commit: the mask itself and specials that are not end tokens."""
    allowed = set(family.eos_ids) | {family.pad_id}
    banned = {family.mask_id} | {i for i in family.special_ids if i not in allowed}
    if family.expand_id is not None:
        banned.add(family.expand_id)
    return sorted(banned)


def _generator(opts: SamplingOptions, device: torch.device) -> torch.Generator | None:
    if opts.temperature <= 0:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(0 if opts.seed is None else opts.seed)
    return gen


def _head(family: FamilySpec, prefix: list[int]) -> list[int]:
    head = list(family.begin_ids) + list(prefix)
    if family.shifted and not head:
        # a shifted model reads the first middle token from the position before it
        head = [family.pad_id]
    return head


def _finish(
    family: FamilySpec, middle: list[int], steps: int, score: float, canvas: list[int]
) -> SampleOutput:
    end = set(family.eos_ids) | {family.pad_id}
    cut = next((i for i, t in enumerate(middle) if t in end), None)
    toks = middle if cut is None else middle[:cut]
    toks = [t for t in toks if t not in family.special_ids and t != family.mask_id]
    return SampleOutput(toks, steps, "length" if cut is None else "eos", score, canvas)


# --------------------------------------------------------------------------------- reference
@torch.inference_mode()
def reference_sample(
    model: torch.nn.Module, family: FamilySpec, canvas: Canvas, opts: SamplingOptions
) -> SampleOutput:
    """The plain sampler: one canvas, a full forward each step, no cache, no batching."""
    head = _head(family, canvas.prefix)
    n = canvas.max_tokens
    ids = head + [family.mask_id] * n + list(canvas.suffix) + list(family.end_ids)
    m0 = len(head)
    device = model.head_weight.device
    x = torch.tensor([ids], device=device)
    masked = [True] * n
    shift = 1 if family.shifted else 0
    banned = _banned(family)
    gen = _generator(opts, device)
    end_ids = set(family.eos_ids) | {family.pad_id}
    steps, logconf, count = 0, 0.0, 0
    for bs in range(0, n, opts.block_size):
        be = min(bs + opts.block_size, n)
        cap = opts.step_cap(be - bs)
        step = 0
        while any(masked[bs:be]):
            h = model(x)
            steps += 1
            pos = [j for j in range(bs, be) if masked[j]]
            logits = model.logits(h[0, [m0 + j - shift for j in pos]])
            logits[:, banned] = float("-inf")
            tok, conf = _score(logits, opts, gen)
            n_pos = torch.tensor([len(pos)], device=device)
            k = commit_counts(conf[None], n_pos, torch.tensor([cap - step], device=device), opts)
            chosen = top_k_mask(conf[None], k)[0]
            for i in chosen.nonzero().flatten().tolist():
                j = pos[i]
                x[0, m0 + j] = tok[i]
                masked[j] = False
                logconf += math.log(max(float(conf[i]), 1e-30))
                count += 1
            mid = x[0, m0 : m0 + n].tolist()
            first = next((j for j in range(n) if not masked[j] and mid[j] in end_ids), None)
            if first is not None:
                for j in range(first + 1, n):
                    x[0, m0 + j] = family.pad_id
                    masked[j] = False
            step += 1
    final = x[0].tolist()
    return _finish(family, final[m0 : m0 + n], steps, logconf / max(count, 1), final)


def commit_counts(
    conf: torch.Tensor, n_masked: torch.Tensor, steps_left: torch.Tensor, opts: SamplingOptions
) -> torch.Tensor:
    """The one commit rule (Fast-dLLM's, bounded by the step cap): how many masked positions each
    row commits this step. ``conf`` [R, W] holds the confidences of the masked positions (anything
    below 0 elsewhere); every confident one (``>= tau``), at least one, and at least enough that
    the block finishes within ``steps_left`` forwards. A fixed ``steps_per_block`` ignores tau."""
    steps_left = steps_left.clamp_min(1)
    needed = (n_masked + steps_left - 1) // steps_left
    k = torch.maximum(needed, torch.ones_like(needed))
    if opts.steps_per_block is None:
        k = torch.maximum(k, (conf >= opts.tau).sum(-1))
    return torch.minimum(k, n_masked)


def top_k_mask(conf: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """True at each row's ``k`` most confident positions (ties: the leftmost first)."""
    order = conf.argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(order.shape[-1], device=conf.device).expand_as(order))
    return rank < k[:, None]


# --------------------------------------------------------------------------------- fast path
@torch.inference_mode()
def sample_batch(
    model: torch.nn.Module,
    family: FamilySpec,
    canvases: list[Canvas],
    opts: SamplingOptions,
    cancel: CancelCheck | None = None,
) -> list[SampleOutput]:
    """Fill every canvas with ``max_tokens`` masks; with ``length="ensemble"`` each canvas is
    tried at several mask counts in the same batch and the candidate the model is most confident
    about wins. (``"predict"`` and ``"expand"`` are the engine's: see ``length.py``.)"""
    rows: list[tuple[int, int]] = []  # (canvas index, mask count)
    for ci, c in enumerate(canvases):
        if opts.length == "ensemble":
            lens = sorted({n for n in opts.candidate_lengths if 0 < n <= c.max_tokens}) or [c.max_tokens]
        else:
            lens = [c.max_tokens]
        rows.extend((ci, n) for n in lens)
    outs = _sample_rows(model, family, [(canvases[ci], n) for ci, n in rows], opts, cancel)
    best: dict[int, SampleOutput] = {}
    for (ci, _), out in zip(rows, outs):
        if ci not in best or out.score > best[ci].score:
            best[ci] = out
    return [best[i] for i in range(len(canvases))]


def layout(
    family: FamilySpec, rows: list[tuple[Canvas, int]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Batch canvases ``begin + prefix + [mask] * n + suffix + end``, left-padded so that every
    middle starts at the same index ``m0``: ids, key mask (real tokens), RoPE positions, m0."""
    heads = [_head(family, c.prefix) for c, _ in rows]
    tails = [list(c.suffix) + list(family.end_ids) for c, _ in rows]
    m0 = max(len(h) for h in heads)
    total = m0 + max(n + len(t) for (_, n), t in zip(rows, tails))
    ids = torch.full((len(rows), total), family.pad_id, dtype=torch.long)
    key_mask = torch.zeros((len(rows), total), dtype=torch.bool)
    for i, (h, t, (_, n)) in enumerate(zip(heads, tails, rows)):
        row = h + [family.mask_id] * n + t
        lo = m0 - len(h)
        ids[i, lo : lo + len(row)] = torch.tensor(row, dtype=torch.long)
        key_mask[i, lo : lo + len(row)] = True
    positions = (key_mask.long().cumsum(-1) - 1).clamp_min(0)
    return ids, key_mask, positions, m0


def _sample_rows(
    model: torch.nn.Module,
    family: FamilySpec,
    rows: list[tuple[Canvas, int]],
    opts: SamplingOptions,
    cancel: CancelCheck | None,
) -> list[SampleOutput]:
    device = model.head_weight.device
    ns = [n for _, n in rows]
    r, max_n = len(rows), max(ns)
    ids, key_mask, positions, m0 = layout(family, rows)
    total = ids.shape[1]
    in_middle = torch.arange(max_n)[None, :] < torch.tensor(ns)[:, None]  # [r, max_n]
    masked = torch.zeros((r, total), dtype=torch.bool)
    masked[:, m0 : m0 + max_n] = in_middle
    ids, key_mask, positions, masked, in_middle = (
        t.to(device) for t in (ids, key_mask, positions, masked, in_middle)
    )

    shift = 1 if family.shifted else 0
    banned = torch.tensor(_banned(family), device=device)
    bias = torch.zeros(model.cfg.vocab_size, device=device)
    bias[banned] = float("-inf")
    end_ids = torch.tensor(sorted(set(family.eos_ids) | {family.pad_id}), device=device)
    gen = _generator(opts, device)
    cache = model.new_cache(r, total) if opts.cache == "dual" else None
    if cache is not None:
        # a window may refresh a row's head and middle, never its suffix (as if decoded alone)
        cache.write_mask = (
            torch.arange(total, device=device)[None, :] < (m0 + torch.tensor(ns, device=device))[:, None]
        )
    logconf = torch.zeros(r, device=device)
    count = torch.zeros(r, device=device)
    steps = 0
    col = torch.arange(max_n, device=device)

    for bstart in range(m0, m0 + max_n, opts.block_size):
        bend = min(bstart + opts.block_size, m0 + max_n)
        # each row's step cap comes from its own block length (a short middle has a short last block)
        row_len = [min(max(n - (bstart - m0), 0), bend - bstart) for n in ns]
        caps = torch.tensor([opts.step_cap(b) if b else 1 for b in row_len], device=device)
        step = 0
        while True:
            blk_masked = masked[:, bstart:bend]
            if not bool(blk_masked.any()):
                break
            if cancel is not None and cancel():
                raise Cancelled()
            refresh = cache is None or step == 0 or (opts.refresh_every and step % opts.refresh_every == 0)
            if refresh:
                h = model(ids, positions, key_mask, cache=cache, start=0)
                hb = h[:, bstart - shift : bend - shift]
            else:
                ws = bstart - shift
                h = model(ids[:, ws:bend], positions[:, ws:bend], key_mask, cache=cache, start=ws)
                hb = h[:, : bend - bstart]
            steps += 1

            sel = blk_masked.nonzero(as_tuple=False)  # [N, 2] (row, col-in-block), row-major
            hidden = hb[sel[:, 0], sel[:, 1]]
            if opts.temperature > 0:
                logits = model.logits(hidden)
                logits[:, banned] = float("-inf")
                tok, conf = _score(logits, opts, gen)
            else:
                # greedy: the LM-head epilogue reduces over the vocabulary without full logits
                tok, conf = _confidence(
                    lm_head_stats(hidden, model.head_weight, None, bias), opts, model.cfg.vocab_size
                )

            # per-row commit counts, then top-k by confidence within each row
            conf_grid = torch.full(blk_masked.shape, -1.0, device=device)
            conf_grid[sel[:, 0], sel[:, 1]] = conf
            k = commit_counts(conf_grid, blk_masked.sum(-1), caps - step, opts)
            commit = blk_masked & top_k_mask(conf_grid, k)

            tok_grid = torch.zeros(blk_masked.shape, dtype=torch.long, device=device)
            tok_grid[sel[:, 0], sel[:, 1]] = tok
            blk_ids = ids[:, bstart:bend]
            ids[:, bstart:bend] = torch.where(commit, tok_grid, blk_ids)
            masked[:, bstart:bend] = blk_masked & ~commit
            logconf += torch.where(commit, conf_grid.clamp_min(1e-30).log(), 0.0).sum(-1)
            count += commit.sum(-1)

            # a committed end token ends the completion: everything after it becomes padding
            mid_ids = ids[:, m0 : m0 + max_n]
            is_end = torch.isin(mid_ids, end_ids) & ~masked[:, m0 : m0 + max_n] & in_middle
            has_end = is_end.any(-1)
            first = torch.where(has_end, is_end.int().argmax(-1), max_n)
            after = (col[None, :] > first[:, None]) & in_middle
            ids[:, m0 : m0 + max_n] = torch.where(after, family.pad_id, mid_ids)
            masked[:, m0 : m0 + max_n] &= ~after
            step += 1

    final = ids.tolist()
    valid = key_mask.tolist()
    scores = (logconf / count.clamp_min(1)).tolist()
    outs = []
    for i in range(r):
        canvas = [t for t, v in zip(final[i], valid[i]) if v]
        outs.append(_finish(family, final[i][m0 : m0 + ns[i]], steps, scores[i], canvas))
    return outs
