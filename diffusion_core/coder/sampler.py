"""Block diffusion on a causal context: Diffill-Coder's sampler.

The context is Qwen's own FIM prompt (``fim_prompt`` of coder/family.py, by default the SPM order
``<|fim_prefix|><|fim_suffix|>S<|fim_middle|>P``), encoded causally by the untouched base once;
its K/V never depends on the middle, so it is reused exactly by every step (no DualCache
approximation). On top of it sits a window of middle
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..families import FamilySpec
from ..interface import CancelCheck, Cancelled, SamplingOptions
from ..kv_cache import KVCache
from ..model import Adapted, RowAdapter, Segment, segment_groups
from ..sampler import Canvas, SampleOutput, _banned, _generator, _score
from .family import fim_prompt
from .prefix_cache import PrefixCache

__all__ = ["CoderStats", "coder_sample", "coder_sample_batch", "context_ids", "step_mask"]

StopCheck = Callable[[list[int]], bool]


def context_ids(family: FamilySpec, prefix: list[int], suffix: list[int]) -> list[int]:
    """The base's FIM prompt in the family's order (coder/family.py: ``fim_prompt``)."""
    assert family.fim_ids is not None
    return fim_prompt(family.fim_ids, family.fim_order, prefix, suffix)


def step_mask(start: int, pending: int, window: int, device: torch.device) -> torch.Tensor:
    """Attention mask [1, 1, pending + window, start + pending + window] for one step's rows at
    positions ``[start, start + pending + window)``: the pending rows are causal (they become
    context and must never see the window), the window rows see every key up to the window's end.
    Its width ends at the last row, so the forward reads only the cache's keys up to there (an
    attention over the filled part of the cache, not its whole length)."""
    end = start + pending + window
    keys = torch.arange(end, device=device)
    qpos = torch.arange(start, end, device=device)
    in_window = (torch.arange(pending + window, device=device) >= pending)[:, None]
    return (in_window | (keys[None, :] <= qpos[:, None]))[None, None]


@dataclass
class CoderStats:
    forwards: int = 0
    base_commits: int = 0  # tokens the base chose itself (frontier and corrections)
    adapter_commits: int = 0  # window tokens the adapter committed (drafts that were accepted)
    rejected: int = 0  # drafts the base refused (each costs the window of that forward)
    lookup_drafts: int = 0  # drafts copied from the context (accepted or not)
    lookup_accepted: int = 0  # of those, accepted by the base


class ContextLookup:
    """Drafts copied from the context: the tokens that followed the last two (or one) committed
    tokens where they last occur in the prompt (prefix and suffix). Code repeats itself (names,
    call shapes, the next line of a pattern), and the base checks every draft anyway, so a wrong
    copy costs only the window of one forward (prompt lookup, as in llama.cpp's lookup decoding)."""

    def __init__(self, ctx: list[int]) -> None:
        self.ctx = ctx
        self.last: dict[tuple[int, ...], int] = {}  # n-gram -> index after its last occurrence
        for n in (1, 2):
            for i in range(len(ctx) - n):
                self.last[tuple(ctx[i : i + n])] = i + n

    def continuation(self, tail: list[int], k: int) -> list[int]:
        for n in (2, 1):
            if len(tail) >= n and (at := self.last.get(tuple(tail[-n:]))) is not None:
                return self.ctx[at : at + k]
        return []


def draft_threshold(opts: SamplingOptions) -> float:
    """Confidence a window token needs to be drafted (verified mode): low, since the base checks
    every draft, but not so low that a wrong draft wastes the next forward's window."""
    return max(0.1, opts.tau - 0.5)


def acceptance(opts: SamplingOptions) -> float:
    """A draft is accepted when the base gives it at least this fraction of the probability of
    its own first choice: 1 at quality 1 (only the base's greedy token), looser below."""
    return min(1.0, max(0.05, opts.quality))


def window_tokens(
    logits: torch.Tensor, positions: list[int], opts: SamplingOptions, gen: torch.Generator | None
) -> tuple[list[int], list[float]]:
    """The adapter's token and confidence for masked middle ``positions`` (``logits``: their rows,
    banned tokens already at -inf)."""
    tok, conf = _score(logits, opts, gen)
    return tok.tolist(), conf.tolist()


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
    prefix_cache: PrefixCache | None = None,
) -> SampleOutput:
    """Fill one middle of at most ``canvas.max_tokens`` tokens.

    With ``opts.verify`` (the default) window tokens are *drafts*: the next forward runs them
    through the base anyway (to extend the context), and each is kept only if the base agrees
    (:func:`acceptance`); the first refused one is replaced by the base's own token and every
    draft after it is dropped. So at quality 1 the output is the base's greedy decoding token for
    token, at any number of tokens per forward. Without ``verify``, window tokens whose
    confidence reaches tau are final (the plain diffusion commit rule). An end token from the
    adapter ends the middle when its confidence reaches tau (the base never ends a middle).

    ``stop`` is asked about the verified run from the start of the middle whenever it grows;
    True ends the completion there (the engine's stop strings, e.g. a newline).

    ``prefix_cache`` lends the K/V of an earlier context sharing a prefix with this one (only
    the rest of the context is computed) and keeps this one's for the next request."""
    stats = stats if stats is not None else CoderStats()
    return coder_sample_batch(
        model, adapter, family, [canvas], opts, window, cancel, [stop], [stats], prefix_cache
    )[0]


