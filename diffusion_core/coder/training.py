"""Train Diffill-Coder's adapter on this machine's corpus (``diffill train --coder``).

One example is a FIM triple (prefix, middle, suffix) cut from a corpus file: cursor-like line
middles (from column 0, after the indentation or mid-line, plus a few following lines),
multi-line blocks and random character spans. Its context (Qwen's FIM prompt in
``TrainConfig.fim_order``, coder/family.py) plus the true middle and an end token is run once
through the frozen base, causally and without gradients; because the context is causal, that one
pass holds the context K/V for *every* frontier position in the middle. Several masked variants
are then cut from it: each picks a frontier f, a window of middle positions from f (f always
masked, the others masked with a random ratio, positions past the end masked and targeting the end
token), and runs the window with the adapter on top of the context K/V ``[0, L + f)``. The loss is
on the masked window positions, each read from the row before it (shifted), exactly as the sampler reads them:
for a middle token, cross-entropy against the base's own distribution there (self-distillation:
the sampler keeps a draft only when the base agrees with it), for the end token and the padding
after it, against the data. The frontier itself is never supervised: the base predicts it.

Everything a run does is fixed by (seed, step), so a resumed run sees the same examples.
State (adapter, optimiser, counters) is saved as safetensors + JSON, never pickled.
"""

from __future__ import annotations

import bisect
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..model import Adapted, Transformer
from ..tokenizer import Tokenizer
from .adapter import Adapter, AdapterConfig, save_adapter
from .family import fim_prompt, fim_token_ids

__all__ = ["CoderTrainConfig", "CoderTrainer", "FimExample", "FimMaker", "Variant", "cut_variants"]


@dataclass
class CoderTrainConfig:
    data: str = "data/corpus"
    out: str = "runs/coder"
    init_from: str = ""  # an adapter directory to continue from (default: the shipped adapter)
    rank: int = 16
    alpha: float = 32.0
    window: int = 16  # middle positions the adapter sees at once (the sampler's window)
    variants: int = 16  # masked variants per context pass
    contexts_per_step: int = 2
    fim_order: str = "spm"  # the prompt layout trained on (coder/family.py: FIM_ORDERS)
    max_prefix: int = 384
    max_suffix: int = 128
    max_middle: int = 48
    all_masked_rate: float = 0.5  # variants whose window is all masks (a fresh window)
    distill: bool = True  # middle tokens learn the base's own distribution (what verification accepts)
    lr: float = 4e-4
    warmup: int = 30
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    steps: int = 1000
    max_minutes: float = 0.0
    seed: int = 0
    eval_every: int = 100
    save_every: int = 50
    eval_examples: int = 48
    threads: int = 0
    dtype: str = "auto"  # "auto": bf16 where it measures faster than fp32 (AMX), else fp32
    train_mb: float = 60.0
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------ examples
@dataclass
class FimExample:
    prefix: list[int]
    middle: list[int]
    suffix: list[int]
    kind: str


