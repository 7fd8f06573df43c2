"""The stop rule of a left-to-right decode: stop strings, and the time budget that ends a
suggestion at a line end (diffusion_core/stopping.py), on a clock the test moves."""

from __future__ import annotations

from diffusion_core.stopping import StopRule


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _rule(budget_ms: float | None, stops: tuple[str, ...] = ()) -> tuple[StopRule, Clock]:
    clock = Clock()
    # "tokens" are characters here: decode joins them
    return StopRule(lambda toks: "".join(map(chr, toks)), stops, budget_ms, clock), clock


def _ids(text: str) -> list[int]:
    return [ord(c) for c in text]


def test_before_the_budget_a_block_keeps_growing() -> None:
    rule, clock = _rule(500)
    clock.now += 0.499
    assert not rule(_ids("for x in xs:\n    total += x\n    "))
    assert rule.cut("for x in xs:\n    total += x\n    ") == ("for x in xs:\n    total += x\n    ", None)


def test_after_the_budget_the_line_being_written_is_finished() -> None:
    rule, clock = _rule(500)
    clock.now += 0.6
    assert not rule(_ids("for x in"))  # never cut inside the first line
    assert not rule(_ids("\n\n    "))  # leading blank lines are not a line of the suggestion
    assert rule(_ids("for x in xs:\n    tot"))
    assert rule.timed_out
    assert rule.cut("for x in xs:\n    tot") == ("for x in xs:", "time")
    # whole lines are kept: two committed at once stay
    assert rule.cut("a = 1\nb = 2\nc") == ("a = 1\nb = 2", "time")


def test_a_stop_string_wins_and_no_rule_asks_nothing() -> None:
    rule, clock = _rule(0, stops=(";",))
    assert rule(_ids("x = 1;"))
    assert rule.cut("x = 1; y\nz") == ("x = 1", "stop")
    plain, _ = _rule(None)
    assert not plain.active and not plain(_ids("a\nb\nc"))
    assert plain.cut("a\nb") == ("a\nb", None)
