"""The one settings schema of the language server, and how client input is merged into it.

Where settings come from (later wins, field by field):

1. ``diffill serve`` flags (``--model``, ``--device``, ``--dtype``, ``--backend``, ``--api-key``)
   give the defaults (the API key also comes from the ``DIFFILL_API_KEY`` environment variable);
2. ``initializationOptions`` of the ``initialize`` request;
3. the ``diffill`` section pulled with ``workspace/configuration`` after ``initialized`` (when the
   client advertises ``workspace.configuration``);
4. ``workspace/didChangeConfiguration``: ``params.settings`` (either ``{"diffill": {...}}`` or the
   section itself); a null payload makes the server pull the section again.

Every source is a JSON object with the camelCase keys below; ``{"diffill": {...}}`` is unwrapped.
A bad field is reported on its own (``window/showMessage``, type Warning, one line per field:
``diffill.maxTokens: Expected `int` >= 1``) and keeps its previous value; the other fields still
apply. Unknown keys are reported too, so typos do not pass silently.

Keys (JSON name: type = default — meaning):

- ``modelPath``: str | null = null — model directory, or a hub id ``org/name[@revision]`` (from
  the Hugging Face cache, downloaded once when missing); null means the ``--model`` flag, else the
  default model (Diffill-Coder). Changing it (or ``device``/``dtype``) reloads the model in the background.
- ``backendUrl``: str | null = null — team mode: the http(s) URL of an OpenAI-compatible server
  whose ``/v1/completions`` accepts ``suffix`` (``diffill serve-http``, a load balancer in front of
  several, or another inference server), e.g. ``"http://gpu-box:8000"`` (``/v1`` is optional).
  When set, no local model is loaded and ``modelPath``/``device``/``dtype`` are unused; null or
  ``""`` means the ``--backend`` flag, else the local model. Changing any ``backend*`` field
  reconnects; an unreachable server or a rejected key is reported like a model that fails to load.
- ``backendApiKey``: str | null = null — sent as ``Authorization: Bearer KEY``; null or ``""``
  means the ``--api-key`` flag, else ``$DIFFILL_API_KEY``. ``diffill/stats`` shows it as ``"***"``.
- ``backendModel``: str | null = null — the model id to ask the server for; null means the first
  one its ``/v1/models`` lists.
- ``device``: str | null = null — ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; null picks automatically.
- ``dtype``: ``"float32" | "bfloat16" | "float16"`` | null = null — null: bf16 on CUDA, fp32 on CPU.
- ``enabled``: bool = true — master switch; false answers every request with no items.
- ``maxTokens``: int 1..512 = 64 — longest completion in tokens.
- ``maxLines``: int 1..200 = 8 — line cap of a multi-line completion (end of line / empty line).
- ``timeBudgetMs``: int 0..60000 = 1000 — after this long, a suggestion ends at the next line end
  (the line being written is always finished; like llama.cpp's ``t_max_predict_ms``), so a slow
  machine shows the first lines of a block instead of the whole block seconds later; 0: no limit.
- ``prefixTokens``: int 16..32768 = 1024 — context budget before the cursor, in model tokens.
- ``suffixTokens``: int 0..32768 = 256 — context budget after the cursor, in model tokens.
- ``extraContextTokens``: int 0..32768 = 0 — budget for snippets of other open / recently edited
  files of the same language, placed before the prefix (0 turns the ring buffer off).
- ``debounceMs``: int 0..5000 = 60 — wait after an Automatic trigger before asking the model
  (Invoked triggers never wait).
- ``quality``: float 0..1 = 0.7 — the engine's quality/speed knob (1 = best, slowest). With
  Diffill-Coder, 1 is exactly the base model's own greedy answer; lower values accept more of the
  adapter's drafts per step (faster, occasionally a different answer).
- ``length``: ``"auto" | "fixed" | "predict" | "ensemble" | "expand"`` = ``"auto"`` — how the
  engine chooses the completion's length: ``auto`` lets the model predict it when its checkpoint
  says it was trained to (``"length_prediction": true``), grows it for DreamOn, else uses
  ``maxTokens`` masks (``fixed``, also what the embedded model gets); ``ensemble`` tries several
  lengths at once; ``expand`` on a model without an expand token is an error (shown once).
- ``languages``: list[str] = ["*"] — language ids to complete; ``"*"`` means all, ``"-markdown"``
  excludes one (exclusions win).
- ``cacheSize``: int 0..100000 = 512 — completions kept in the LRU cache (0 disables it).
- ``cacheTtlS``: float 0..86400 = 600 — seconds a cached completion stays valid.
- ``prefetch``: bool = true — after showing a completion, compute the one that follows it in idle
  time, so accepting and continuing is instant.
- ``completionProvider``: ``"auto" | "on" | "off"`` = ``"auto"`` — whether ``initialize`` advertises
  ``completionProvider`` (the list-completion fallback). ``auto`` advertises it only to clients that
  do not announce ``textDocument.inlineCompletion``, so VS Code does not show the same text twice.
  Read from ``initializationOptions`` only (capabilities are fixed at ``initialize``); the
  ``textDocument/completion`` request is answered either way.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec

from diffusion_core.interface import LENGTH_POLICIES, QUALITY_RANGE, SamplingOptions

_DEFAULT = SamplingOptions()

__all__ = ["SECTION", "Settings", "check_backend_url", "is_for_us", "merge_settings", "unwrap_section"]

SECTION = "diffill"

_Dtype = Literal["float32", "bfloat16", "float16"]


class Settings(msgspec.Struct, rename="camel", kw_only=True, frozen=True):
    """Validated server settings; JSON names are camelCase (see the module docstring)."""

    model_path: str | None = None
    device: str | None = None
    dtype: _Dtype | None = None
    enabled: bool = True
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=512)] = 64
    max_lines: Annotated[int, msgspec.Meta(ge=1, le=200)] = 8
    time_budget_ms: Annotated[int, msgspec.Meta(ge=0, le=60000)] = 1000
    prefix_tokens: Annotated[int, msgspec.Meta(ge=16, le=32768)] = 1024
    suffix_tokens: Annotated[int, msgspec.Meta(ge=0, le=32768)] = 256
    extra_context_tokens: Annotated[int, msgspec.Meta(ge=0, le=32768)] = 0
    debounce_ms: Annotated[int, msgspec.Meta(ge=0, le=5000)] = 60
    # the ranges are SamplingOptions' own (diffusion_core/interface.py): one schema
    quality: Annotated[float, msgspec.Meta(ge=QUALITY_RANGE[0], le=QUALITY_RANGE[1])] = (
        SamplingOptions.quality
    )
    length: Literal[LENGTH_POLICIES] = "auto"
    languages: list[str] = msgspec.field(default_factory=lambda: ["*"])
    cache_size: Annotated[int, msgspec.Meta(ge=0, le=100000)] = 512
    cache_ttl_s: Annotated[float, msgspec.Meta(ge=0.0, le=86400.0)] = 600.0
    prefetch: bool = True
    completion_provider: Literal["auto", "on", "off"] = "auto"
    backend_url: str | None = None
    backend_api_key: str | None = None
    backend_model: str | None = None

    def __post_init__(self) -> None:
        if self.backend_url:  # msgspec reports the ValueError as this field's validation error
            check_backend_url(self.backend_url)

    def language_enabled(self, language_id: str | None) -> bool:
        """Whether completions are offered for ``language_id`` (exclusions beat inclusions)."""
        lang = (language_id or "").lower()
        items = [s.lower() for s in self.languages]
        if f"-{lang}" in items:
            return False
        return "*" in items or lang in items

    def model_key(self) -> tuple[str | None, ...]:
        """What identifies the loaded model (local or remote): a change of it means a reload."""
        return (
            self.model_path,
            self.device,
            self.dtype,
            self.backend_url,
            self.backend_api_key,
            self.backend_model,
        )

    def sampling_key(self) -> tuple:
        """The settings that change the model's output, for cache keys."""
        return (
            self.max_tokens,
            self.prefix_tokens,
            self.suffix_tokens,
            self.extra_context_tokens,
            round(self.quality, 4),
            self.length,
        )

    def to_json(self, redact: bool = True) -> dict[str, Any]:
        """The settings as the client would write them (camelCase keys); the API key is masked
        unless ``redact`` is False, because these go to status bars and logs."""
        data = msgspec.to_builtins(self)
        if redact and data.get("backendApiKey"):
            data["backendApiKey"] = "***"
        return data


