"""Train a small masked-diffusion FIM model with the engine's own architecture.

Two kinds of examples are mixed in every batch:

- plain masked diffusion (LLaDA-style): a window of a file, each token masked with probability
  t ~ U(eps, 1), cross-entropy on masked tokens weighted 1/t;
- FIM canvases shaped exactly like the sampler's: ``[begin] prefix middle eos... suffix``. The
  middle is a span (often whole lines, like an editor cursor) followed by eos/pad tokens up to
  the mask count the sampler would use, so the model learns where a completion ends; the
  middle+pad region is partly or fully masked and only it is supervised.

Prefix, middle and suffix are tokenized separately from text, as the engine does at
inference, so token boundaries at the cursor look the same in training and in use.

All randomness of step k is derived from (seed, k): a resumed run sees the same batches and
masks as an uninterrupted one, so its loss trajectory is the same.
"""

from __future__ import annotations

import bisect
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer as Backend

from ..model import ModelConfig, Transformer
from .tokenizer_train import BEGIN, EOS, MASK

MASK_BUCKETS = (8, 16, 32, 64)  # mask counts the sampler tries (fixed length / length ensemble)
MAX_MIDDLE = 64  # longest middle (tokens) used in FIM examples


@dataclass
class TrainConfig:
    """Everything that defines a run; saved with every checkpoint."""

    data: str = "data/corpus"
    tokenizer: str = "data/tokenizer.json"
    out: str = "runs/default"
    # model
    hidden_size: int = 192
    num_layers: int = 6
    num_heads: int = 3
    num_kv_heads: int = 1
    intermediate_size: int = 512
    rope_theta: float = 10000.0
    # data / objective
    seq_len: int = 384
    batch_size: int = 16
    fim_rate: float = 0.7
    full_mask_rate: float = 0.25  # FIM examples whose whole middle is masked (the first denoising step)
    # how a FIM example's mask count relates to its middle's length: "independent" draws the count
    # from MASK_BUCKETS regardless of the middle (a middle longer than the count is redrawn), so the
    # count says nothing about where the middle ends; "coupled" (phases 2-3 of the shipped model)
    # used the next bucket up or a small overshoot, which taught the model that 64 masks mean a
    # 32-64-token middle
    mask_counts: str = "independent"
    eps: float = 1e-3
    objective: str = "mdm"  # "mdm" (masked diffusion + FIM) | "ar" (causal next-token warm-up)
    shifted: bool = False  # Dream-style: token j is read from output j-1 (keeps an AR warm-up's head)
    init_from: str = ""  # state.pt or exported model dir whose weights start this run
    train_mb: float = 100.0  # text loaded for training (the corpus may be larger)
    # optimisation
    steps: int = 4000
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    # bookkeeping
    eval_every: int = 250
    save_every: int = 250
    eval_examples: int = 128
    threads: int = 0  # 0: leave torch's default
    workers: int = 0  # data-loader processes building batches ahead (GPU runs need them)
    device: str = "auto"
    max_minutes: float = 0.0  # stop (after saving) when the wall clock passes this; 0 = no limit
    extra: dict = field(default_factory=dict)

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(
            vocab_size=vocab_size,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            intermediate_size=self.intermediate_size,
            rope_theta=self.rope_theta,
            tie_embeddings=True,
            max_position=self.seq_len,  # trained context; callers should fit canvases to it
        )


# ------------------------------------------------------------------------------------ examples
@dataclass
class Example:
    ids: list[int]  # model input (masked positions hold the mask id)
    targets: list[int]
    weights: list[float]  # loss weight per position (0 = unsupervised)
    kind: str  # "fim" | "mdm"


