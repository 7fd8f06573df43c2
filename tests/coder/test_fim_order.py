"""The prompt layouts Diffill-Coder can use (coder/family.py) and the config key that picks one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from diffusion_core.checkpoint import CheckpointError
from diffusion_core.coder.family import fim_prompt
from diffusion_core.engine import Engine

FIM = (900, 901, 902)  # <|fim_prefix|>, <|fim_suffix|>, <|fim_middle|>


def test_the_two_layouts() -> None:
    assert fim_prompt(FIM, "psm", [1, 2], [3]) == [900, 1, 2, 901, 3, 902]
    # spm: the prefix last, so the middle continues it and typing at the cursor changes only the end
    assert fim_prompt(FIM, "spm", [1, 2], [3]) == [900, 901, 3, 902, 1, 2]
    with pytest.raises(ValueError, match="'sp'"):
        fim_prompt(FIM, "sp", [1], [2])


@pytest.mark.parametrize("order", ["psm", "spm"])
def test_the_config_picks_the_order(coder_dirs: tuple[Path, Path], tmp_path: Path, order: str) -> None:
    base, adapter = coder_dirs
    mine = tmp_path / "adapter"
    shutil.copytree(adapter, mine)
    cfg = json.loads((mine / "config.json").read_text())
    (mine / "config.json").write_text(json.dumps({**cfg, "fim_order": order}))
    eng = Engine.from_pretrained(mine, base=base, device="cpu", dtype="fp32", weights="plain")
    assert eng.family.fim_order == order
    seen: list[list[int]] = []
    real = eng.model.forward

    def spy(ids, *args, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen.append(ids[0].tolist())
        return real(ids, *args, **kw)

    eng.model.forward = spy
    eng.infill("x = 1\ny = ", "\nprint(y)\n", max_tokens=3)
    p, s = eng.fit_context("x = 1\ny = ", "\nprint(y)\n")
    ctx = fim_prompt(eng.family.fim_ids, order, p, s)
    assert seen[0][: len(ctx)] == ctx  # the prompt the base ran (the draft window follows it)


def test_a_bad_order_names_the_file(coder_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    base, adapter = coder_dirs
    mine = tmp_path / "adapter"
    shutil.copytree(adapter, mine)
    cfg = json.loads((mine / "config.json").read_text())
    (mine / "config.json").write_text(json.dumps({**cfg, "fim_order": "mps"}))
    with pytest.raises(CheckpointError, match=r"fim_order.*config\.json.*'mps'"):
        Engine.from_pretrained(mine, base=base, device="cpu", dtype="fp32", weights="plain")
