"""Token healing: the indentation of a blank cursor line is not shown to the model, and not
typed twice (the measured failure: ``def is_even(n):\\n    |`` gave ``"    return ..."``)."""

from __future__ import annotations

from diffusion_core.engine import Engine, tiny_model_dir
from diffusion_core.interface import InfillRequest
from diffusion_core.token_healing import heal_prefix, unheal


def test_only_the_indentation_of_a_blank_last_line_is_taken_off() -> None:
    assert heal_prefix("def f():\n    ") == ("def f():\n", "    ")
    assert heal_prefix("if x:\n\t\t") == ("if x:\n", "\t\t")
    assert heal_prefix("    ") == ("", "    ")
    assert heal_prefix("    return ") == ("    return ", "")  # after code: untouched
    assert heal_prefix("x = 1\n") == ("x = 1\n", "")


def test_the_answer_continues_what_the_user_typed() -> None:
    assert unheal("    return n", "    ") == "return n"
    assert unheal("        return n", "    ") == "    return n"  # the model wants one level deeper
    assert unheal("  return n", "    ") == "return n"  # shallower: keep the user's indentation
    assert unheal("return n", "    ") == "return n"
    assert unheal("    return n", "") == "    return n"


def test_the_engine_heals_before_the_model_runs(monkeypatch) -> None:  # noqa: ANN001
    engine = Engine.from_pretrained(tiny_model_dir(), device="cpu")
    seen: list[str] = []
    real = engine.fit_context

    def spy(prefix: str, suffix: str, *a, **kw):  # noqa: ANN002, ANN003, ANN202
        seen.append(prefix)
        return real(prefix, suffix, *a, **kw)

    monkeypatch.setattr(engine, "fit_context", spy)
    monkeypatch.setattr(engine.tokenizer, "decode", lambda ids: "    pass")
    (out,) = engine.infill_batch([InfillRequest("def f():\n    ", "\n", max_tokens=4)])
    assert seen == ["def f():\n"]
    assert out.text == "pass"