class ExampleMaker:
    """Builds training canvases from raw texts with an explicit RNG (no global state)."""

    def __init__(self, texts: Sequence[str], tok: Backend, seq_len: int, cfg: TrainConfig) -> None:
        self.texts = [t for t in texts if t.strip()]
        self.tok = tok
        self.seq_len = seq_len
        self.cfg = cfg
        if cfg.mask_counts not in ("independent", "coupled"):
            raise ValueError(f"mask_counts must be 'independent' or 'coupled', not {cfg.mask_counts!r}")
        self.eos = tok.token_to_id(EOS)
        self.mask = tok.token_to_id(MASK)
        self.begin = tok.token_to_id(BEGIN)
        self.cum = np.cumsum([len(t) for t in self.texts])

    def _encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids if text else []

    def _pick(self, rng: np.random.Generator) -> tuple[str, int]:
        """A text and a character position, uniform over all characters of the corpus."""
        c = int(rng.integers(0, int(self.cum[-1])))
        i = bisect.bisect_right(self.cum, c)
        start = 0 if i == 0 else int(self.cum[i - 1])
        return self.texts[i], c - start

    def make(self, rng: np.random.Generator, kind: str | None = None) -> Example:
        """One example; ``kind`` forces "fim" or "mdm" (validation measures them apart)."""
        if self.cfg.objective == "ar":
            return self.ar(rng)
        if kind == "fim" or (kind is None and rng.random() < self.cfg.fim_rate):
            for _ in range(8):
                ex = self.fim(rng)
                if ex is not None:
                    return ex
        return self.mdm(rng)

    def _t(self, rng: np.random.Generator) -> float:
        return float(self.cfg.eps + (1 - self.cfg.eps) * rng.random())

    def mdm(self, rng: np.random.Generator) -> Example:
        text, pos = self._pick(rng)
        # start at a line boundary half of the time (code is line-structured)
        if rng.random() < 0.5:
            pos = text.rfind("\n", 0, pos) + 1
        toks = self._encode(text[pos : pos + self.seq_len * 6])[: self.seq_len - 1]
        t = self._t(rng)
        m = rng.random(len(toks)) < t
        if not m.any():
            m[int(rng.integers(0, len(toks)))] = True
        ids = [self.begin] + [self.mask if mi else x for x, mi in zip(toks, m, strict=True)]
        w = 1.0 / (t * len(toks))
        weights = [0.0] + [w if mi else 0.0 for mi in m]
        return Example(ids, [self.begin] + toks, weights, "mdm")

    def ar(self, rng: np.random.Generator) -> Example:
        """A plain window for next-token training (with ``shifted`` loss and causal attention)."""
        text, pos = self._pick(rng)
        if rng.random() < 0.5:
            pos = text.rfind("\n", 0, pos) + 1
        toks = self._encode(text[pos : pos + self.seq_len * 6])[: self.seq_len - 1]
        ids = [self.begin] + toks
        return Example(ids, ids, [0.0] + [1.0 / max(1, len(toks))] * len(toks), "ar")

    def _middle_span(self, text: str, pos: int, rng: np.random.Generator) -> tuple[int, int]:
        line_start = text.rfind("\n", 0, pos) + 1
        u = rng.random()
        if u < 0.6:  # whole lines, like HumanEval single-line / multi-line holes
            n_lines = 1 if rng.random() < 0.6 else int(rng.integers(2, 5))
            a = line_start
            if rng.random() < 0.3:  # cursor after the indentation
                a = line_start + len(text[line_start:pos]) - len(text[line_start:pos].lstrip(" \t"))
            b = a
            for _ in range(n_lines):
                nl = text.find("\n", b)
                b = len(text) if nl < 0 else nl + 1
            return a, b
        if u < 0.75:  # rest of the line from the cursor
            nl = text.find("\n", pos)
            return pos, (len(text) if nl < 0 else nl + 1)
        span = int(rng.geometric(1 / 60))  # arbitrary span (random-span infilling)
        return pos, min(len(text), pos + max(1, span))

    def fim(self, rng: np.random.Generator) -> Example | None:
        text, pos = self._pick(rng)
        a, b = self._middle_span(text, pos, rng)
        middle = self._encode(text[a:b])
        if not middle or len(middle) > MAX_MIDDLE:
            return None
        m = len(middle)
        r = rng.random()
        if r < 0.3:
            n = m  # exact length: the span ends by length, no eos
        elif self.cfg.mask_counts == "independent":
            n = int(rng.choice(MASK_BUCKETS))
            if n < m:
                return None  # rejected, not shortened: P(middle length | count) stays the data's
        elif r < 0.7:
            n = next(x for x in MASK_BUCKETS if x >= m)
        else:
            n = m + int(rng.integers(1, m + 9))
        n = min(n, MAX_MIDDLE + 32)
        ctx = self.seq_len - 1 - n
        p_budget = int(ctx * (0.35 + 0.6 * rng.random()))
        if rng.random() < 0.1:
            suffix_text = ""  # typing at the end of the file
            p_budget = ctx
        else:
            suffix_text = text[b : b + ctx * 6]
        prefix = self._encode(text[max(0, a - p_budget * 6) : a])[-p_budget:] if p_budget else []
        suffix = self._encode(suffix_text)[: ctx - len(prefix)]
        region = middle + [self.eos] * (n - m)
        t = 1.0 if rng.random() < self.cfg.full_mask_rate else self._t(rng)
        mk = rng.random(n) < t
        if not mk.any():
            mk[int(rng.integers(0, n))] = True
        w = 1.0 / (t * n)
        noisy = [self.mask if x else y for x, y in zip(mk, region, strict=True)]
        ids = [self.begin] + prefix + noisy + suffix
        targets = [self.begin] + prefix + region + suffix
        weights = [0.0] * (1 + len(prefix)) + [w if x else 0.0 for x in mk] + [0.0] * len(suffix)
        return Example(ids, targets, weights, "fim")


