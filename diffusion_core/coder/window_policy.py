"""Whether the draft window pays on this machine: measured once at load, never assumed.

A verified draft window makes every forward wider: the committed token plus ``window`` masked
rows instead of the committed token alone. On a GPU, or a CPU whose few-row matmuls are bound by
reading the weights (Intel AMX), the extra rows cost little and the drafts they bring (about 1.3
tokens per forward on single lines, README) make decoding faster. On a CPU whose few-row matmuls
are compute-bound the extra rows cost more than they bring: on a 2-core AVX2 AMD EPYC a 3-row step
measured 3.4x a 1-row step, and the default decoder answered single lines 2x slower than the base
alone. So the loaded model times one step each way, and the window is kept only where the wider
step costs less than the tokens it is expected to bring; otherwise Diffill-Coder decodes with the
base alone (window 1: one row per forward, the same answers at quality 1).

``DIFFILL_WINDOW``: ``auto`` (the default) measures; ``configured`` takes the adapter's window
without measuring (the test suite's setting, so tests never depend on the machine); a number
forces that window.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..model import Adapted, RowAdapter
from .sampler import step_mask

__all__ = ["DRAFT_GAIN", "WindowChoice", "choose_window", "step_cost_ratio"]

# Tokens per forward a window brings, conservatively: 1.26-1.34 measured on 100 single-line tasks
# at windows 2 and 8 (README, "Diffill-Coder against its peers"); long middles bring more.
DRAFT_GAIN = 1.25


@dataclass(frozen=True)
class WindowChoice:
    window: int  # what the sampler uses
    configured: int  # what the adapter's config.json asks for
    step_cost: float | None  # a (1 + window)-row step over a 1-row step, as measured; None if not
    reason: str

    def about(self) -> dict:
        return {
            "window": self.window,
            "configured": self.configured,
            "step_cost_ratio": None if self.step_cost is None else round(self.step_cost, 2),
            "reason": self.reason,
        }


def step_cost_ratio(
    model: torch.nn.Module,
    adapter: RowAdapter,
    window: int,
    repeats: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Best-of-``repeats`` time of a decoding step with ``window`` adapter rows over that of a
    one-row step, both with the LM head on the rows the sampler reads, interleaved so a noisy
    neighbour slows both alike. Runs the loaded model itself (its dtype, int8, thread count)."""
    device = model.head_weight.device
    ctx = 16
    cache = model.new_cache(1, ctx + 1 + window)
    ids = torch.arange(ctx, device=device)[None] % model.cfg.vocab_size

    def step(rows: int) -> None:
        x = torch.full((1, 1 + rows), adapter.mask_id, device=device)
        x[0, 0] = 1
        mask = step_mask(ctx, 1, rows, device)
        h = model(x, cache=cache, start=ctx, attn_mask=mask, adapted=Adapted(adapter, rows_from=1))
        model.logits(h[0, : max(1, rows)])  # the frontier's row, plus the window rows it reads

    best = {0: float("inf"), window: float("inf")}
    with torch.inference_mode():
        model(ids, cache=cache, start=0, attn_mask=step_mask(0, ctx, 0, device))
        for rows in best:  # warm-up: the BLAS picks its kernels for each shape
            step(rows)
        for _ in range(repeats):
            for rows in best:
                t0 = clock()
                step(rows)
                best[rows] = min(best[rows], clock() - t0)
    return best[window] / max(best[0], 1e-9)


def choose_window(
    model: torch.nn.Module,
    adapter: RowAdapter,
    configured: int,
    device: torch.device,
    measure: Callable[[int], float] | None = None,
) -> WindowChoice:
    """The window the sampler should use here (see the module docstring); ``measure`` (window ->
    cost ratio) defaults to :func:`step_cost_ratio` on ``model``."""
    forced = os.environ.get("DIFFILL_WINDOW", "auto").strip().lower()
    if forced == "configured":
        return WindowChoice(configured, configured, None, "DIFFILL_WINDOW=configured")
    if forced not in ("", "auto"):
        try:
            n = int(forced)
        except ValueError:
            want = "'auto', 'configured' or a window size"
            raise ValueError(f"DIFFILL_WINDOW must be {want}, not {forced!r}") from None
        if n < 1:
            raise ValueError(f"DIFFILL_WINDOW must be at least 1, not {n}")
        return WindowChoice(n, configured, None, "DIFFILL_WINDOW")
    if configured <= 1:
        return WindowChoice(configured, configured, None, "configured")
    if device.type != "cpu":
        return WindowChoice(configured, configured, None, "accelerator: extra rows are cheap")
    ratio = (measure or (lambda w: step_cost_ratio(model, adapter, w)))(configured)
    if ratio < DRAFT_GAIN:
        return WindowChoice(configured, configured, ratio, f"a wider step costs {ratio:.2f}x: drafts pay")
    return WindowChoice(1, configured, ratio, f"a wider step costs {ratio:.2f}x: more than drafts bring")
