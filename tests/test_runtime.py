"""What the engine measures about the CPU instead of assuming it."""

from __future__ import annotations

import pytest
import torch

from diffusion_core import runtime


def test_threads_never_exceed_the_cores_the_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(runtime, "cpu_threads", lambda: 1)
        assert runtime.fit_threads() == 1 and torch.get_num_threads() == 1
        monkeypatch.setattr(runtime, "cpu_threads", lambda: 8)
        assert runtime.fit_threads() == 1  # a lower setting (the user's) is left alone
    finally:
        torch.set_num_threads(before)


def test_cpu_threads_is_the_affinity_mask() -> None:
    import os

    assert runtime.cpu_threads() == len(os.sched_getaffinity(0))