def collate(examples: Sequence[Example], seq_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    b = len(examples)
    ids = torch.full((b, seq_len), pad_id, dtype=torch.long)
    tgt = torch.full((b, seq_len), pad_id, dtype=torch.long)
    w = torch.zeros((b, seq_len))
    key = torch.zeros((b, seq_len), dtype=torch.bool)
    for i, ex in enumerate(examples):
        n = len(ex.ids)
        ids[i, :n] = torch.tensor(ex.ids)
        tgt[i, :n] = torch.tensor(ex.targets)
        w[i, :n] = torch.tensor(ex.weights)
        key[i, :n] = True
    return {"ids": ids, "targets": tgt, "weights": w, "key_mask": key}


def batch_for_step(maker: ExampleMaker, seed: int, step: int, batch_size: int) -> dict[str, torch.Tensor]:
    """The batch of step ``step``: a pure function of (seed, step), which makes resuming exact."""
    rng = np.random.default_rng([seed, step])
    return collate([maker.make(rng) for _ in range(batch_size)], maker.seq_len, maker.eos)


class StepBatches(torch.utils.data.Dataset):
    """Batch ``i`` is the batch of step ``i``: lets a DataLoader build batches in worker processes
    while keeping them identical to the single-process ones (and therefore resumable)."""

    def __init__(self, maker: ExampleMaker, seed: int, batch_size: int, steps: int) -> None:
        self.maker, self.seed, self.batch_size, self.steps = maker, seed, batch_size, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        return batch_for_step(self.maker, self.seed, step, self.batch_size)


def shard_weights(
    model_dir: str | Path, max_bytes: int = 15_000_000, dtype: torch.dtype | None = None
) -> list[Path]:
    """Split ``model.safetensors`` into shards of at most ``max_bytes`` plus the usual
    ``model.safetensors.index.json`` (git hosts and the package limit large files); optionally
    cast floating tensors (e.g. to bfloat16) first."""
    from safetensors.torch import load_file, save_file

    root = Path(model_dir)
    tensors = load_file(str(root / "model.safetensors"))
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    groups: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(tensors):
        nbytes = tensors[name].numel() * tensors[name].element_size()
        if groups[-1] and size + nbytes > max_bytes:
            groups.append({})
            size = 0
        groups[-1][name] = tensors[name]
        size += nbytes
    if len(groups) == 1:
        save_file(groups[0], str(root / "model.safetensors"), metadata={"format": "pt"})
        return [root / "model.safetensors"]
    paths, weight_map = [], {}
    for i, g in enumerate(groups, 1):
        name = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file(g, str(root / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in g})
        paths.append(root / name)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (root / "model.safetensors.index.json").write_text(json.dumps(index, indent=1) + "\n")
    (root / "model.safetensors").unlink()
    return paths


# ------------------------------------------------------------------------------------ model
def init_weights(model: Transformer) -> None:
    """GPT-2 style init: N(0, 0.02), residual output projections scaled by 1/sqrt(2 * layers).
    (nn.Embedding's default N(0, 1) would make tied logits huge at step 0.)"""
    std = 0.02
    for name, p in model.named_parameters():
        if p.dim() < 2:
            continue
        residual = name.endswith(("o_proj.weight", "down_proj.weight"))
        torch.nn.init.normal_(p, 0.0, std / math.sqrt(2 * model.cfg.num_layers) if residual else std)
        if name.endswith("bias"):
            torch.nn.init.zeros_(p)


def loss_fn(
    model: Transformer, batch: dict[str, torch.Tensor], shifted: bool = False, causal: bool = False
) -> torch.Tensor:
    """Sum over supervised positions of w * CE, averaged over examples (w already holds 1/(t n)).
    ``shifted``: the target at position j is predicted from the output at j - 1. ``causal``: the
    next-token warm-up, where attention may not look ahead."""
    key = batch["key_mask"]
    hidden = model(batch["ids"], key_mask=None if bool(key.all()) else key, causal=causal)
    weights, targets = batch["weights"], batch["targets"]
    if shifted:
        hidden, weights, targets = hidden[:, :-1], weights[:, 1:], targets[:, 1:]
    sel = weights > 0
    logits = model.logits(hidden[sel])
    ce = F.cross_entropy(logits, targets[sel], reduction="none")
    return (ce * weights[sel]).sum() / batch["ids"].shape[0]


def make_optimizer(model: Transformer, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )


def lr_at(step: int, cfg: TrainConfig, time_frac: float = 0.0) -> float:
    """Warmup then cosine decay. ``time_frac`` (share of ``max_minutes`` used) can run the decay
    ahead of the step count, so a run on a contended CPU still ends at the low learning rate."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = min(1.0, max(time_frac, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Model weights from a trainer ``state.pt`` or an exported model directory."""
    p = Path(path)
    if p.is_dir():
        from ..checkpoint import load_model

        return load_model(p).state_dict()
    return torch.load(p, map_location="cpu", weights_only=False)["model"]


def family_for(tok: Backend, shifted: bool = False, predicts_length: bool = False):  # noqa: ANN201 - FamilySpec
    from ..families import make_spec
    from ..tokenizer import Tokenizer

    return make_spec(
        "diffill",
        shifted=shifted,
        mask_id=tok.token_to_id(MASK),
        eos_ids=(tok.token_to_id(EOS),),
        pad_id=tok.token_to_id(EOS),
        begin_ids=(tok.token_to_id(BEGIN),),
        tokenizer=Tokenizer(tok),
        predicts_length=predicts_length,
    )


# ------------------------------------------------------------------------------------ trainer
class Trainer:
    """One run: model, optimiser, data; ``out/state.pt`` makes it resumable."""

    def __init__(
        self, cfg: TrainConfig, texts: Sequence[str] | None = None, val_texts: Sequence[str] | None = None
    ) -> None:
        from .corpus import read_texts

        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.backends.cuda.matmul.allow_tf32 = True
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
        )
        self.tok = Backend.from_file(cfg.tokenizer)
        if texts is None:
            texts = read_texts(cfg.data, "train", max_bytes=int(cfg.train_mb * 1e6))
        if val_texts is None:
            val_texts = read_texts(cfg.data, "validation", max_bytes=4_000_000)
        self.maker = ExampleMaker(texts, self.tok, cfg.seq_len, cfg)
        self.val_maker = ExampleMaker(val_texts, self.tok, cfg.seq_len, cfg) if val_texts else None
        torch.manual_seed(cfg.seed)
        self.model = Transformer(cfg.model_config(self.tok.get_vocab_size())).to(self.device)
        init_weights(self.model)
        if cfg.init_from:
            self.model.load_state_dict(load_weights(cfg.init_from))
        self.opt = make_optimizer(self.model, cfg)
        self.step = 0
        self.elapsed = 0.0  # seconds of training so far, across resumes (for max_minutes)
        self.history: list[dict] = []
        self.out = Path(cfg.out)
        self._val_batches: list[tuple[str, dict[str, torch.Tensor]]] | None = None

    # ---- state
    @property
    def state_path(self) -> Path:
        return self.out / "state.pt"

    def save_state(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / "state.pt.tmp"
        torch.save(
            {
                "model": self.model.state_dict(),
                "opt": self.opt.state_dict(),
                "step": self.step,
                "elapsed": self.elapsed,
                "history": self.history,
                "config": asdict(self.cfg),
            },
            tmp,
        )
        tmp.replace(self.state_path)

    def try_resume(self) -> bool:
        if not self.state_path.exists():
            return False
        st = torch.load(self.state_path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["opt"])
        self.step = int(st["step"])
        self.elapsed = float(st.get("elapsed", 0.0))
        self.history = list(st.get("history", []))
        return True

    def export(self, out_dir: str | Path, extra: dict | None = None) -> Path:
        """The model in the project's own format (what Engine.from_pretrained loads)."""
        from ..checkpoint import save_pretrained

        info = {
            "model_id": "diffill-tiny",
            "training": {
                "steps": self.step,
                "seq_len": self.cfg.seq_len,
                "batch_size": self.cfg.batch_size,
                "tokens_seen": self.step * self.cfg.batch_size * self.cfg.seq_len,
                "final_val": self.history[-1] if self.history else None,
            },
        }
        info.update(extra or {})
        model = self.model.to("cpu").float()
        try:
            return save_pretrained(
                model,
                self.tok,
                family_for(self.tok, self.cfg.shifted, self.predicts_length),
                out_dir,
                extra=info,
            )
        finally:
            self.model.to(self.device)

    @property
    def predicts_length(self) -> bool:
        """Whether the exported model can predict its middle's length (diffusion_core/length.py)."""
        c = self.cfg
        return c.objective == "mdm" and c.fim_rate > 0 and c.mask_counts == "independent"

    # ---- steps
    @property
    def causal(self) -> bool:
        return self.cfg.objective == "ar"

    def time_frac(self) -> float:
        return self.elapsed / (self.cfg.max_minutes * 60) if self.cfg.max_minutes else 0.0

    def train_step(self, batch: dict[str, torch.Tensor]) -> float:
        self.model.train()
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.step, self.cfg, self.time_frac())
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            loss = loss_fn(self.model, batch, self.cfg.shifted, self.causal)
        loss.backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        return loss.item()

    def _validation_batches(self) -> list[tuple[str, dict[str, torch.Tensor]]]:
        if self._val_batches is None:
            assert self.val_maker is not None
            self._val_batches = []
            n, bs = self.cfg.eval_examples, self.cfg.batch_size
            kinds = ("ar",) if self.cfg.objective == "ar" else ("fim", "mdm")
            for j, kind in enumerate(kinds):
                rng = np.random.default_rng([self.cfg.seed, 10**9, j])
                for i in range(0, n, bs):
                    exs = [self.val_maker.make(rng, kind) for _ in range(min(bs, n - i))]
                    self._val_batches.append((kind, collate(exs, self.cfg.seq_len, self.val_maker.eos)))
        return self._val_batches

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation loss on held-out packages, separately for FIM canvases and plain diffusion."""
        if self.val_maker is None:
            return {}
        self.model.eval()
        sums: dict[str, list[float]] = {}
        for kind, b in self._validation_batches():
            t = {k: v.to(self.device) for k, v in b.items()}
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                loss = loss_fn(self.model, t, self.cfg.shifted, self.causal)
                sums.setdefault(f"val_{kind}", []).append(float(loss))
        return {k: round(sum(v) / len(v), 4) for k, v in sums.items()}

    def run(self, log_file: str | Path | None = None, progress: bool = True) -> list[dict]:
        """Train to ``cfg.steps`` (or ``cfg.max_minutes``), evaluating and saving as configured."""
        from tqdm import tqdm

        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=1) + "\n")
        log = open(log_file, "a") if log_file else None  # noqa: SIM115
        t_start = time.time()
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not progress, dynamic_ncols=True)
        tokens = 0
        ema: float | None = None
        loader = None
        if cfg.workers:
            ds = StepBatches(self.maker, cfg.seed, cfg.batch_size, cfg.steps)
            loader = iter(
                torch.utils.data.DataLoader(
                    torch.utils.data.Subset(ds, range(self.step, cfg.steps)),
                    batch_size=None,
                    num_workers=cfg.workers,
                    prefetch_factor=4,
                    pin_memory=self.device.type == "cuda",
                    persistent_workers=False,
                )
            )
        try:
            while self.step < cfg.steps:
                t0 = time.time()
                if loader is not None:
                    batch = next(loader)
                else:
                    batch = batch_for_step(self.maker, cfg.seed, self.step, cfg.batch_size)
                loss = self.train_step(batch)
                self.elapsed += time.time() - t0
                tokens += int(batch["key_mask"].sum())
                ema = loss if ema is None else 0.98 * ema + 0.02 * loss
                tps = tokens / max(time.time() - t_start, 1e-6)
                bar.update(1)
                lr = lr_at(self.step, cfg, self.time_frac())
                bar.set_postfix(loss=f"{ema:.3f}", tok_s=f"{tps:.0f}", lr=f"{lr:.2e}")
                rec = {
                    "step": self.step,
                    "loss": round(loss, 4),
                    "tok_s": round(tps),
                    "dt": round(time.time() - t0, 3),
                }
                done = self.step >= cfg.steps
                over = bool(cfg.max_minutes) and self.time_frac() >= 1.0
                if self.step % cfg.eval_every == 0 or done or over:
                    rec.update(self.evaluate())
                    rec["loss_ema"] = round(ema, 4)
                    self.history.append(rec)
                if log is not None and (self.step % 10 == 0 or "val_fim" in rec):
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                if self.step % cfg.save_every == 0 or done or over:
                    self.save_state()
                    self.export(self.out / "model")
                if over:
                    break
        finally:
            bar.close()
            if log is not None:
                log.close()
        return self.history
