"""Training: canvases match the sampler's layout, a step lowers the loss, resuming is exact."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion_core.checkpoint import load_checkpoint
from diffusion_core.training.tokenizer_train import train_tokenizer
from diffusion_core.training.train import (
    ExampleMaker,
    StepBatches,
    TrainConfig,
    Trainer,
    batch_for_step,
    loss_fn,
    shard_weights,
)

TEXTS = [
    f"def fn_{i}(a, b):\n    total = a + b * {i}\n    if total > {i}:\n        return total\n"
    "    return -total\n\n"
    f"class K{i}:\n    def run(self, x):\n        return fn_{i}(x, {i})\n"
    for i in range(40)
]


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_tokenizer(TEXTS, vocab_size=300).save(str(path))
    return path


def tiny_cfg(tok_path: Path, out: Path, **kw: object) -> TrainConfig:
    base = dict(
        tokenizer=str(tok_path),
        out=str(out),
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        intermediate_size=64,
        seq_len=96,
        batch_size=4,
        steps=6,
        warmup=1,
        lr=1e-2,
        eval_every=3,
        save_every=3,
        eval_examples=4,
        threads=1,
    )
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_fim_canvas_layout(tok_path: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(tok_path, tmp_path)
    trainer = Trainer(cfg, texts=TEXTS, val_texts=TEXTS[:4])
    maker: ExampleMaker = trainer.maker
    rng = np.random.default_rng(0)
    seen_eos = False
    for _ in range(50):
        ex = maker.fim(rng)
        if ex is None:
            continue
        assert ex.ids[0] == maker.begin and len(ex.ids) <= cfg.seq_len
        sup = [i for i, w in enumerate(ex.weights) if w > 0]
        assert sup, "a FIM example supervises its middle"
        lo, hi = sup[0], sup[-1]
        # supervised positions are masked in the input, and only there are inputs and targets apart
        assert all(ex.ids[i] == maker.mask for i in sup)
        assert all(ex.ids[i] == ex.targets[i] for i in range(len(ex.ids)) if ex.ids[i] != maker.mask)
        region = ex.targets[lo : hi + 1]
        if maker.eos in region:
            seen_eos = True
            first = region.index(maker.eos)
            # once the completion ended, the rest of the masked span is eos/pad only
            assert all(t == maker.eos for t in region[first:])
    assert seen_eos


def _count_and_length(maker: ExampleMaker, seed: int) -> list[tuple[int, int]]:
    """(mask count, middle length) of FIM examples whose middle is fully masked."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(400):
        ex = maker.fim(rng)
        if ex is None:
            continue
        sup = [i for i, w in enumerate(ex.weights) if w > 0]
        region = ex.targets[sup[0] : sup[-1] + 1]
        m = region.index(maker.eos) if maker.eos in region else len(region)
        out.append((len(region), m))
    return out


def test_independent_mask_counts_do_not_tell_the_model_the_length(tok_path: Path, tmp_path: Path) -> None:
    # the length predictor (diffusion_core/length.py) reads the model's end probabilities under a
    # 64-mask canvas: that only measures the context if 64 masks occur with short middles too
    runs = {}
    for policy in ("independent", "coupled"):
        cfg = tiny_cfg(tok_path, tmp_path / policy, full_mask_rate=1.0, mask_counts=policy)
        trainer = Trainer(cfg, texts=TEXTS, val_texts=TEXTS[:4])
        runs[policy] = (_count_and_length(trainer.maker, 0), trainer.predicts_length)
    pairs, predicts = runs["independent"]
    assert predicts and {n for n, _ in pairs} >= {8, 16, 32, 64}
    assert any(m <= 8 for n, m in pairs if n == 64), "short middles under the largest mask count"
    pairs, predicts = runs["coupled"]
    assert not predicts and all(n <= 2 * m + 8 for n, m in pairs)
    with pytest.raises(ValueError, match="mask_counts"):
        Trainer(tiny_cfg(tok_path, tmp_path / "x", mask_counts="sometimes"), texts=TEXTS, val_texts=[])