@torch.inference_mode()
def coder_sample_batch(
    model: torch.nn.Module,
    adapter: RowAdapter,
    family: FamilySpec,
    canvases: Sequence[Canvas],
    opts: SamplingOptions,
    window: int,
    cancel: CancelCheck | None = None,
    stops: Sequence[StopCheck | None] | None = None,
    stats: Sequence[CoderStats] | None = None,
    prefix_cache: PrefixCache | None = None,
) -> list[SampleOutput]:
    """:func:`coder_sample` for several middles at once: each step is one forward over every
    unfinished middle's rows (packed, each attending over its own cache: model.py's
    :class:`~diffusion_core.model.Segment`) and one LM-head call, so a step reads the weights
    once for all of them. Each middle follows exactly the rules it follows alone; only the
    rounding of a GEMM over more rows can differ. A middle that finishes leaves the batch."""
    stops = list(stops) if stops is not None else [None] * len(canvases)
    stats = list(stats) if stats is not None else [CoderStats() for _ in canvases]
    window = max(1, min(window, opts.block_size))
    middles: dict[int, _Middle] = {}  # by canvas; an empty middle needs no forward
    try:
        for i, (canvas, stop, st) in enumerate(zip(canvases, stops, stats)):
            if canvas.max_tokens == 0:
                continue
            ctx = context_ids(family, canvas.prefix, canvas.suffix)
            length = len(ctx) + canvas.max_tokens + 1
            cache, reused = lend_cache(model, prefix_cache, ctx, length, canvas.cache_scope)
            middles[i] = _Middle(model, family, ctx, canvas.max_tokens, opts, window, cache, reused, stop, st)
        _run(model, adapter, list(middles.values()), cancel)
        return [
            middles[i].output() if i in middles else SampleOutput([], 0, "length")
            for i in range(len(canvases))
        ]
    finally:
        if prefix_cache is not None:  # a context is in its cache once its first forward ran
            for i, m in middles.items():
                ran = m.stats.forwards > m.forwards_before
                prefix_cache.put(m.ctx if ran else m.ctx[: m.reused], m.cache, canvases[i].cache_scope)


def lend_cache(
    model: torch.nn.Module,
    prefix_cache: PrefixCache | None,
    ctx: list[int],
    length: int,
    scope: str | None = "",
) -> tuple[KVCache, int]:
    """A K/V cache of ``length`` positions and how many context positions it already holds
    (from ``scope``'s earlier contexts, :meth:`PrefixCache.take`; an edit's hole is run here)."""
    if prefix_cache is None:
        return model.new_cache(1, length), 0
    cache, n, hole = prefix_cache.take(ctx, length, lambda m: model.new_cache(1, m), scope)
    if hole is not None:
        a, b = hole
        device = model.head_weight.device
        ids = torch.tensor([ctx[a:b]], device=device)
        model(ids, cache=cache, start=a, attn_mask=step_mask(a, b - a, 0, device))
    return cache, n


