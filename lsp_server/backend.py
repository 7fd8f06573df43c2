"""The seam between the language server and whatever fills the middle.

The server talks to a :class:`Backend`: a model id, a token counter and a batched, cancellable
``infill_batch``. :class:`EngineBackend` adapts anything with the engine's API
(``diffusion_core.engine.Engine``, or :class:`lsp_server.remote.RemoteBackend`, which mirrors it
over HTTP) and :func:`make_backend` builds one of the two; nothing else in ``lsp_server`` knows
which it talks to.

Nothing here imports torch at module level: the engine is imported inside :func:`make_backend`,
which runs in the engine worker thread, so ``diffill serve`` answers ``initialize`` before torch
has even loaded; in team mode (a backend URL) torch is never imported at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from diffusion_core.interface import CancelCheck

__all__ = ["Backend", "BackendCancelled", "EngineBackend", "InfillJob", "ModelDefaults", "make_backend"]


class BackendCancelled(Exception):
    """The backend stopped between denoising steps because the cancel check said so."""


@dataclass(frozen=True)
class InfillJob:
    """One hole to fill, already cut to the model's budgets."""

    prefix: str
    suffix: str
    max_tokens: int = 64
    language: str | None = None
    quality: float = 0.7
    length: str = "auto"
    stop: tuple[str, ...] = ()  # end the middle at the first of these (a newline mid-line)


@dataclass(frozen=True)
class ModelDefaults:
    """Model choices from the ``diffill serve`` command line, used where settings leave them null."""

    model_path: str | None = None
    device: str | None = None
    dtype: str | None = None
    backend_url: str | None = None  # team mode: --backend
    api_key: str | None = None  # --api-key


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
        from diffusion_core.interface import Cancelled, InfillRequest, SamplingOptions  # torch-free

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
                prefix=j.prefix,
                suffix=j.suffix,
                max_tokens=j.max_tokens,
                language=j.language,
                options=self._options(quality=j.quality, length=j.length),
                stop=j.stop,
            )
            for j in jobs
        ]
        try:
            outs = self.engine.infill_batch(requests, cancel=cancel)
        except self._cancelled_exc as exc:
            raise BackendCancelled(str(exc)) from exc
        return [o.text for o in outs]

    def stats(self) -> dict[str, Any]:
        """The engine's own counters where it has them (context K/V reuse, for the status)."""
        info = getattr(self.engine, "prefix_cache", None)
        return info.stats() if info is not None and hasattr(info, "stats") else {}

    def close(self) -> None:
        closer = getattr(self.engine, "close", None)
        if callable(closer):
            closer()
        self.engine = None


# builds the local engine from (model path, device, dtype); the command line hands it in, so the
# language server reaches the engine only through the seam (diffusion_core/interface.py)
LocalLoader = Callable[[str | None, str | None, str | None], Any]


def make_backend(
    model_path: str | None,
    device: str | None,
    dtype: str | None,
    backend_url: str | None = None,
    api_key: str | None = None,
    remote_model: str | None = None,
    *,
    load_local: LocalLoader | None = None,
) -> Backend:
    """Connect to ``backend_url`` when one is given (team mode), else load the local engine with
    ``load_local`` (the default model when ``model_path`` is None).

    The remote server is asked for its models right away, so an unreachable URL or a rejected
    key fails here -- reported once, as a model that does not load -- and not on every request.
    """
    if backend_url:
        from .remote import RemoteBackend

        remote = RemoteBackend(backend_url, api_key=api_key or None, model=remote_model or None)
        try:
            remote.check()
        except BaseException:
            remote.close()
            raise
        return EngineBackend(remote)
    if load_local is None:
        raise RuntimeError(
            "this language server has no local model loader (start it with `diffill serve`, or "
            "set diffill.backendUrl to use a team server)"
        )
    return EngineBackend(load_local(model_path, device, dtype))