def test_one_step_lowers_loss_on_fixed_batch(tok_path: Path, tmp_path: Path) -> None:
    trainer = Trainer(tiny_cfg(tok_path, tmp_path), texts=TEXTS, val_texts=TEXTS[:4])
    batch = batch_for_step(trainer.maker, 0, 0, 4)
    with torch.no_grad():
        before = float(loss_fn(trainer.model, batch))
    trainer.train_step(batch)
    with torch.no_grad():
        after = float(loss_fn(trainer.model, batch))
    assert after < before


def test_resume_reproduces_trajectory(tok_path: Path, tmp_path: Path) -> None:
    a = Trainer(tiny_cfg(tok_path, tmp_path / "a"), texts=TEXTS, val_texts=TEXTS[:4])
    losses_a = []
    for step in range(4):
        losses_a.append(a.train_step(batch_for_step(a.maker, 0, step, 4)))
        if step == 1:
            a.save_state()
            shutil.copy(a.state_path, tmp_path / "at2.pt")
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "at2.pt", tmp_path / "b" / "state.pt")
    b = Trainer(tiny_cfg(tok_path, tmp_path / "b"), texts=TEXTS, val_texts=TEXTS[:4])
    assert b.try_resume() and b.step == 2
    losses_b = [b.train_step(batch_for_step(b.maker, 0, step, 4)) for step in (2, 3)]
    assert losses_b == pytest.approx(losses_a[2:], rel=1e-5)


def test_run_saves_loadable_checkpoint(tok_path: Path, tmp_path: Path) -> None:
    trainer = Trainer(tiny_cfg(tok_path, tmp_path), texts=TEXTS, val_texts=TEXTS[:4])
    history = trainer.run(progress=False)
    assert [h["step"] for h in history] == [3, 6]
    assert {"val_fim", "val_mdm"} <= set(history[-1])
    ckpt = load_checkpoint(tmp_path / "model")
    assert ckpt.family.mask_id == 1 and ckpt.family.eos_ids == (0,) and ckpt.family.begin_ids == (2,)
    assert not ckpt.family.shifted
    assert ckpt.family.predicts_length  # trained with independent mask counts
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(ckpt.model.state_dict()[k], v)


def test_worker_batches_equal_inline_batches(tok_path: Path, tmp_path: Path) -> None:
    trainer = Trainer(tiny_cfg(tok_path, tmp_path), texts=TEXTS, val_texts=TEXTS[:4])
    ds = StepBatches(trainer.maker, 0, 4, 6)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(ds, range(2, 6)), batch_size=None, num_workers=2
    )
    for step, got in zip(range(2, 6), loader, strict=True):
        want = batch_for_step(trainer.maker, 0, step, 4)
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_shard_weights_round_trip(tok_path: Path, tmp_path: Path) -> None:
    trainer = Trainer(tiny_cfg(tok_path, tmp_path), texts=TEXTS, val_texts=TEXTS[:4])
    out = trainer.export(tmp_path / "m")
    shards = shard_weights(out, max_bytes=20_000, dtype=torch.bfloat16)
    assert len(shards) > 1 and all(p.stat().st_size < 40_000 for p in shards)
    ckpt = load_checkpoint(out, dtype="float32")
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(ckpt.model.state_dict()[k], v.to(torch.bfloat16).float())


def test_causal_warmup_then_shifted_diffusion(tok_path: Path, tmp_path: Path) -> None:
    ar = Trainer(
        tiny_cfg(tok_path, tmp_path / "ar", objective="ar", shifted=True), texts=TEXTS, val_texts=TEXTS[:4]
    )
    x = torch.tensor([[2, 40, 41, 42, 43, 44]])
    y = x.clone()
    y[0, 4] = 50
    with torch.no_grad():
        a, b = ar.model(x, causal=True), ar.model(y, causal=True)
        assert torch.equal(a[0, :4], b[0, :4])  # causal: earlier positions never see later tokens
        assert not torch.allclose(ar.model(x)[0, :4], ar.model(y)[0, :4])  # default: bidirectional
    ar.run(progress=False)
    assert "val_ar" in ar.history[-1]
    mdm = Trainer(
        tiny_cfg(tok_path, tmp_path / "mdm", shifted=True, init_from=str(ar.state_path)),
        texts=TEXTS,
        val_texts=TEXTS[:4],
    )
    for k, v in ar.model.state_dict().items():
        assert torch.equal(mdm.model.state_dict()[k], v)
    mdm.run(progress=False)
    assert load_checkpoint(tmp_path / "mdm" / "model").family.shifted