def _run(
    model: torch.nn.Module, adapter: RowAdapter, middles: list[_Middle], cancel: CancelCheck | None
) -> None:
    """Step every unfinished middle until all are done: alone, the plain cached forward (what
    batch 1 always costs); together, one packed forward and one LM-head call."""
    device = model.head_weight.device
    active = [m for m in middles if not m.done]
    while active:
        if cancel is not None and cancel():
            raise Cancelled()
        plans = [m.plan() for m in active]
        if len(active) == 1:
            (plan,) = plans
            h = model(
                torch.tensor([plan.ids], device=device),
                cache=active[0].cache,
                start=plan.start,
                attn_mask=plan.mask,
                adapted=Adapted(adapter, rows_from=plan.pending),
            )[0]
            rows = [torch.tensor(plan.read, device=device)]
        else:
            # packed rows: every middle's pending (base) rows first, then every window (adapter)
            # row, so the adapter applies to one contiguous tail
            base = sum(pl.pending for pl in plans)
            segments, rows = [], []
            b_at, w_at = 0, base
            for m, pl in zip(active, plans):
                w = len(pl.ids) - pl.pending
                own = torch.cat(
                    [
                        torch.arange(b_at, b_at + pl.pending, device=device),
                        torch.arange(w_at, w_at + w, device=device),
                    ]
                )
                segments.append(Segment(own, m.cache, pl.start, pl.mask))
                rows.append(own[pl.read])
                b_at, w_at = b_at + pl.pending, w_at + w
            ids = [t for pl in plans for t in pl.ids[: pl.pending]] + [
                t for pl in plans for t in pl.ids[pl.pending :]
            ]
            h = model(
                torch.tensor([ids], device=device),
                adapted=Adapted(adapter, rows_from=base),
                segments=segments,
            )[0]
        read = torch.cat(rows)
        # several middles: each one's rows rounded as if alone (w8a8's scale), by the same groups
        # as the packed forward's, read off at the rows the head reads
        groups = segment_groups(rows, h.shape[0])[read] if len(rows) > 1 else None
        all_logits = model.logits(h[read], groups)  # one LM-head call (the head read once)
        at = 0
        for m, pl in zip(active, plans):
            m.take(all_logits[at : at + len(pl.read)])
            at += len(pl.read)
        active = [m for m in active if not m.done]


@dataclass
class _Plan:
    """One middle's part of the next forward."""

    ids: list[int]  # its pending (base) rows, then its window rows
    pending: int
    start: int  # the cache position of its first row
    mask: torch.Tensor
    read: list[int]  # its rows the LM head reads (drafts to check, the frontier, the window)


