"""Loading and saving checkpoint directories: the project's own format and broken directories."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from model_fixtures import BEGIN_TOKEN, EOS_TOKEN, MASK_TOKEN, make_tiny_model_dir
from safetensors.torch import load_file, save_file

from diffusion_core.checkpoint import CheckpointError, load_checkpoint, save_pretrained


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


def test_tiny_dir_loads_with_family_ids(tiny_dir: Path) -> None:
    ck = load_checkpoint(tiny_dir)
    tok = ck.tokenizer
    assert ck.family.name == "diffill"
    assert ck.family.shifted is False
    assert ck.family.mask_id == tok.token_to_id(MASK_TOKEN)
    assert ck.family.eos_ids == (tok.token_to_id(EOS_TOKEN),)
    assert ck.family.pad_id == tok.token_to_id(EOS_TOKEN)
    assert ck.family.begin_ids == (tok.token_to_id(BEGIN_TOKEN),)
    assert {ck.family.mask_id, ck.family.pad_id, *ck.family.begin_ids} <= ck.family.special_ids
    assert ck.device == torch.device("cpu") and ck.dtype == torch.float32
    assert ck.model_id == "diffill-tiny"
    assert 256 < tok.vocab_size <= ck.model.cfg.vocab_size
    ids = torch.tensor([tok.encode("def add(a, b):\n    return a + b\n")])
    logits = ck.model.logits(ck.model(ids))
    assert logits.shape == (1, ids.shape[1], ck.model.cfg.vocab_size)
    assert torch.isfinite(logits).all() and logits.std() > 0.1


def test_tiny_dir_is_deterministic_and_seeded(tmp_path: Path) -> None:
    a = load_file(make_tiny_model_dir(tmp_path / "a") / "model.safetensors")
    b = load_file(make_tiny_model_dir(tmp_path / "b") / "model.safetensors")
    c = load_file(make_tiny_model_dir(tmp_path / "c", seed=1) / "model.safetensors")
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["embed.weight"], c["embed.weight"])
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (tmp_path / "b" / "tokenizer.json").read_text()


def test_cfg_overrides(tmp_path: Path) -> None:
    d = make_tiny_model_dir(
        tmp_path / "m",
        num_layers=1,
        hidden_size=32,
        num_heads=2,
        num_kv_heads=1,
        qk_norm=True,
        qkv_bias=False,
        tie_embeddings=True,
        head_dim=8,
        shifted=True,
    )
    ck = load_checkpoint(d)
    cfg = ck.model.cfg
    assert (cfg.num_layers, cfg.hidden_size, cfg.head_dim, cfg.qk_norm, cfg.tie_embeddings) == (
        1,
        32,
        8,
        True,
        True,
    )
    assert ck.model.lm_head is None and ck.family.shifted is True
    assert "lm_head.weight" not in load_file(d / "model.safetensors")


def test_save_load_roundtrip_preserves_weights(tiny_dir: Path, tmp_path: Path) -> None:
    ck = load_checkpoint(tiny_dir)
    out = save_pretrained(
        ck.model, ck.tokenizer.backend, ck.family, tmp_path / "copy", extra={"model_id": "x"}
    )
    again = load_checkpoint(out)
    assert again.model_id == "x" and again.family == ck.family
    for (n1, p1), (n2, p2) in zip(ck.model.state_dict().items(), again.model.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "diffill" and cfg["mask_token"] == MASK_TOKEN and cfg["shifted"] is False


def test_dtype_override(tiny_dir: Path) -> None:
    ck = load_checkpoint(tiny_dir, dtype="bf16")
    assert ck.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in ck.model.parameters())
    with pytest.raises(ValueError, match="unknown dtype"):
        load_checkpoint(tiny_dir, dtype="int3")


def test_mask_token_by_string_only(tiny_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "m"
    shutil.copytree(tiny_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    for k in ("mask_token_id", "eos_token_ids", "pad_token_id", "begin_token_ids"):
        del cfg[k]
    (d / "config.json").write_text(json.dumps(cfg))
    assert load_checkpoint(d).family == load_checkpoint(tiny_dir).family


def test_engine_loads_tiny_dir(tiny_dir: Path) -> None:
    from diffusion_core.engine import Engine

    eng = Engine.from_pretrained(tiny_dir)
    info = eng.info()
    assert info["family"] == "diffill" and info["model_id"] == "diffill-tiny"
    assert eng.count_tokens("x = 1") == len(eng.tokenizer.encode("x = 1"))


# ----------------------------------------------------------------------------- broken directories
def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_config(d: Path, **changes: object) -> None:
    cfg = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))


def _edit_weights(d: Path, fn) -> None:  # noqa: ANN001
    tensors = load_file(d / "model.safetensors")
    fn(tensors)
    save_file(tensors, d / "model.safetensors")


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")


def test_path_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(CheckpointError, match="not a directory"):
        load_checkpoint(tmp_path / "f")


def test_missing_config(tiny_dir: Path, tmp_path: Path) -> None:
    d = _copy(tiny_dir, tmp_path / "m")
    (d / "config.json").unlink()
    with pytest.raises(CheckpointError, match="missing config.json"):
        load_checkpoint(d)


def test_invalid_json(tiny_dir: Path, tmp_path: Path) -> None:
    d = _copy(tiny_dir, tmp_path / "m")
    (d / "config.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match=r"invalid JSON in .*config.json"):
        load_checkpoint(d)


def test_missing_required_key(tiny_dir: Path, tmp_path: Path) -> None:
    d = _copy(tiny_dir, tmp_path / "m")
    _edit_config(d, num_heads=None)
    with pytest.raises(CheckpointError, match="'num_heads'"):
        load_checkpoint(d)


def test_wrong_type_key(tiny_dir: Path, tmp_path: Path) -> None:
    d = _copy(tiny_dir, tmp_path / "m")
    _edit_config(d, hidden_size="64")
    with pytest.raises(CheckpointError, match="'hidden_size'"):
        load_checkpoint(d)


def test_unknown_model_type(tiny_dir: Path, tmp_path: Path) -> None:
    d = _copy(tiny_dir, tmp_path / "m")
    _edit_config(d, model_type="gpt_neox")
    with pytest.raises(CheckpointError, match="unknown model_type 'gpt_neox'"):
        load_checkpoint(d)


def test_missing_weights_mentions_pickle(tiny_dir: Path, tmp_path: Path) -> None:
    d = _copy(tiny_dir, tmp_path / "m")
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"missing model.safetensors.*pickle"):
        load_checkpoint(d)


def test_missing_tensor(tiny_dir: Path, tmp_path: Path) -> None:
    d = _copy(tiny_dir, tmp_path / "m")
    _edit_weights(d, lambda t: t.pop("layers.1.mlp.down_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor 'layers.1.mlp.down_proj.weight'"):
        load_checkpoint(d)


def test_wrong_shape(tiny_dir: Path, tmp_path: Path) -> None:
    d = _copy(tiny_dir, tmp_path / "m")
    _edit_weights(d, lambda t: t.__setitem__("norm.weight", torch.ones(63)))
    with pytest.raises(CheckpointError, match=r"'norm.weight' has shape \[63\], expected \[64\]"):
        load_checkpoint(d)


def test_missing_tokenizer(tiny_dir: Path, tmp_path: Path) -> None:
    d = _copy(tiny_dir, tmp_path / "m")
    (d / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        load_checkpoint(d)


def test_missing_mask_token(tiny_dir: Path, tmp_path: Path) -> None:
    d = _copy(tiny_dir, tmp_path / "m")
    _edit_config(d, mask_token_id=None, mask_token=None)
    with pytest.raises(CheckpointError, match="missing mask token"):
        load_checkpoint(d)
    _edit_config(d, mask_token="<|nothing|>")
    with pytest.raises(CheckpointError, match=r"mask token '<\|nothing\|>'"):
        load_checkpoint(d)


def test_missing_shard(tiny_dir: Path, tmp_path: Path) -> None:
    d = _copy(tiny_dir, tmp_path / "m")
    tensors = load_file(d / "model.safetensors")
    names = sorted(tensors)
    half = len(names) // 2
    shards = {
        "model-00001-of-00002.safetensors": names[:half],
        "model-00002-of-00002.safetensors": names[half:],
    }
    for file, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, d / file)
    (d / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    sharded = load_checkpoint(d)  # sharded loading works
    ref = load_checkpoint(tiny_dir)
    assert all(torch.equal(a, b) for a, b in zip(sharded.model.parameters(), ref.model.parameters()))
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing shard model-00002-of-00002.safetensors"):
        load_checkpoint(d)


# ----------------------------------------------------------------------------- diffill info
def test_info_command_text_and_json(tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from diffill.cli import main

    assert main(["info", str(tiny_dir)]) == 0
    text = capsys.readouterr().out
    ck = load_checkpoint(tiny_dir)
    n = sum(p.numel() for p in ck.model.parameters())
    assert "family:      diffill" in text and f"{n:,}" in text
    assert f"mask:        {ck.family.mask_id} '<|mask|>'" in text
    assert "stored F32, loads as float32 on cpu" in text

    assert main(["info", str(tiny_dir), "--json", "--dtype", "bf16"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["parameters"] == n and data["load_dtype"] == "bfloat16"
    assert data["special_tokens"]["mask"] == {"id": ck.family.mask_id, "token": MASK_TOKEN}
    assert [e["id"] for e in data["special_tokens"]["eos"]] == list(ck.family.eos_ids)
    assert data["shifted_logits"] is False and data["family"] == "diffill"
    assert data["length_policy"] == "fixed"  # the tiny model was not trained to predict its length


def test_info_command_reports_broken_dirs(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from diffill.cli import main

    d = _copy(tiny_dir, tmp_path / "m")
    _edit_weights(d, lambda t: t.pop("norm.weight"))
    assert main(["info", str(d)]) == 1
    err = capsys.readouterr().err
    assert "missing tensor 'norm.weight'" in err and "Traceback" not in err


def test_default_device_and_dtype_policy() -> None:
    from diffusion_core.checkpoint import resolve_device, resolve_dtype

    assert resolve_dtype(None, torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16
    assert resolve_dtype(torch.bfloat16, torch.device("cpu")) == torch.bfloat16
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_a_config_with_absurd_layer_count_is_refused_at_once(tmp_path: Path) -> None:
    """10^9 layers in config.json used to build the model for minutes with memory growing; it is
    refused from the tensor names before anything per layer is built."""
    import json
    import time

    from model_fixtures import make_tiny_model_dir

    from diffusion_core.checkpoint import CheckpointError, inspect_checkpoint, load_checkpoint

    d = make_tiny_model_dir(tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["num_layers"] = 1_000_000_000
    (d / "config.json").write_text(json.dumps(cfg))
    t0 = time.monotonic()
    for load in (inspect_checkpoint, load_checkpoint):
        with pytest.raises(CheckpointError, match="says 1000000000 layers but the weights hold 2"):
            load(d)
    assert time.monotonic() - t0 < 10
