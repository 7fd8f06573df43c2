"""The engine keeps each cache scope's prefix cut where it was (Engine.fit_context's anchor): a
client that sends a long file whole (the HTTP APIs) keeps its context's start while it types, so
its context K/V is reused exactly instead of recomputed after every line."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffusion_core import engine as engine_module
from diffusion_core.coder.prefix_cache import common_prefix
from diffusion_core.coder.sampler import context_ids
from diffusion_core.engine import Engine
from diffusion_core.interface import InfillRequest, cut_prefix

LINES = [f"def handler_{i}(request, value={i}):\n    return request.get('k{i}', value)\n" for i in range(40)]
PREFIX = "".join(LINES) + "def main():\n"
TYPED = "    total = handler_3(1)\n    other = handler_4(2)\n    "  # two lines typed at the cursor
SUFFIX = "\nprint(main())\n"
BUDGET = 120  # prefix tokens: far less than the file


@pytest.fixture()
def engine(coder_dirs: tuple[Path, Path]) -> Engine:
    base, adapter = coder_dirs
    e = Engine.from_pretrained(
        adapter, base=base, device="cpu", dtype="float32", progress=False, reuse_after_edit=False
    )
    e.max_prefix_tokens = BUDGET
    return e


def _ask(engine: Engine, prefix: str, scope: str | None) -> tuple[int, int]:
    """Run one request; its context tokens and how many of them it reused."""
    before = engine.stats()
    engine.infill_batch([InfillRequest(prefix, SUFFIX, 2, cache_scope=scope)])
    after = engine.stats()
    return (
        after["context_tokens"] - before["context_tokens"],
        after["reused_context_tokens"] - before["reused_context_tokens"],
    )


def test_a_scope_keeps_its_cut_while_typing_and_reuses_its_context(engine: Engine) -> None:
    count = engine.count_tokens
    first_ctx, _ = _ask(engine, PREFIX, "client-a")
    start = engine._anchors["client-a"]
    _, reused = _ask(engine, PREFIX + TYPED, "client-a")
    assert engine._anchors["client-a"] == start  # the cut stayed where it was
    # the earlier context but the cursor's last tokens, where cuts made afresh each time would
    # share only what comes before the prefix (the suffix: SPM order)
    tok, fam = engine.tokenizer, engine.family

    def ctx(prefix: str, anchor: str | None) -> list[int]:
        return context_ids(fam, tok.encode(cut_prefix(prefix, BUDGET, count, anchor)), tok.encode(SUFFIX))

    assert len(ctx(PREFIX, "")) == first_ctx
    assert reused >= 0.9 * first_ctx
    assert common_prefix(ctx(PREFIX, None), ctx(PREFIX + TYPED, None)) < 0.5 * first_ctx


def test_scopes_do_not_share_their_cut(engine: Engine) -> None:
    _ask(engine, PREFIX, "client-a")
    theirs = engine._anchors["client-a"]
    other = "".join(LINES[5:]) + "def main():\n" + TYPED  # another client's file: a later start
    _ask(engine, other, "client-b")
    assert engine._anchors["client-a"] == theirs
    mine = engine._anchors["client-b"]
    fresh = cut_prefix(other, BUDGET, engine.count_tokens, "")  # a first cut: no anchor of its own
    assert fresh.startswith(mine)
    # a request without a scope reuses nothing and remembers nothing
    _ask(engine, PREFIX, None)
    assert None not in engine._anchors and set(engine._anchors) == {"client-a", "client-b"}


def test_the_remembered_cuts_are_bounded(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "MAX_ANCHORED_SCOPES", 2)
    for scope in ("one", "two", "three"):
        _ask(engine, PREFIX, scope)
    assert list(engine._anchors) == ["two", "three"]  # the scope that typed longest ago is gone
