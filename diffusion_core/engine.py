"""The public API: load a checkpoint directory, fill the middle between a prefix and a suffix.

Everything outside ``diffusion_core`` (the language server, the HTTP server, the CLI, the
benchmarks) goes through :class:`Engine`; nothing here imports LSP or HTTP code.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .checkpoint import CheckpointError, LoadedCheckpoint, load_checkpoint
from .coder.prefix_cache import PrefixCache
from .compute_thread import on_compute_thread
from .expand_sampler import expand_sample
from .families import FamilySpec
from .interface import (
    ANCHOR_CHARS,
    CancelCheck,
    Cancelled,
    Completion,
    InfillRequest,
    SamplingOptions,
    cut_prefix,
    cut_suffix,
)
from .length import predict_lengths, resolve_length
from .model import RowAdapter
from .sampler import Canvas, SampleOutput, sample_batch
from .stopping import StopRule
from .token_healing import heal_prefix, unheal
from .tokenizer import Tokenizer

__all__ = [
    "Cancelled",
    "Completion",
    "Engine",
    "InfillRequest",
    "SamplingOptions",
    "default_model_dir",
    "resolve_model_path",
    "tiny_model_dir",
]

log = logging.getLogger(__name__)

# names a user may give instead of a directory (a directory of that name wins)
MODEL_ALIASES = ("diffill-coder", "diffill-tiny")


def default_model_dir() -> Path:
    """The default model, Diffill-Coder: the adapter shipped in the package (its base weights
    come from the registry and are converted into the user's cache on first use)."""
    from .coder.load import coder_weights_dir

    return coder_weights_dir()


def tiny_model_dir() -> Path:
    """The 1.3M-parameter model trained from scratch on a CPU: for tests and smoke runs only."""
    return Path(__file__).resolve().parent / "tiny_model"


def resolve_model_path(path: str | Path | None) -> Path:
    """A checkpoint directory from what a user typed: None is the default model, the names
    ``diffill-coder`` / ``diffill-tiny`` are the shipped models, and ``org/name[@revision]`` is a
    hub model (from the Hugging Face cache, else downloaded: :mod:`diffusion_core.hub`), each
    unless such a local directory exists."""
    if path is None:
        return default_model_dir()
    p = Path(path).expanduser()
    if p.exists():
        return p
    if str(path) in MODEL_ALIASES:
        return default_model_dir() if str(path) == "diffill-coder" else tiny_model_dir()
    from . import hub

    if isinstance(path, str) and hub.parse_hub_id(path) is not None:
        try:
            return hub.resolve(path)
        except hub.HubError as e:
            raise CheckpointError(f"no directory {path} here, and as a hub model id: {e}") from None
    return p


def _reuse_after_edit(forced: bool | None) -> bool:
    if forced is not None:
        return forced
    value = os.environ.get("DIFFILL_REUSE_AFTER_EDIT", "").strip().lower()
    if value in ("0", "false", "off", "no"):
        return False
    if value in ("", "1", "true", "on", "yes"):
        return True
    raise ValueError(f"DIFFILL_REUSE_AFTER_EDIT must be 1 or 0, got {value!r}")


MAX_ANCHORED_SCOPES = 1024  # scopes whose last prefix cut the engine remembers (160 characters each)


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
    # Diffill-Coder: the adapter that denoises the middle on top of the base's causal context
    adapter: RowAdapter | None = None
    window: int = 16  # middle positions the adapter denoises at once
    about: dict = field(default_factory=dict)  # what info() adds (base, adapter, training)
    # Diffill-Coder: context K/V reused across requests from the longest common prefix
    prefix_cache: PrefixCache | None = None
    # with a prefix cache: per cache scope, where its last prefix cut started (fit_context)
    _anchors: OrderedDict[str, str] = field(default_factory=OrderedDict, repr=False)
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

    def _sample(  # noqa: ANN202
        self,
        canvases: list[Canvas],
        opts: SamplingOptions,
        cancel: CancelCheck | None,
        rules: Sequence[StopRule] = (),
    ):
        if self.family.fim_ids is not None:
            return self._sample_coder(
                canvases, opts, cancel, rules or [StopRule(self.tokenizer.decode)] * len(canvases)
            )
        if opts.decoder != "diffusion":
            raise ValueError(
                f"decoder={opts.decoder!r} needs a causal base model (Diffill-Coder); "
                f"{self.family.name!r} is not one"
            )
        length = resolve_length(opts, self.family)
        if length == "expand":
            # the canvas changes length every step: one canvas at a time, eager forwards
            return [expand_sample(self.model, self.family, c, opts, cancel) for c in canvases]
        opts = replace(opts, length=length)
        if length == "predict":
            return self._sample_predicted(canvases, opts, cancel)
        return self._sample_fixed(canvases, opts, cancel)

    def _sample_coder(
        self,
        canvases: list[Canvas],
        opts: SamplingOptions,
        cancel: CancelCheck | None,
        rules: Sequence[StopRule],
    ) -> list[SampleOutput]:
        """Diffill-Coder: causal context once, the middles denoised by the adapter together, one
        packed forward per step (coder/sampler.py), or with ``decoder="ar"`` the base alone, one
        token per forward and one request at a time (coder/ar.py: the peer it is measured against)."""
        from .coder.ar import ar_sample
        from .coder.sampler import coder_sample_batch

        assert self.adapter is not None
        checks = [rule if rule.active else None for rule in rules]
        if opts.decoder == "ar":
            return [
                ar_sample(self.model, self.family, c, cancel, s, self.prefix_cache)
                for c, s in zip(canvases, checks)
            ]
        return coder_sample_batch(
            self.model,
            self.adapter,
            self.family,
            canvases,
            opts,
            self.window,
            cancel,
            checks,
            prefix_cache=self.prefix_cache,
        )

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
        base: str | Path | None = None,
        progress: bool = True,
        weights: str | None = None,
        reuse_after_edit: bool | None = None,
    ) -> Engine:
        """Load a Hugging Face-format directory, a Diffill-Coder adapter directory (with its base
        from the cache, or ``base``), or the default model when ``path`` is None.

        bf16 on CUDA; on the CPU fp32, except Diffill-Coder, which takes bf16 where it measures
        faster and the fastest CPU weight format measured here (``weights``: plain, int8, fp16
        or w8a8 forces one; see ``load_coder``). Never runs code from the directory: safetensors
        and JSON only. ``reuse_after_edit`` (default ``$DIFFILL_REUSE_AFTER_EDIT``, on): after an
        edit in the middle of the context, move the K/V after it instead of recomputing it
        (coder/prefix_cache.py; approximate, 0 turns it off). Loads on the compute thread, where
        every forward runs too (compute_thread.py).
        """
        return on_compute_thread(cls._load, path, device, dtype, base, progress, weights, reuse_after_edit)

    @classmethod
    def _load(
        cls,
        path: str | Path | None,
        device: str | torch.device | None,
        dtype: str | torch.dtype | None,
        base: str | Path | None,
        progress: bool,
        weights: str | None,
        reuse_after_edit: bool | None,
    ) -> Engine:
        from .coder.load import is_coder_dir, load_coder

        root = resolve_model_path(path)
        if is_coder_dir(root):
            lc = load_coder(root, base=base, device=device, dtype=dtype, progress=progress, weights=weights)
            engine = cls(
                model=lc.model,
                tokenizer=lc.tokenizer,
                family=lc.family,
                model_id=lc.model_id,
                device=lc.device,
                dtype=lc.dtype,
                adapter=lc.adapter,
                window=lc.window.window,
                prefix_cache=PrefixCache(
                    shift_keys=lc.model.shift_keys if _reuse_after_edit(reuse_after_edit) else None
                ),
                about={
                    "base": str(lc.base_dir),
                    "adapter": str(lc.adapter_dir),
                    "adapter_parameters": sum(p.numel() for p in lc.adapter.parameters()),
                    "cpu_weights": {"format": lc.weights, "added_mb": round(lc.weights_bytes / 2**20, 1)},
                    "draft_window": lc.window.about(),
                    "training": {k: v for k, v in lc.config.get("training", {}).items() if k != "history"},
                },
            )
            return engine
        ckpt: LoadedCheckpoint = load_checkpoint(root, device=device, dtype=dtype)
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
        self,
        prefix: str,
        suffix: str,
        prefix_tokens: int | None = None,
        suffix_tokens: int | None = None,
        scope: str | None = None,
    ) -> tuple[list[int], list[int]]:
        """Token ids of the prefix and suffix, cut to their budgets from the cursor outwards at
        line boundaries (``interface.cut_prefix``/``cut_suffix``, as the language server cuts).

        ``scope`` (a request's cache scope, with a prefix cache): the prefix is cut where that
        scope's last prefix was cut while the text from there still fits (``cut_prefix``'s
        anchor), as the language server keeps its cut per document. A client that sends a long
        file whole (the HTTP APIs) would otherwise see the cut move a line at each line typed,
        and every such move changes the context's start: none of its K/V could be reused."""
        pb = self.max_prefix_tokens if prefix_tokens is None else prefix_tokens
        sb = self.max_suffix_tokens if suffix_tokens is None else suffix_tokens
        keep = scope is not None and self.prefix_cache is not None
        prefix = cut_prefix(prefix, pb, self.count_tokens, self._anchors.pop(scope, "") if keep else None)
        if keep:
            self._anchors[scope] = prefix[:ANCHOR_CHARS]
            while len(self._anchors) > MAX_ANCHORED_SCOPES:
                self._anchors.popitem(last=False)  # the scope that typed longest ago
        suffix = cut_suffix(suffix, sb, self.count_tokens)
        return self.tokenizer.encode(prefix), self.tokenizer.encode(suffix)

    # ----------------------------------------------------------------------------- infill
    def infill(
        self,
        prefix: str,
        suffix: str = "",
        max_tokens: int = 64,
        options: SamplingOptions | None = None,
        cancel: CancelCheck | None = None,
    ) -> Completion:
        """Fill the hole between ``prefix`` and ``suffix``. ``cancel`` is polled between denoising
        steps; when it returns True the call raises :class:`Cancelled`."""
        req = InfillRequest(prefix, suffix, max_tokens, options)
        return self.infill_batch([req], cancel=cancel)[0]

    def infill_until(
        self,
        prefix: str,
        suffix: str,
        stop: Sequence[str],
        max_tokens: int = 64,
        options: SamplingOptions | None = None,
        cancel: CancelCheck | None = None,
    ) -> Completion:
        """:meth:`infill` that ends at the first of the ``stop`` strings (not included in the
        text, as in the OpenAI API): a model that decodes left to right stops there early."""
        req = InfillRequest(prefix, suffix, max_tokens, options, stop=tuple(stop))
        return self.infill_batch([req], cancel=cancel)[0]

    def infill_batch(
        self, requests: Sequence[InfillRequest], cancel: CancelCheck | None = None
    ) -> list[Completion]:
        """Fill several holes in one batched run (requests with equal options share forwards),
        on the compute thread (compute_thread.py); the caller waits."""
        return on_compute_thread(self._infill_batch, requests, cancel)

    def _infill_batch(
        self, requests: Sequence[InfillRequest], cancel: CancelCheck | None
    ) -> list[Completion]:
        if not requests:
            return []
        t0 = time.perf_counter()
        # the time budget counts from here: what the caller waits for, context fitting included
        rules = [StopRule(self.tokenizer.decode, r.stop, r.time_budget_ms) for r in requests]
        results: list[Completion | None] = [None] * len(requests)
        groups: dict[SamplingOptions, list[int]] = {}
        for i, r in enumerate(requests):
            if r.max_tokens < 0:
                raise ValueError("max_tokens must be >= 0")
            if r.time_budget_ms is not None and not r.time_budget_ms >= 0:
                raise ValueError("time_budget_ms must be >= 0 (or None: no limit)")
            opts = r.options or self.default_options
            groups.setdefault(opts, []).append(i)  # frozen, so hashable: equal options share a run
        with self._lock, torch.inference_mode():
            for opts, idx in groups.items():
                canvases, taken = [], []
                for i in idx:
                    prefix, ws = heal_prefix(requests[i].prefix)
                    p, s = self.fit_context(prefix, requests[i].suffix, scope=requests[i].cache_scope)
                    canvases.append(Canvas(p, s, requests[i].max_tokens, requests[i].cache_scope))
                    taken.append(ws)
                outs = self._sample(canvases, opts, cancel, [rules[i] for i in idx])
                for i, ws, out in zip(idx, taken, outs):
                    text, reason = rules[i].cut(unheal(self.tokenizer.decode(out.tokens), ws))
                    results[i] = Completion(
                        text=text,
                        tokens=len(out.tokens),
                        steps=out.steps,
                        latency_ms=0.0,
                        stop_reason=reason or out.stop_reason,
                    )
        latency = (time.perf_counter() - t0) * 1000.0
        return [replace(c, latency_ms=latency) for c in results if c is not None]

    def forget(self) -> None:
        """Drop what the engine keeps of earlier requests: their context K/V and prefix cuts."""
        if self.prefix_cache is not None:
            self.prefix_cache.clear()
        self._anchors.clear()

    def close(self) -> None:
        """Drop the cached context K/V (the model goes with the engine object)."""
        self.forget()

    def stats(self) -> dict:
        """Counters the language server's status shows (context K/V reuse), where there are any."""
        return self.prefix_cache.stats() if self.prefix_cache is not None else {}

    # ----------------------------------------------------------------------------- info
    def info(self) -> dict:
        cfg = self.model.cfg
        extra = dict(self.about)
        if self.prefix_cache is not None:
            extra["prefix_cache"] = self.prefix_cache.stats()
        return extra | {
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
