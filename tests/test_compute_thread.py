"""Every model computation runs on one thread (diffusion_core/compute_thread.py), whichever thread
asks: libgomp makes every op slower in a second thread that runs parallel regions."""

from __future__ import annotations

import contextvars
import threading

import pytest

from diffusion_core.compute_thread import NAME, on_compute_thread
from diffusion_core.engine import Engine, InfillRequest, tiny_model_dir


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.from_pretrained(tiny_model_dir(), device="cpu")


def test_the_engine_loads_and_decodes_on_the_compute_thread_whoever_calls(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    where: list[str] = []
    real = engine._sample
    spy = lambda *a: where.append(threading.current_thread().name) or real(*a)  # noqa: E731
    monkeypatch.setattr(engine, "_sample", spy)
    request = InfillRequest("def add(a, b):\n    return ", "\n", max_tokens=4)
    first = engine.infill_batch([request])
    worker = threading.Thread(target=lambda: engine.infill_batch([request]))
    worker.start()
    worker.join()
    assert where == [NAME, NAME]
    assert engine.infill_batch([request])[0].text == first[0].text  # same answers from any caller
    loaded = on_compute_thread(lambda: threading.current_thread())
    assert loaded.name == NAME and loaded is not threading.current_thread()


def test_errors_reach_the_caller_and_a_call_from_the_thread_itself_runs_at_once(engine: Engine) -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        engine.infill_batch([InfillRequest("x = ", "", max_tokens=-1)])
    # nested: no deadlock, the same thread
    inner = on_compute_thread(lambda: on_compute_thread(lambda: threading.current_thread().name))
    assert inner == NAME


def test_the_callers_context_variables_go_with_the_call() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")
    token = var.set("the language server")
    try:
        assert on_compute_thread(var.get) == "the language server"
    finally:
        var.reset(token)
    assert on_compute_thread(var.get) == "nobody"
