"""Chat templates: turn OpenAI chat messages into the prompt an instruct checkpoint was tuned on.

The template comes from the checkpoint (``chat_template`` in tokenizer_config.json, or a
``chat_template.jinja`` file beside it). It is third-party text, so it is rendered in Jinja's
immutable sandbox: a template can format strings but cannot reach Python internals or files.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = ["ChatTemplate", "ChatTemplateError", "load_chat_template"]


class ChatTemplateError(ValueError):
    """The messages were rejected by the template (its ``raise_exception``) or it failed to render."""


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(message)


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _token_text(value: Any) -> str:
    if isinstance(value, dict):  # {"content": "<|endoftext|>", ...}
        return str(value.get("content", ""))
    return "" if value is None else str(value)


class ChatTemplate:
    """A compiled, sandboxed chat template plus the special-token strings it may reference."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._template = env.from_string(source)  # TemplateSyntaxError surfaces at load time

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except ChatTemplateError:
            raise
        except (TemplateError, TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            raise ChatTemplateError(f"chat template failed to render: {exc}") from exc


def load_chat_template(model_dir: str | Path) -> ChatTemplate | None:
    """The checkpoint's chat template, or None for a base (non-instruct) model."""
    model_dir = Path(model_dir)
    cfg: dict[str, Any] = {}
    cfg_path = model_dir / "tokenizer_config.json"
    if cfg_path.is_file():
        loaded = json.loads(cfg_path.read_text(encoding="utf-8"))
        cfg = loaded if isinstance(loaded, dict) else {}
    source = cfg.get("chat_template")
    if isinstance(source, list):  # named templates: [{"name": "default", "template": "..."}]
        named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
        source = named.get("default") or next(iter(named.values()), None)
    jinja_file = model_dir / "chat_template.jinja"
    if not source and jinja_file.is_file():
        source = jinja_file.read_text(encoding="utf-8")
    if not isinstance(source, str) or not source.strip():
        return None
    return ChatTemplate(source, _token_text(cfg.get("bos_token")), _token_text(cfg.get("eos_token")))
