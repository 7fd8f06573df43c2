"""The public API: load a checkpoint directory, fill the middle between a prefix and a suffix.

Everything outside ``diffusion_core`` (the language server, the HTTP server, the CLI, the
benchmarks) goes through :class:`Engine`; nothing here imports LSP or HTTP code.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .checkpoint import LoadedCheckpoint, load_checkpoint
from .expand_sampler import expand_sample
from .families import FamilySpec
from .interface import Cancelled, Completion, InfillRequest, SamplingOptions
from .length import predict_lengths, resolve_length
from .sampler import Canvas, SampleOutput, sample_batch
from .tokenizer import Tokenizer

__all__ = ["Cancelled", "Completion", "Engine", "InfillRequest", "SamplingOptions", "default_model_dir"]

CancelCheck = Callable[[], bool]
log = logging.getLogger(__name__)


def default_model_dir() -> Path:
    """The embedded default model that ships inside the package."""
    return Path(__file__).resolve().parent / "default_model"


@dataclass
class _Budget:
    prefix_tokens: int
    suffix_tokens: int


@dataclass
class Engine:
    """Owns one model. Calls are serialised by a lock: one worker owns the model."""

    model: torch.nn.Module
    tokenizer: Tokenizer
    family: FamilySpec
    model_id: str
    device: torch.device
    dtype: torch.dtype
    max_prefix_tokens: int = 1536
    max_suffix_tokens: int = 512
    default_options: SamplingOptions = field(default_factory=SamplingOptions)
    cuda_graphs: bool = (
        True  # replay denoising steps as CUDA graphs (CUDA only; DIFFILL_CUDA_GRAPHS=0 disables)
    )
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _runner: torch.nn.Module | None = field(default=None, repr=False)

    @property
    def runner(self) -> torch.nn.Module:
        """What the sampler calls: the model itself, or on CUDA its graph-replaying wrapper."""
        if self._runner is None:
            use_graphs = (
                self.cuda_graphs
                and self.device.type == "cuda"
                and os.environ.get("DIFFILL_CUDA_GRAPHS", "1") != "0"
            )
            if use_graphs:
                from .cuda_graphs import GraphedTransformer

                self._runner = GraphedTransformer(self.model)
            else:
                self._runner = self.model
        return self._runner

    def _sample(self, canvases: list[Canvas], opts: SamplingOptions, cancel: CancelCheck | None):  # noqa: ANN202
        length = resolve_length(opts, self.family)
        if length == "expand":
            # the canvas changes length every step: one canvas at a time, eager forwards
            return [expand_sample(self.model, self.family, c, opts, cancel) for c in canvases]
        opts = replace(opts, length=length)
        if length == "predict":
            return self._sample_predicted(canvases, opts, cancel)
        return self._sample_fixed(canvases, opts, cancel)

    def _sample_predicted(self, canvases: list[Canvas], opts: SamplingOptions, cancel: CancelCheck | None):  # noqa: ANN202
        """One forward predicts each middle's length, then each is decoded with that many masks."""
        if cancel is not None and cancel():
            raise Cancelled()
        lengths = predict_lengths(self.model, self.family, canvases)
        todo = [i for i, n in enumerate(lengths) if n > 0]
        outs = [SampleOutput([], 1, "eos") for _ in canvases]  # length 0: the model ends at once
        sized = [replace(canvases[i], max_tokens=lengths[i]) for i in todo]
        for i, out in zip(todo, self._sample_fixed(sized, opts, cancel)):
            outs[i] = replace(out, steps=out.steps + 1)
        return outs

    def _sample_fixed(self, canvases: list[Canvas], opts: SamplingOptions, cancel: CancelCheck | None):  # noqa: ANN202
        if not canvases:
            return []
        try:
            return sample_batch(self.runner, self.family, canvases, opts, cancel=cancel)
        except (RuntimeError, NotImplementedError) as e:
            if self.runner is self.model:
                raise
            # a capture that fails on this driver/shape must not cost the user a completion
            log.warning("CUDA graph path failed (%s); falling back to eager kernels", e)
            self._runner = self.model
            return sample_batch(self.model, self.family, canvases, opts, cancel=cancel)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> Engine:
        """Load a Hugging Face-format directory (or the embedded default when ``path`` is None).

        bf16 on CUDA and fp32 on CPU unless ``dtype`` says otherwise. Never runs code from the
        directory: safetensors and JSON only.
        """
        ckpt: LoadedCheckpoint = load_checkpoint(path or default_model_dir(), device=device, dtype=dtype)
        engine = cls(
            model=ckpt.model,
            tokenizer=ckpt.tokenizer,
            family=ckpt.family,
            model_id=ckpt.model_id,
            device=ckpt.device,
            dtype=ckpt.dtype,
        )
        engine.fit_budgets_to_context(ckpt.model.cfg.max_position)
        return engine

    def fit_budgets_to_context(self, max_position: int, middle_reserve: int = 128) -> None:
        """Keep prefix + middle + suffix inside the positions the model was trained on: a small
        model trained on 512-token windows degrades badly on 2k-token canvases (3:1 prefix:suffix)."""
        fixed = len(self.family.begin_ids) + len(self.family.end_ids) + middle_reserve
        room = max_position - fixed
        if room <= 0 or room >= self.max_prefix_tokens + self.max_suffix_tokens:
            return
        self.max_prefix_tokens = max(1, room * 3 // 4)
        self.max_suffix_tokens = max(1, room - self.max_prefix_tokens)

    # ----------------------------------------------------------------------------- context
    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def fit_context(
        self, prefix: str, suffix: str, prefix_tokens: int | None = None, suffix_tokens: int | None = None
    ) -> tuple[list[int], list[int]]:
        """Token ids of the prefix and suffix, cut to their budgets from the cursor outwards."""
        pb = self.max_prefix_tokens if prefix_tokens is None else prefix_tokens
        sb = self.max_suffix_tokens if suffix_tokens is None else suffix_tokens
        return self.tokenizer.encode_prefix(prefix, pb), self.tokenizer.encode_suffix(suffix, sb)

    # ----------------------------------------------------------------------------- infill
    def infill(
        self,
        prefix: str,
        suffix: str = "",
        max_tokens: int = 64,
        options: SamplingOptions | None = None,
        cancel: CancelCheck | None = None,
        language: str | None = None,
    ) -> Completion:
        """Fill the hole between ``prefix`` and ``suffix``. ``cancel`` is polled between denoising
        steps; when it returns True the call raises :class:`Cancelled`."""
        req = InfillRequest(prefix, suffix, max_tokens, options, language)
        return self.infill_batch([req], cancel=cancel)[0]

    def infill_batch(
        self, requests: Sequence[InfillRequest], cancel: CancelCheck | None = None
    ) -> list[Completion]:
        """Fill several holes in one batched run (requests with equal options share forwards)."""
        if not requests:
            return []
        t0 = time.perf_counter()
        results: list[Completion | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            if r.max_tokens < 0:
                raise ValueError("max_tokens must be >= 0")
            opts = r.options or self.default_options
            groups.setdefault(_options_key(opts), []).append(i)
        with self._lock, torch.inference_mode():
            for idx in groups.values():
                opts = requests[idx[0]].options or self.default_options
                canvases = []
                for i in idx:
                    p, s = self.fit_context(requests[i].prefix, requests[i].suffix)
                    canvases.append(Canvas(prefix=p, suffix=s, max_tokens=requests[i].max_tokens))
                outs = self._sample(canvases, opts, cancel)
                for i, out in zip(idx, outs):
                    results[i] = Completion(
                        text=self.tokenizer.decode(out.tokens),
                        tokens=len(out.tokens),
                        steps=out.steps,
                        latency_ms=0.0,
                        stop_reason=out.stop_reason,
                    )
        latency = (time.perf_counter() - t0) * 1000.0
        return [replace(c, latency_ms=latency) for c in results if c is not None]

    # ----------------------------------------------------------------------------- info
    def info(self) -> dict:
        cfg = self.model.cfg
        return {
            "model_id": self.model_id,
            "family": self.family.name,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
            "shifted_logits": self.family.shifted,
            "length_policy": resolve_length(self.default_options, self.family),
            "mask_id": self.family.mask_id,
            "eos_ids": list(self.family.eos_ids),
            "pad_id": self.family.pad_id,
            "begin_ids": list(self.family.begin_ids),
            "end_ids": list(self.family.end_ids),
            "vocab_size": cfg.vocab_size,
            "config": cfg.to_dict(),
        }


def _options_key(o: SamplingOptions) -> tuple:
    return tuple(sorted(vars(o).items()))