class _Middle:
    """One middle being filled: what the sampler keeps between steps. :meth:`plan` says what the
    next forward needs from it, :meth:`take` commits from that forward's logits."""

    def __init__(
        self,
        model: torch.nn.Module,
        family: FamilySpec,
        ctx: list[int],
        n: int,
        opts: SamplingOptions,
        window: int,
        cache: KVCache,
        reused: int,
        stop: StopCheck | None,
        stats: CoderStats,
    ) -> None:
        device = model.head_weight.device
        self.family, self.ctx, self.n, self.opts, self.window = family, ctx, n, opts, window
        self.cache, self.reused, self.stop, self.stats = cache, reused, stop, stats
        self.forwards_before = stats.forwards
        self.device = device
        self.L = len(ctx)
        self.banned = torch.tensor(_banned(family), device=device)
        self.end_ids = set(family.eos_ids) | {family.pad_id}
        self.gen = _generator(opts, device)
        self.verify = opts.verify
        self.ahead = opts.quality < 1.0 or opts.verify  # quality 1 without verify: the frontier only
        self.tau_draft = draft_threshold(opts) if opts.verify else opts.tau
        self.alpha = acceptance(opts)
        self.lookup = ContextLookup(ctx) if opts.lookup else None
        self.mid: list[int | None] = [None] * n  # committed middle tokens (None = masked)
        self.drafted = [False] * n  # committed by the adapter, not yet checked by the base
        self.copied = [False] * n  # the draft came from the context (ContextLookup), not the adapter
        self.end = n  # the middle is mid[:end]; a committed end token moves it in
        self.enc = 0  # middle positions before this are in the cache (and verified)
        self.b0 = 0  # the frontier: the first middle position after what the next forward appends
        self.first = True
        self.logconf, self.count = 0.0, 0
        self.stop_reason = "length"
        self.done = False
        # what plan() read for the forward that take() commits from
        self.b1 = 0  # the window's end
        self.checks: list[int] = []
        self.todo: list[int] = []

    def plan(self) -> _Plan:
        mid, b0, enc = self.mid, self.b0, self.enc
        pending = self.ctx[self.reused :] if self.first else [t for t in mid[enc:b0] if t is not None]
        start = self.reused if self.first else self.L + enc
        self.b1 = b1 = min(b0 + self.window, self.end)
        # a window's last row is only read by the rows before it (logits are shifted): with no
        # window row to read (window 1, quality 1 without verify, the middle's last position),
        # the forward is the pending rows alone, exactly the base's AR step
        wide = self.ahead and b1 - b0 > 1
        block = [self.family.mask_id if t is None else t for t in mid[b0:b1]] if wide else []
        p = len(pending)
        # base rows: the last context row predicts the frontier; earlier pending rows check the
        # drafts among the pending tokens (row k predicts middle position enc + k + 1)
        self.checks = [] if self.first else [k for k in range(p - 1) if self.drafted[enc + k + 1]]
        # the window's rows too, in the same LM-head call (reading the 150k-row head once)
        self.todo = [j for j in range(b0 + 1, b1) if mid[j] is None] if self.ahead and b0 < self.end else []
        read = self.checks + [p - 1] + [p + (j - b0) - 1 for j in self.todo]
        return _Plan(pending + block, p, start, step_mask(start, p, len(block), self.device), read)

    def take(self, all_logits: torch.Tensor) -> None:
        """Commit from the logits of this middle's ``read`` rows of the last forward."""
        stats, opts, mid, drafted, n = self.stats, self.opts, self.mid, self.drafted, self.n
        stats.forwards += 1
        all_logits[:, self.banned] = float("-inf")
        checks, todo, enc, b0, b1 = self.checks, self.todo, self.enc, self.b0, self.b1
        base_logits, window_logits = all_logits[: len(checks) + 1], all_logits[len(checks) + 1 :]
        rejected_at = None
        if checks:
            probs = torch.softmax(base_logits[:-1], dim=-1)
            for i, k in enumerate(checks):
                q = enc + k + 1
                if probs[i, mid[q]] < self.alpha * probs[i].max():
                    rejected_at, correction = q, int(probs[i].argmax())
                    break
        if rejected_at is not None:
            q = rejected_at
            stats.rejected += 1
            stats.base_commits += 1
            mid[q], drafted[q] = correction, False
            for j in range(q + 1, n):
                mid[j], drafted[j] = None, False
            for j in range(enc, q):
                drafted[j] = False
            self.end = n if self.end > q else self.end
            # rewrite the cache from q: its K/V saw the refused draft
            self.enc, self.b0, self.first = q, q + 1, False
            return
        for j in range(enc, b0):
            if drafted[j]:
                drafted[j] = False
                if self.copied[j]:
                    stats.lookup_accepted += 1
                else:
                    stats.adapter_commits += 1
        self.enc = enc = b0

        # the frontier from the base, then the window from the adapter
        tok, conf = _score(base_logits[-1:], opts, self.gen)
        t0, c0 = int(tok[0]), float(conf[0])
        end_ids = self.end_ids
        if b0 < self.end:
            mid[b0] = t0
            stats.base_commits += 1
            self.logconf += math.log(max(c0, 1e-30))
            self.count += 1
        if todo:
            toks, confs = window_tokens(window_logits, todo, opts, self.gen)
            for j, t, c in zip(todo, toks, confs):
                if t in end_ids:
                    if c < opts.tau:
                        continue
                elif c < self.tau_draft:
                    continue
                mid[j], drafted[j], self.copied[j] = t, self.verify and t not in end_ids, False
                if not self.verify:
                    stats.adapter_commits += 1
                self.logconf += math.log(max(c, 1e-30))
                self.count += 1
        if self.verify and self.lookup is not None and b0 < self.end:
            # where the adapter is unsure, draft what followed the same tokens in the context
            tail = [t for t in mid[max(0, b0 - 2) : b0 + 1] if t is not None]
            for j, t in zip(range(b0 + 1, b1), self.lookup.continuation(tail, b1 - b0 - 1)):
                if mid[j] is not None or t in end_ids:
                    break
                mid[j], drafted[j], self.copied[j] = t, True, True
                stats.lookup_drafts += 1
        first_end = next((j for j in range(b0, self.end) if mid[j] in end_ids), None)
        if first_end is not None:
            self.end = first_end
            for j in range(self.end + 1, n):
                mid[j], drafted[j] = None, False
        # the committed run from the frontier: the next forward appends (and checks) it
        run = b0
        while run < self.end and mid[run] is not None:
            run += 1
        verified = run if not self.verify else next((j for j in range(b0, run) if drafted[j]), run)
        if self.stop is not None and self.stop([t for t in mid[:verified] if t is not None]):
            self.end, self.stop_reason, self.done = verified, "stop", True
            return
        if run >= self.end and verified >= self.end:
            if self.end < n:
                self.stop_reason = "eos"
            self.done = True
            return
        self.b0, self.first = run, False

    def output(self) -> SampleOutput:
        toks = [t for t in self.mid[: self.end] if t is not None and t not in self.family.special_ids]
        return SampleOutput(toks, self.stats.forwards, self.stop_reason, self.logconf / max(self.count, 1))
