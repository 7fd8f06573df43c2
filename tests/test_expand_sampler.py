"""DreamOn-style variable-length infilling: the middle grows on <|expand|> and shrinks on eos."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from model_fixtures import make_family_dir

from diffusion_core.engine import Engine, SamplingOptions
from diffusion_core.expand_sampler import expand_sample
from diffusion_core.families import make_spec
from diffusion_core.sampler import Canvas, sample_batch

VOCAB, MASK, EOS, EXPAND, BOS = 64, 60, 61, 62, 63
FAMILY = make_spec(
    name="dream",
    shifted=True,
    mask_id=MASK,
    eos_ids=(EOS,),
    pad_id=EOS,
    begin_ids=(BOS,),
    end_ids=(EOS,),
    expand_id=EXPAND,
)
PREFIX, SUFFIX = [1, 2, 3], [4, 5]


class ScriptedModel(torch.nn.Module):
    """Predicts, for every middle slot, what ``script(middle) -> list[token]`` says; confidence
    falls from left to right so the commit order is known. Records each canvas it is given."""

    def __init__(self, script: Callable[[list[int]], list[int]]) -> None:
        super().__init__()
        self.script = script
        self.head_weight = torch.zeros(1)
        self.seen: list[list[int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        row = x[0].tolist()
        self.seen.append(row)
        m0 = 1 + len(PREFIX)
        middle = row[m0 : len(row) - len(SUFFIX) - 1]
        want = self.script(middle)
        out = torch.full((1, len(row), VOCAB), -20.0)
        for j, t in enumerate(want):
            out[0, m0 + j - 1, t] = 20.0 - j  # shifted: slot j is read from output j - 1
        return out

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return h.float()


def grow_to(target: list[int]) -> Callable[[list[int]], list[int]]:
    """Expand the first mask until the middle is as long as ``target``, then write it."""

    def script(middle: list[int]) -> list[int]:
        if len(middle) < len(target):
            return [EXPAND] + [MASK] * (len(middle) - 1)
        return list(target[: len(middle)]) + [EOS] * (len(middle) - len(target))

    return script


def run(script: Callable, max_tokens: int, **opts) -> tuple[list[int], ScriptedModel, object]:
    model = ScriptedModel(script)
    out = expand_sample(model, FAMILY, Canvas(PREFIX, SUFFIX, max_tokens), SamplingOptions(**opts))
    return out.tokens, model, out


def test_expand_grows_a_short_canvas_to_the_needed_length() -> None:
    target = [10, 11, 12, 13, 14, 15, 16]
    tokens, model, out = run(grow_to(target), max_tokens=16, initial_masks=2)
    assert tokens == target
    lengths = [len(c) - 1 - len(PREFIX) - len(SUFFIX) - 1 for c in model.seen]
    assert lengths[0] == 2 and max(lengths) == len(target)  # started small, grew one slot per expand
    assert out.stop_reason == "eos"
    assert out.canvas == [BOS, *PREFIX, *target, *SUFFIX, EOS]


def test_end_tokens_delete_their_slots() -> None:
    tokens, model, out = run(lambda m: [20, 21, 22] + [EOS] * (len(m) - 3), max_tokens=16, initial_masks=8)
    assert tokens == [20, 21, 22]
    assert out.canvas == [BOS, *PREFIX, 20, 21, 22, *SUFFIX, EOS]  # deleted, not padded
    assert out.stop_reason == "eos"


def test_expansion_stops_at_max_tokens() -> None:
    # the script would expand forever; the canvas must stop at max_tokens and expand be banned there
    tokens, model, out = run(lambda m: [EXPAND] * len(m), max_tokens=6, initial_masks=2)
    assert max(len(c) - 1 - len(PREFIX) - len(SUFFIX) - 1 for c in model.seen) == 6
    assert len(tokens) == 6 and EXPAND not in tokens and MASK not in tokens
    assert out.stop_reason == "length"


def test_zero_budget_gives_an_empty_completion_without_a_forward() -> None:
    tokens, model, out = run(grow_to([10]), max_tokens=0)
    assert tokens == [] and model.seen == []


def test_threshold_commits_several_slots_per_step() -> None:
    target = [30, 31, 32, 33]
    _, model, _ = run(grow_to(target), max_tokens=8, initial_masks=4, quality=1.0)
    # every scripted confidence is ~1.0, so at any tau all four slots commit in the first step
    assert len(model.seen) == 1


def test_cancel_between_steps() -> None:
    from diffusion_core.interface import Cancelled

    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(Cancelled):
        expand_sample(
            ScriptedModel(grow_to([1, 2, 3, 4, 5, 6])),
            FAMILY,
            Canvas(PREFIX, SUFFIX, 8),
            SamplingOptions(initial_masks=1),
            cancel,
        )


@pytest.fixture(scope="module")
def dreamon_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_family_dir(tmp_path_factory.mktemp("dreamon"), "dreamon")[0]


def test_engine_grows_and_shrinks_the_middle_for_dreamon_by_default(dreamon_dir: Path) -> None:
    engine = Engine.from_pretrained(dreamon_dir)
    assert engine.family.expand_id is not None
    c = engine.infill("def f(x):\n    ", "\n", max_tokens=12)
    assert c.tokens <= 12 and c.steps >= 1
    # with a fixed length the engine decodes a fixed canvas, as for the other Dream models
    off = SamplingOptions(length="fixed")
    fixed = engine.infill("def f(x):\n    ", "\n", max_tokens=12, options=off)
    p, s = engine.fit_context("def f(x):\n", "\n")  # the indentation is healed off (token_healing.py)
    ref = sample_batch(engine.model, engine.family, [Canvas(p, s, 12)], SamplingOptions())[0]
    assert fixed.text == engine.tokenizer.decode(ref.tokens)
