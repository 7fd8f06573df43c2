"""The seam between the language server and whatever fills the middle.

The server talks to a :class:`Backend`: a model id, a token counter and a batched, cancellable
``infill_batch``. :class:`EngineBackend` adapts anything with the engine's API
(``diffusion_core.engine.Engine``, or a remote client that mirrors it) and
:func:`make_backend` builds the local one. A remote backend plugs in by adding a branch to
:func:`make_backend`; nothing else in ``lsp_server`` needs to change.

Nothing here imports torch at module level: ``diffusion_core`` is imported inside
:func:`make_backend`, which runs in the engine worker thread, so ``diffill serve`` answers
``initialize`` before torch has even loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = ["Backend", "BackendCancelled", "EngineBackend", "InfillJob", "ModelDefaults", "make_backend"]

CancelCheck = Callable[[], bool]


class BackendCancelled(Exception):
    """The backend stopped between denoising steps because the cancel check said so."""


@dataclass(frozen=True)
class InfillJob:
    """One hole to fill, already cut to the model's budgets."""

    prefix: str
    suffix: str
    max_tokens: int = 64
    language: str | None = None
    quality: float = 0.5
    length_ensemble: bool = False


@dataclass(frozen=True)
class ModelDefaults:
    """Model choices from the ``diffill serve`` command line, used where settings leave them null."""

    model_path: str | None = None
    device: str | None = None
    dtype: str | None = None


@runtime_checkable
class Backend(Protocol):
    """What the engine worker needs from a model, local or remote."""

    @property
    def model_id(self) -> str: ...

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` costs in this model's budget (an estimate is fine for remote models)."""
        ...

    def infill_batch(self, jobs: Sequence[InfillJob], cancel: CancelCheck | None = None) -> list[str]:
        """Fill every job in one run; raise :class:`BackendCancelled` when ``cancel()`` turns True."""
        ...

    def close(self) -> None: ...


class EngineBackend:
    """Adapts an object with the ``diffusion_core.engine.Engine`` API to :class:`Backend`."""

    def __init__(self, engine: Any) -> None:
        from diffusion_core.engine import Cancelled, InfillRequest, SamplingOptions

        self.engine = engine
        self._cancelled_exc = Cancelled
        self._request = InfillRequest
        self._options = SamplingOptions
        self._counter = getattr(engine, "count_tokens", None)

    @property
    def model_id(self) -> str:
        return str(getattr(self.engine, "model_id", "unknown"))

    def count_tokens(self, text: str) -> int:
        if self._counter is not None:
            return int(self._counter(text))
        return len(text.encode("utf-8", "surrogatepass")) // 3 + 1  # a remote model: estimate

    def infill_batch(self, jobs: Sequence[InfillJob], cancel: CancelCheck | None = None) -> list[str]:
        requests = [
            self._request(
                prefix=j.prefix, suffix=j.suffix, max_tokens=j.max_tokens, language=j.language,
                options=self._options(quality=j.quality, length_ensemble=j.length_ensemble),
            )
            for j in jobs
        ]
        try:
            outs = self.engine.infill_batch(requests, cancel=cancel)
        except self._cancelled_exc as exc:
            raise BackendCancelled(str(exc)) from exc
        return [o.text for o in outs]

    def close(self) -> None:
        closer = getattr(self.engine, "close", None)
        if callable(closer):
            closer()
        self.engine = None


def make_backend(model_path: str | None, device: str | None, dtype: str | None) -> Backend:
    """Load the local engine (the embedded default model when ``model_path`` is None)."""
    from diffusion_core.engine import Engine

    return EngineBackend(Engine.from_pretrained(model_path, device=device, dtype=dtype))
