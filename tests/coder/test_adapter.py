"""The adapter: applied to the block rows only, saved as size-capped safetensors shards, loaded
back exactly, and refused with a message naming what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffusion_core.checkpoint import load_model
from diffusion_core.coder.adapter import AdapterError, load_adapter, save_adapter
from diffusion_core.model import Adapted

from .conftest import random_adapter, write_base


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    path, _ = write_base(tmp_path_factory.mktemp("adapter") / "base")
    return load_model(path, device="cpu", dtype=torch.float32, layout="qwen2")


def test_only_rows_from_on_are_adapted(base) -> None:  # noqa: ANN001
    ad = random_adapter(base, mask_id=base.cfg.vocab_size - 1)
    ids = torch.tensor([[3, 8, 21, 40, 7, ad.mask_id, ad.mask_id]])
    with torch.no_grad():
        plain = base(ids)
        mixed = base(ids, adapted=Adapted(ad, rows_from=4))
        full = base(ids, adapted=Adapted(ad, rows_from=0))
    # rows before rows_from only differ through attention to the adapted rows' keys; with a
    # causal mask they cannot see them, so they equal the base exactly
    causal = torch.ones(7, 7, dtype=torch.bool).tril()[None, None]
    with torch.no_grad():
        plain_c = base(ids, attn_mask=causal)
        mixed_c = base(ids, attn_mask=causal, adapted=Adapted(ad, rows_from=4))
    torch.testing.assert_close(mixed_c[:, :4], plain_c[:, :4], rtol=0, atol=0)
    assert not torch.allclose(mixed_c[:, 4:], plain_c[:, 4:], atol=1e-3)
    assert not torch.allclose(full[:, :4], plain[:, :4], atol=1e-3)
    assert not torch.allclose(mixed[:, 4:], plain[:, 4:], atol=1e-3)


def test_round_trip_and_shard_cap(base, tmp_path: Path) -> None:  # noqa: ANN001
    ad = random_adapter(base, mask_id=base.cfg.vocab_size - 1)
    paths = save_adapter(
        ad, tmp_path / "a", {"model_type": "diffill-coder"}, torch.float32, max_shard_bytes=20_000
    )
    assert len(paths) > 1 and all(p.stat().st_size <= 20_000 + 4_096 for p in paths)  # + safetensors header
    back = load_adapter(tmp_path / "a", base.cfg)
    for (n1, a), (n2, b) in zip(ad.state_dict().items(), back.state_dict().items()):
        assert n1 == n2
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert back.mask_id == ad.mask_id and back.scale == ad.scale
    ids = torch.tensor([[3, 8, ad.mask_id]])
    with torch.no_grad():
        torch.testing.assert_close(base(ids, adapted=Adapted(back)), base(ids, adapted=Adapted(ad)))
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["model_type"] == "diffill-coder" and cfg["adapter"]["rank"] == 4


def test_bf16_shards_stay_close(base, tmp_path: Path) -> None:  # noqa: ANN001
    ad = random_adapter(base, mask_id=base.cfg.vocab_size - 1)
    save_adapter(ad, tmp_path / "a", {})
    back = load_adapter(tmp_path / "a", base.cfg)
    ids = torch.tensor([[3, 8, 11, ad.mask_id, ad.mask_id]])
    with torch.no_grad():
        want = base.logits(base(ids, adapted=Adapted(ad)))
        got = base.logits(base(ids, adapted=Adapted(back)))
    assert (want.argmax(-1) == got.argmax(-1)).all()


def test_wrong_shapes_name_the_tensor(base, tmp_path: Path) -> None:  # noqa: ANN001
    other, _ = write_base(tmp_path / "other", hidden_size=32)
    small = load_model(other, device="cpu", dtype=torch.float32, layout="qwen2")
    save_adapter(random_adapter(small, mask_id=small.cfg.vocab_size - 1), tmp_path / "a", {})
    with pytest.raises(
        AdapterError, match=r"adapter tensor '.+' in adapter-00001-of-00001\.safetensors has shape"
    ):
        load_adapter(tmp_path / "a", base.cfg)


def test_missing_shard_and_bad_config(base, tmp_path: Path) -> None:  # noqa: ANN001
    ad = random_adapter(base, mask_id=base.cfg.vocab_size - 1)
    paths = save_adapter(ad, tmp_path / "a", {}, torch.float32, max_shard_bytes=20_000)
    paths[1].unlink()
    with pytest.raises(AdapterError, match=f"missing adapter shard '{paths[1].name}'"):
        load_adapter(tmp_path / "a", base.cfg)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text('{"adapter": {"rank": "x"}}')
    with pytest.raises(AdapterError, match="invalid adapter config"):
        load_adapter(tmp_path / "b", base.cfg)
