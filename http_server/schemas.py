"""Request bodies of the OpenAI-compatible API, validated by msgspec.

Why msgspec: one decode call both parses and type-checks, and its error messages name the
offending field (``... at `$.max_tokens```), which goes straight into the 400 body. Unknown
fields are ignored so clients that send newer OpenAI options keep working.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["ChatMessage", "ChatRequest", "CompletionRequest", "StreamOptions", "TextPart"]


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class CompletionRequest(msgspec.Struct, kw_only=True):
    """``POST /v1/completions``: the text before the cursor is ``prompt``, after it ``suffix``."""

    prompt: str | list[str]
    suffix: str | None = None
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    echo: bool = False
    seed: int | None = None
    logprobs: int | None = None
    best_of: int | None = None
    user: str | None = None
    quality: float | None = None  # Diffill extension: 0 = fastest, 1 = best
    length: str | None = None  # Diffill extension: "auto" | "fixed" | "predict" | "ensemble" | "expand"
    # Diffill extension: after this many ms, end at the next line end (diffusion_core/stopping.py)
    time_budget_ms: Annotated[float, msgspec.Meta(ge=0)] | None = None


class TextPart(msgspec.Struct, kw_only=True):
    type: str
    text: str | None = None


class ChatMessage(msgspec.Struct, kw_only=True):
    role: str
    content: str | list[TextPart] | None = None
    name: str | None = None


class ChatRequest(msgspec.Struct, kw_only=True):
    """``POST /v1/chat/completions`` (instruct checkpoints only)."""

    messages: list[ChatMessage]
    model: str | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    user: str | None = None
    quality: float | None = None