class FimMaker:
    """FIM triples from raw texts, tokenized the way the engine tokenizes a request (prefix cut
    from the cursor backwards, suffix forwards, the middle on its own)."""

    def __init__(self, texts: Sequence[str], tok: Tokenizer, cfg: CoderTrainConfig) -> None:
        self.texts = [t for t in texts if t.strip()]
        if not self.texts:
            raise ValueError("no training texts")
        self.tok = tok
        self.cfg = cfg
        self.cum = np.cumsum([len(t) for t in self.texts])

    def _pick(self, rng: np.random.Generator) -> tuple[str, int]:
        c = int(rng.integers(0, int(self.cum[-1])))
        i = bisect.bisect_right(self.cum, c)
        return self.texts[i], c - (0 if i == 0 else int(self.cum[i - 1]))

    @staticmethod
    def _line_end(text: str, pos: int) -> int:
        nl = text.find("\n", pos)
        return len(text) if nl < 0 else nl + 1

    def _span(self, text: str, pos: int, rng: np.random.Generator) -> tuple[int, int, str]:
        line = text.rfind("\n", 0, pos) + 1
        u = rng.random()
        if u < 0.6:  # the cursor on a line: rest of the line, sometimes a few more lines
            body = text[line : self._line_end(text, line)]
            indent = len(body) - len(body.lstrip(" \t"))
            v = rng.random()
            a = line if v < 0.35 else line + indent if v < 0.7 else pos
            b = self._line_end(text, a)
            for _ in range(int(rng.geometric(0.6)) - 1):
                b = self._line_end(text, b)
            return a, b, "line"
        if u < 0.8:  # a block of whole lines
            b = line
            for _ in range(int(rng.integers(2, 9))):
                b = self._line_end(text, b)
            return line, b, "block"
        return pos, min(len(text), pos + int(rng.geometric(1 / 40))), "span"

    def make(self, rng: np.random.Generator) -> FimExample:
        for _ in range(32):
            text, pos = self._pick(rng)
            a, b, kind = self._span(text, pos, rng)
            middle = self.tok.encode(text[a:b])
            while kind != "span" and len(middle) > self.cfg.max_middle and text[a:b].count("\n") > 1:
                b = text.rfind("\n", a, b - 1) + 1  # drop the last line
                middle = self.tok.encode(text[a:b])
            if not middle or len(middle) > self.cfg.max_middle:
                continue
            p_budget = int(rng.integers(16, self.cfg.max_prefix + 1))
            s_budget = 0 if rng.random() < 0.1 else int(rng.integers(0, self.cfg.max_suffix + 1))
            prefix = self.tok.encode_prefix(text[max(0, a - 8 * p_budget) : a], p_budget)
            suffix = self.tok.encode_suffix(text[b : b + 8 * s_budget], s_budget)
            return FimExample(prefix, middle, suffix, kind)
        raise RuntimeError("could not cut a FIM example from the corpus (texts too short?)")


# what a window row's target is: a token of the middle, the end token right after it, or one of
# the end tokens that pad the window past the end (easy, so they weigh little in the loss)
CONTENT, END, PAST_END = 0, 1, 2
PAST_END_WEIGHT = 0.1
STAT_KEYS = ("weight", "n", "agree", "n1", "agree1", "sure", "sure_agree", "n_end", "end_acc")


@dataclass
class Variant:
    frontier: int  # middle index of the window's first position (always masked)
    ids: list[int]  # window inputs
    targets: list[int]  # targets[i]: the token at window position i + 1
    supervised: list[bool]  # row i is trained (its target position is masked and in the window)
    kinds: list[int]  # CONTENT / END / PAST_END of each row's target


def cut_variants(
    middle: list[int],
    end_id: int,
    mask_id: int,
    window: int,
    k: int,
    all_masked_rate: float,
    rng: np.random.Generator,
) -> list[Variant]:
    """``k`` masked windows of the middle (+ end token): what the sampler's window may hold."""
    m = len(middle)
    seq = middle + [end_id]
    out = []
    for _ in range(k):
        f = int(rng.integers(0, m + 1))
        t = 1.0 if rng.random() < all_masked_rate else float(rng.random())
        masked = [True] + [bool(rng.random() < t) or f + i > m for i in range(1, window)]
        w = window
        if f + window > m and f < m and not masked[m - f]:
            w = m - f  # a committed end token closes the window before itself (as in the sampler)
        toks = [seq[f + i] if f + i <= m else end_id for i in range(window + 1)]
        ids = [mask_id if masked[i] else toks[i] for i in range(w)]
        targets = [toks[i + 1] for i in range(w)]
        sup = [i + 1 < w and masked[i + 1] for i in range(w)]
        kinds = [CONTENT if f + i + 1 < m else END if f + i + 1 == m else PAST_END for i in range(w)]
        out.append(Variant(f, ids, targets, sup, kinds))
    return out