def check_backend_url(url: str) -> str:
    """Reject what cannot be an OpenAI-compatible base URL, with a message that says what is wrong."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f'expected an http:// or https:// URL such as "http://gpu-box:8000", got {url!r}')
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ValueError(f"invalid port in {url!r}") from None
    return url.strip()


_FIELDS = {f.encode_name: f for f in msgspec.structs.fields(Settings)}


def unwrap_section(payload: Any) -> Any:
    """Accept both ``{"diffill": {...}}`` and the bare section, as clients send either."""
    if isinstance(payload, dict) and isinstance(payload.get(SECTION), dict):
        return payload[SECTION]
    return payload


def is_for_us(payload: Any) -> bool:
    """Whether a didChangeConfiguration payload carries our settings (clients also send other
    sections, or nothing, and expect the server to pull)."""
    if not isinstance(payload, dict) or not payload:
        return False
    return isinstance(payload.get(SECTION), dict) or any(k in _FIELDS for k in payload)


def merge_settings(base: Settings, payload: Any) -> tuple[Settings, list[str]]:
    """Apply a client payload over ``base`` field by field.

    Returns the new settings and one human-readable error per rejected field. A bad field keeps
    its value from ``base`` instead of failing the whole payload, so one typo in an editor's
    config never turns completions off.
    """
    payload = unwrap_section(payload)
    if payload is None:
        return base, []
    if not isinstance(payload, dict):
        return base, [f"{SECTION}: expected an object of settings, got {type(payload).__name__}"]
    changes: dict[str, Any] = {}
    errors: list[str] = []
    for key, value in payload.items():
        field = _FIELDS.get(key)
        if field is None:
            errors.append(f"{SECTION}.{key}: unknown setting (known: {', '.join(sorted(_FIELDS))})")
            continue
        try:
            one = msgspec.convert({key: value}, Settings)
        except msgspec.ValidationError as exc:
            errors.append(f"{SECTION}.{key}: {str(exc).split(' - at ')[0]}")
            continue
        changes[field.name] = getattr(one, field.name)
    return (msgspec.structs.replace(base, **changes) if changes else base), errors
