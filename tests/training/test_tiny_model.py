"""The tiny model (1.3M parameters, trained from scratch on a CPU; the test and smoke model)
ships inside the installed package, loads by its name, and completes."""

from __future__ import annotations

import json

import pytest

from diffusion_core.engine import Engine, tiny_model_dir

MODEL_DIR = tiny_model_dir()


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.from_pretrained("diffill-tiny")  # by name, from the installed package


def test_files_fit_the_package() -> None:
    files = {p.name: p.stat().st_size for p in MODEL_DIR.iterdir() if p.is_file()}
    assert {"config.json", "tokenizer.json", "MODEL_CARD.md"} <= set(files)
    assert any(n.endswith(".safetensors") for n in files)
    assert all(size < 15_000_000 for size in files.values())
    assert sum(files.values()) < 64_000_000
    cfg = json.loads((MODEL_DIR / "config.json").read_text())
    assert cfg["model_type"] == "diffill"


def test_loads_from_the_installed_package(engine: Engine) -> None:
    import diffusion_core

    assert MODEL_DIR.parent == __import__("pathlib").Path(diffusion_core.__file__).resolve().parent
    assert engine.model_id == "diffill-tiny"
    assert engine.family.mask_id == engine.tokenizer.token_to_id("<|mask|>")
    assert engine.family.eos_ids == (engine.tokenizer.token_to_id("<|endoftext|>"),)


def test_fills_a_simple_hole(engine: Engine) -> None:
    # An honest, deliberately easy hole: the trained 1.3M model gets a method's first parameter
    # right with a one-token budget (see MODEL_CARD.md for what it cannot do).
    c = engine.infill("class A:\n    def method(", ", x):\n        return x\n", max_tokens=1)
    assert c.text == "self"


def test_writes_a_missing_return_line(engine: Engine) -> None:
    # A missing early return, with the budget of the true line ("        return False\n", 4
    # tokens). The model writes a whole return line at the right indentation and ends it; it
    # picks the wrong value (True), which is as far as a 1.3M CPU-trained model gets.
    prefix = "def is_prime(n):\n    if n < 2:\n"
    suffix = "    for i in range(2, n):\n        if n % i == 0:\n            return False\n    return True\n"
    c = engine.infill(prefix, suffix, max_tokens=4)
    assert c.text.startswith("        return ") and c.text.endswith("\n")
    assert c.text.count("\n") == 1
