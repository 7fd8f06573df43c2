"""Length policies: the model predicts the middle's length in one forward (length.py), the
engine picks the policy a checkpoint was trained for, and a wrong request is a clear error."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from model_fixtures import make_tiny_model_dir
from test_sampler import EOS, MASK, VOCAB, PositionOracle, family

from diffusion_core.checkpoint import CheckpointError, load_checkpoint
from diffusion_core.engine import Engine
from diffusion_core.families import FamilySpec
from diffusion_core.length import end_probabilities, predict_lengths, resolve_length
from diffusion_core.sampler import Canvas, SamplingOptions, sample_batch


def end_oracle(p_end_at: dict[int, float], size: int = 64) -> PositionOracle:
    """Output position p puts ``p_end_at[p]`` (default 0.1) on the end token, the rest on token 7."""
    model = PositionOracle([7] * size)
    with torch.no_grad():
        for p in range(size):
            pe = p_end_at.get(p, 0.1)
            model.weight[:, p] = math.log(1e-6)
            model.weight[EOS, p] = math.log(pe)
            model.weight[7, p] = math.log(1 - pe)
    return model


@pytest.mark.parametrize("shifted", [False, True])
def test_the_first_position_whose_end_probability_reaches_one_half_is_the_length(shifted: bool) -> None:
    # two canvases with different prefix lengths share one left-padded batch; each reads its own
    # positions (canvas positions start at 0, the middle starts after begin + prefix)
    shift = 1 if shifted else 0
    short = Canvas([5, 6], [9], 10)  # middle slot j sits at position 3 + j
    long_ = Canvas(list(range(5, 15)), [], 10)  # middle slot j sits at position 11 + j
    model = end_oracle({3 + 4 - shift: 0.6, 3 + 5 - shift: 0.9, 11 + 2 - shift: 0.55})
    probs = end_probabilities(model, family(shifted), [short, long_])
    assert [len(p) for p in probs] == [10, 10]
    assert probs[0][4] == pytest.approx(0.6, abs=1e-4) and probs[0][3] == pytest.approx(0.1, abs=1e-4)
    # the short canvas's middle is left-padded to start where the long one's does; each still
    # reads the end probabilities of its own positions
    assert predict_lengths(model, family(shifted), [short, long_]) == [4, 2]


def test_no_end_in_reach_means_all_masks_and_an_end_at_once_means_empty() -> None:
    assert predict_lengths(end_oracle({}), family(False), [Canvas([5], [], 6)]) == [6]
    assert predict_lengths(end_oracle({2: 0.97}), family(False), [Canvas([5], [], 6)]) == [0]


def test_the_mask_and_other_uncommittable_tokens_do_not_dilute_the_end_probability() -> None:
    # at middle slot 2 (position 5): 0.6 on the mask, 0.3 on the end, 0.1 on a word; among
    # committable tokens the end has 0.75
    model = end_oracle({})
    with torch.no_grad():
        model.weight[:, 5] = math.log(1e-6)
        for tok, p in ((MASK, 0.6), (EOS, 0.3), (7, 0.1)):
            model.weight[tok, 5] = math.log(p)
    assert predict_lengths(model, family(False), [Canvas([5, 6], [], 8)]) == [2]


def test_auto_picks_the_policy_the_checkpoint_was_trained_for() -> None:
    plain = family(False)
    trained = replace(plain, predicts_length=True)
    dreamon = replace(plain, expand_id=VOCAB - 2)
    auto = SamplingOptions()
    assert resolve_length(auto, plain) == "fixed"
    assert resolve_length(auto, trained) == "predict"
    assert resolve_length(auto, dreamon) == "expand"
    assert resolve_length(SamplingOptions(length="ensemble"), trained) == "ensemble"
    with pytest.raises(ValueError, match="expand token"):
        resolve_length(SamplingOptions(length="expand"), plain)
    with pytest.raises(ValueError, match="length must be one of"):
        SamplingOptions(length="longest")


@pytest.fixture(scope="module")
def predicting_engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    path = make_tiny_model_dir(tmp_path_factory.mktemp("len") / "m", shifted=True, predicts_length=True)
    return Engine.from_pretrained(path)


def test_a_checkpoint_that_says_it_predicts_length_is_decoded_with_the_predicted_length(
    predicting_engine: Engine,
) -> None:
    e = predicting_engine
    assert e.family.predicts_length
    prefix, suffix = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"
    got = e.infill(prefix, suffix, max_tokens=12)
    p, s = e.fit_context(prefix, suffix)
    n = predict_lengths(e.model, e.family, [Canvas(p, s, 12)])[0]
    fixed = SamplingOptions(length="fixed")
    want = sample_batch(e.model, e.family, [Canvas(p, s, n)], fixed)[0] if n else None
    assert got.text == (e.tokenizer.decode(want.tokens) if want else "")
    assert got.steps == (want.steps + 1 if want else 1)  # the length forward counts as a step
    # an explicit fixed length bypasses the prediction
    plain = e.infill(prefix, suffix, max_tokens=12, options=fixed)
    ref = sample_batch(e.model, e.family, [Canvas(p, s, 12)], fixed)[0]
    assert plain.text == e.tokenizer.decode(ref.tokens)


def test_length_prediction_flag_round_trips_and_a_bad_value_names_the_key(tmp_path: Path) -> None:
    d = make_tiny_model_dir(tmp_path / "m", predicts_length=True)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["length_prediction"] is True
    cfg["length_prediction"] = "yes"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="length_prediction"):
        load_checkpoint(d)


def test_a_family_without_the_flag_keeps_fixed_length(tmp_path: Path) -> None:
    e = Engine.from_pretrained(make_tiny_model_dir(tmp_path / "m"))
    assert isinstance(e.family, FamilySpec) and not e.family.predicts_length
    a = e.infill("x = ", "\n", max_tokens=6)
    b = e.infill("x = ", "\n", max_tokens=6, options=SamplingOptions(length="fixed"))
    assert (a.text, a.steps) == (b.text, b.steps)