# ------------------------------------------------------------------------------------ forward
class ContextKV:
    """The ``cache`` a window forward reads during training: the base's context K/V (shared by
    every variant, no gradient) followed by the window's own K/V (with gradient). Out of place,
    unlike ``KVCache``, so autograd can keep every layer's keys."""

    def __init__(self, k: list[torch.Tensor], v: list[torch.Tensor], batch: int) -> None:
        self.ctx_k, self.ctx_v, self.batch = k, v, batch
        self._new: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        self._new[layer] = (k, v)

    def read(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self._new[layer]
        ck = self.ctx_k[layer].expand(self.batch, -1, -1, -1).to(k.dtype)
        cv = self.ctx_v[layer].expand(self.batch, -1, -1, -1).to(v.dtype)
        return torch.cat([ck, k], dim=2), torch.cat([cv, v], dim=2)


TEACHER_TOP = 32  # the base's distribution is kept on its 32 most likely tokens (the rest is ~0)


@dataclass
class Teacher:
    """The base's own next-token distribution at each middle position, given the true tokens
    before it (teacher-forced, from the same context pass): what a draft must agree with."""

    ids: torch.Tensor  # [m, TEACHER_TOP]
    probs: torch.Tensor  # [m, TEACHER_TOP], renormalised


@torch.no_grad()
def context_pass(
    model: Transformer, seq: list[int], device: torch.device, ctx_len: int, middle_len: int
) -> tuple[ContextKV, Teacher]:
    """Per-layer K/V of ``seq`` under the causal base (no adapter, no gradient), and the base's
    distribution over each of the ``middle_len`` middle tokens (rows ``ctx_len - 1`` on)."""
    t = len(seq)
    cache = model.new_cache(1, t)
    causal = torch.ones(t, t, dtype=torch.bool, device=device).tril()[None, None]
    h = model(torch.tensor([seq], device=device), cache=cache, start=0, attn_mask=causal)
    logits = model.logits(h[0, ctx_len - 1 : ctx_len - 1 + middle_len])
    top = torch.softmax(logits, -1).topk(TEACHER_TOP, dim=-1)
    teacher = Teacher(top.indices, top.values / top.values.sum(-1, keepdim=True))
    kv = ContextKV(
        [cache.k[i] for i in range(len(model.layers))], [cache.v[i] for i in range(len(model.layers))], 1
    )
    return kv, teacher


def window_loss(
    model: Transformer,
    adapter: Adapter,
    ctx: ContextKV,
    ctx_len: int,
    variants: list[Variant],
    device: torch.device,
    teacher: Teacher | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss over the supervised window rows of ``variants`` on one context, and statistics of the
    greedy drafts.

    A middle token's row learns the base's own distribution there (``teacher``; self-distillation:
    a draft counts only when the base agrees with it), the end token and the padding after it
    the data (the base knows nothing of where a middle ends). Rows far from the frontier weigh
    less: a draft there is rarely sure enough to use, and its target is the least predictable.
    Statistics: ``agree`` (draft == the base's choice) over middle tokens, ``agree1`` at the
    first position after the frontier, ``sure`` (confidence >= 0.9) and how often those agree."""
    k, w = len(variants), max(len(v.ids) for v in variants)
    total = ctx.ctx_k[0].shape[2]
    ids = torch.full((k, w), adapter.mask_id, dtype=torch.long)
    pos = torch.zeros((k, w), dtype=torch.long)
    sup = torch.zeros((k, w), dtype=torch.bool)
    tgt = torch.zeros((k, w), dtype=torch.long)
    kind = torch.full((k, w), PAST_END, dtype=torch.long)
    tpos = torch.zeros((k, w), dtype=torch.long)  # middle index of each row's target
    mask = torch.zeros((k, 1, w, total + w), dtype=torch.bool)
    for i, v in enumerate(variants):
        n = len(v.ids)
        ids[i, :n] = torch.tensor(v.ids)
        pos[i] = ctx_len + v.frontier + torch.arange(w)
        tpos[i] = v.frontier + 1 + torch.arange(w)
        sup[i, :n] = torch.tensor(v.supervised)
        tgt[i, :n] = torch.tensor(v.targets)
        kind[i, :n] = torch.tensor(v.kinds)
        mask[i, 0, :, : ctx_len + v.frontier] = True
        mask[i, 0, :, total : total + n] = True
    offset = torch.arange(1, w + 1)[None, :].expand(k, w)
    ids, pos, sup, tgt, mask, kind, tpos, offset = (
        x.to(device) for x in (ids, pos, sup, tgt, mask, kind, tpos, offset)
    )
    kv = ContextKV(ctx.ctx_k, ctx.ctx_v, k)
    h = model(ids, positions=pos, cache=kv, attn_mask=mask, adapted=Adapted(adapter, 0))
    logits = model.logits(h[sup])
    target, kinds, where, dist = tgt[sup], kind[sup], tpos[sup], offset[sup]
    content = kinds == CONTENT
    logp = torch.log_softmax(logits, -1)
    data_ce = -logp.gather(-1, target[:, None]).squeeze(-1)
    per_row = data_ce
    if teacher is not None and bool(content.any()):
        t_idx = teacher.ids[where[content]]
        t_p = teacher.probs[where[content]]
        soft = -(t_p * logp[content].gather(-1, t_idx)).sum(-1)
        per_row = per_row.clone()
        per_row[content] = soft
    weight = torch.where(kinds == PAST_END, PAST_END_WEIGHT, 1.0) / (1.0 + (dist - 1).float() / 4.0)
    loss = (per_row * weight).sum() / weight.sum().clamp_min(1e-6)
    with torch.no_grad():
        conf, pred = logp.float().exp().max(-1)
        choice = target.clone()
        if teacher is not None and bool(content.any()):
            choice[content] = teacher.ids[where[content], 0]
        agree = pred == choice
        sure = conf >= 0.9
        end = kinds == END
        first = content & (dist == 1)
        stats = {
            "weight": float(weight.sum()),
            "n": float(content.sum()),
            "agree": float((agree & content).sum()),
            "n1": float(first.sum()),
            "agree1": float((agree & first).sum()),
            "sure": float((sure & content).sum()),
            "sure_agree": float((agree & sure & content).sum()),
            "n_end": float(end.sum()),
            "end_acc": float((agree & end).sum()),
        }
    return loss, stats


# ------------------------------------------------------------------------------------ trainer
def pick_dtype(choice: str) -> torch.dtype:
    """bf16 where the CPU runs bf16 matmuls faster than fp32 (AMX), else fp32; measured, not
    assumed. CUDA always bf16."""
    if choice in ("bf16", "bfloat16"):
        return torch.bfloat16
    if choice in ("fp32", "float32"):
        return torch.float32
    if torch.cuda.is_available():
        return torch.bfloat16
    from ..runtime import bf16_is_faster

    return torch.bfloat16 if bf16_is_faster() else torch.float32


class CoderTrainer:
    def __init__(
        self,
        cfg: CoderTrainConfig,
        model: Transformer,
        tok: Tokenizer,
        end_id: int,
        texts: Sequence[str],
        val_texts: Sequence[str],
        base_info: dict | None = None,
    ) -> None:
        self.cfg = cfg
        self.model = model
        self.tok = tok
        self.end_id = end_id
        self.device = model.head_weight.device
        self.base_info = base_info or {}
        self.maker = FimMaker(texts, tok, cfg)
        self.val_maker = FimMaker(val_texts, tok, cfg) if val_texts else None
        self.adapter = Adapter(model.cfg, AdapterConfig(rank=cfg.rank, alpha=cfg.alpha)).to(self.device)
        self.adapter.reset(model.embed.weight, seed=cfg.seed)
        self.adapter.float().train()
        self.opt = torch.optim.AdamW(
            self.adapter.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay
        )
        self.step = 0
        self.elapsed = 0.0
        self.tokens_seen = 0  # context + window positions run through the model
        self.supervised = 0  # window positions trained on
        self.history: list[dict] = []
        self.out = Path(cfg.out)
        self.autocast = model.head_weight.dtype == torch.bfloat16
        self.fim = fim_token_ids(tok)

    # ---- state (safetensors + json, resumable)
    def save_state(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        tensors = {f"adapter.{k}": v.detach().cpu() for k, v in self.adapter.state_dict().items()}
        opt = self.opt.state_dict()
        names = [n for n, _ in self.adapter.named_parameters()]
        for idx, st in opt["state"].items():
            for key, val in st.items():
                tensors[f"opt.{names[idx]}.{key}"] = (
                    val.detach().cpu().reshape(-1) if val.dim() == 0 else val.cpu()
                )
        save_file(tensors, str(self.out / "state.safetensors.tmp"))
        (self.out / "state.safetensors.tmp").replace(self.out / "state.safetensors")
        meta = {
            "step": self.step,
            "elapsed": self.elapsed,
            "tokens_seen": self.tokens_seen,
            "supervised": self.supervised,
            "history": self.history,
            "config": asdict(self.cfg),
        }
        (self.out / "state.json").write_text(json.dumps(meta, indent=1) + "\n")

    def try_resume(self) -> bool:
        sp, mp = self.out / "state.safetensors", self.out / "state.json"
        if not (sp.exists() and mp.exists()):
            return False
        tensors = load_file(str(sp))
        meta = json.loads(mp.read_text())
        self.adapter.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("adapter.")})
        names = [n for n, _ in self.adapter.named_parameters()]
        state = {}
        for idx, n in enumerate(names):
            st = {
                key: tensors[f"opt.{n}.{key}"]
                for key in ("step", "exp_avg", "exp_avg_sq")
                if f"opt.{n}.{key}" in tensors
            }
            if st:
                st["step"] = st["step"].reshape(())
                state[idx] = st
        od = self.opt.state_dict()
        od["state"] = state
        self.opt.load_state_dict(od)
        self.step, self.elapsed = int(meta["step"]), float(meta["elapsed"])
        self.tokens_seen, self.supervised = int(meta["tokens_seen"]), int(meta["supervised"])
        self.history = list(meta["history"])
        return True

    def init_from(self, adapter_dir: str | Path) -> None:
        """Start from an exported adapter (continue training what ships)."""
        from .adapter import load_adapter

        src = load_adapter(adapter_dir, self.model.cfg, self.device, torch.float32)
        self.adapter.load_state_dict(src.state_dict())
        prev = json.loads((Path(adapter_dir) / "config.json").read_text()).get("training", {})
        self.tokens_seen = int(prev.get("tokens_seen", 0))
        self.supervised = int(prev.get("supervised_positions", 0))
        self.history = list(prev.get("history", []))
        self.prev_steps = int(prev.get("steps", 0))

    def training_record(self) -> dict:
        return {
            "steps": getattr(self, "prev_steps", 0) + self.step,
            "tokens_seen": self.tokens_seen,
            "supervised_positions": self.supervised,
            "window": self.cfg.window,
            "variants_per_context": self.cfg.variants,
            "history": self.history[-40:],
        }

    def export(self, out_dir: str | Path, config: dict) -> None:
        cfg = dict(config)
        cfg["training"] = self.training_record()
        save_adapter(self.adapter, out_dir, cfg)

    # ---- steps
    def _lr(self) -> float:
        return self.cfg.lr * min(1.0, (self.step + 1) / max(1, self.cfg.warmup))

    def _one(self, ex: FimExample, rng: np.random.Generator) -> tuple[torch.Tensor, dict, int]:
        ctx = fim_prompt(self.fim, self.cfg.fim_order, ex.prefix, ex.suffix)
        seq = ctx + ex.middle + [self.end_id]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            kv, teacher = context_pass(self.model, seq, self.device, len(ctx), len(ex.middle))
            variants = cut_variants(
                ex.middle,
                self.end_id,
                self.adapter.mask_id,
                self.cfg.window,
                self.cfg.variants,
                self.cfg.all_masked_rate,
                rng,
            )
            loss, stats = window_loss(
                self.model,
                self.adapter,
                kv,
                len(ctx),
                variants,
                self.device,
                teacher if self.cfg.distill else None,
            )
        return loss, stats, len(seq) + sum(len(v.ids) for v in variants)

    def train_step(self) -> dict:
        self.adapter.train()
        for g in self.opt.param_groups:
            g["lr"] = self._lr()
        rng = np.random.default_rng([self.cfg.seed, self.step])
        total, agg, toks = 0.0, dict.fromkeys(STAT_KEYS, 0.0), 0
        for _ in range(self.cfg.contexts_per_step):
            ex = self.maker.make(rng)
            loss, stats, n = self._one(ex, rng)
            (loss / self.cfg.contexts_per_step).backward()
            total += float(loss.detach()) / self.cfg.contexts_per_step
            toks += n
            for key in agg:
                agg[key] += stats[key]
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.adapter.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += toks
        self.supervised += int(agg["n"])
        return {"loss": total, "acc": agg["agree"] / max(agg["n"], 1), "tokens": toks}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out (validation packages) window loss and draft statistics: ``agree`` (the draft
        is the base's own choice) over middle tokens, ``agree1`` right after the frontier,
        ``sure`` (share with confidence >= 0.9) and ``sure_agree`` (how often those agree),
        ``end_acc`` (the end token right after the middle)."""
        if self.val_maker is None:
            return {}
        self.adapter.eval()
        rng = np.random.default_rng([self.cfg.seed, 10**9])
        loss_sum, agg = 0.0, dict.fromkeys(STAT_KEYS, 0.0)
        for _ in range(self.cfg.eval_examples):
            ex = self.val_maker.make(rng)
            loss, stats, _ = self._one(ex, rng)
            loss_sum += float(loss) * stats["weight"]
            for key in agg:
                agg[key] += stats[key]
        n = max(agg["n"], 1)
        return {
            "val_loss": round(loss_sum / max(agg["weight"], 1e-6), 4),
            "val_agree": round(agg["agree"] / n, 4),
            "val_agree1": round(agg["agree1"] / max(agg["n1"], 1), 4),
            "val_sure": round(agg["sure"] / n, 4),
            "val_sure_agree": round(agg["sure_agree"] / max(agg["sure"], 1), 4),
            "val_end_acc": round(agg["end_acc"] / max(agg["n_end"], 1), 4),
        }

    def run(self, export_dir: str | Path, export_config: dict, progress: bool = True) -> list[dict]:
        from tqdm import tqdm

        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not progress, dynamic_ncols=True)
        t_start, toks, ema = time.time(), 0, None
        log = open(self.out / "log.jsonl", "a")  # noqa: SIM115
        try:
            if self.step == 0 and not self.history:
                rec = {"step": 0, **self.evaluate()}
                self.history.append(rec)
                log.write(json.dumps(rec) + "\n")
            while self.step < cfg.steps:
                t0 = time.time()
                r = self.train_step()
                self.elapsed += time.time() - t0
                toks += r["tokens"]
                ema = r["loss"] if ema is None else 0.95 * ema + 0.05 * r["loss"]
                tps = toks / max(time.time() - t_start, 1e-6)
                bar.update(1)
                bar.set_postfix(loss=f"{ema:.3f}", acc=f"{r['acc']:.2f}", tok_s=f"{tps:.0f}")
                rec = {
                    "step": self.step,
                    "loss": round(r["loss"], 4),
                    "acc": round(r["acc"], 3),
                    "tok_s": round(tps),
                }
                over = bool(cfg.max_minutes) and self.elapsed >= cfg.max_minutes * 60
                done = self.step >= cfg.steps or over
                if self.step % cfg.eval_every == 0 or done:
                    rec.update(self.evaluate())
                    rec["loss_ema"] = round(ema, 4)
                    self.history.append(rec)
                log.write(json.dumps(rec) + "\n")
                log.flush()
                if self.step % cfg.save_every == 0 or done:
                    self.save_state()
                    self.export(export_dir, export_config)
                if over:
                    break
        finally:
            bar.close()
            log.close()
        return self.history
