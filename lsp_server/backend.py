"""Which backend the language server talks to.

The server talks to a :class:`diffusion_core.interface.Backend` (a model id, a token counter and
a batched, cancellable ``infill_batch``): the local ``diffusion_core.engine.Engine`` or a
:class:`lsp_server.remote.RemoteBackend`. :func:`make_backend` builds one of the two; nothing
else in ``lsp_server`` knows which it talks to.

Nothing here imports torch at module level: the engine is imported inside :func:`make_backend`,
which runs in the engine worker thread, so ``diffill serve`` answers ``initialize`` before torch
has even loaded; in team mode (a backend URL) torch is never imported at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from diffusion_core.interface import Backend

__all__ = ["Backend", "ModelDefaults", "make_backend"]


@dataclass(frozen=True)
class ModelDefaults:
    """Model choices from the ``diffill serve`` command line, used where settings leave them null."""

    model_path: str | None = None
    device: str | None = None
    dtype: str | None = None
    backend_url: str | None = None  # team mode: --backend
    api_key: str | None = None  # --api-key


# builds the local engine from (model path, device, dtype); the command line hands it in, so the
# language server reaches the engine only through the seam (diffusion_core/interface.py)
LocalLoader = Callable[[str | None, str | None, str | None], Backend]


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
        return remote
    if load_local is None:
        raise RuntimeError(
            "this language server has no local model loader (start it with `diffill serve`, or "
            "set diffill.backendUrl to use a team server)"
        )
    return load_local(model_path, device, dtype)
