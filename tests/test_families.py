"""Real checkpoint families: logit parity with transformers for the Qwen2 / Qwen3 / Llama layouts,
synthetic directories in each family's layout (config keys, tensor names, tokenizer files,
control tokens), and the errors a broken family directory produces."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from model_fixtures import FAMILY_TOKENS, make_family_dir
from safetensors.torch import load_file, save_file

from diffusion_core.checkpoint import (
    CheckpointError,
    inspect_checkpoint,
    load_checkpoint,
    load_model,
)

transformers = pytest.importorskip("transformers")


# ----------------------------------------------------------------------------- transformers parity
def _randomise(model: torch.nn.Module, seed: int) -> None:
    """O(1) activations (HF's 0.02 init makes every logit ~0 and any comparison trivially pass);
    norm weights away from 1 so a mis-mapped norm shows up."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name:
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise * p.shape[-1] ** -0.5)


def _hf_model(kind: str, tie: bool, seed: int = 0) -> torch.nn.Module:
    common = dict(
        vocab_size=97,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        rope_theta=5000.0,
        rms_norm_eps=1e-5,
        max_position_embeddings=256,
        tie_word_embeddings=tie,
        attn_implementation="eager",
    )
    if kind == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    elif kind == "qwen3":
        model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(head_dim=16, **common))
    else:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    _randomise(model, seed)
    return model.eval()


@pytest.mark.parametrize(
    ("kind", "tie"), [("qwen2", False), ("qwen2", True), ("qwen3", False), ("qwen3", True), ("llama", False)]
)
def test_logit_parity_with_transformers(kind: str, tie: bool, tmp_path: Path) -> None:
    hf = _hf_model(kind, tie)
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    ours = load_model(tmp_path, device="cpu", dtype="float32")
    assert ours.cfg.tie_embeddings is tie
    assert ours.cfg.qkv_bias is (kind == "qwen2") and ours.cfg.qk_norm is (kind == "qwen3")
    assert ours.cfg.rope_theta == 5000.0 and ours.cfg.rms_eps == 1e-5

    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 97, (2, 13), generator=gen)
    with torch.no_grad():
        # transformers 5 applies an explicit 4D boolean mask as given: all-visible = bidirectional
        ref = hf(ids, attention_mask=torch.ones(2, 1, 13, 13, dtype=torch.bool)).logits
        got = ours.logits(ours(ids))
        causal = hf(ids).logits
    # sanity: the comparison is in bidirectional mode (early positions see later ones)
    assert (ref - causal).abs().max() > 1e-2
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() <= 1e-4

    # padding keys are invisible: a padded row equals the reference on the unpadded sequence
    key_mask = torch.ones(2, 13, dtype=torch.bool)
    key_mask[1, 9:] = False
    with torch.no_grad():
        short = hf(ids[1:, :9], attention_mask=torch.ones(1, 1, 9, 9, dtype=torch.bool)).logits[0]
        padded = ours.logits(ours(ids, key_mask=key_mask))
    assert (padded[0] - ref[0]).abs().max().item() <= 1e-4
    assert (padded[1, :9] - short).abs().max().item() <= 1e-4


def test_transformers_qwen2_dir_loads_as_open_dcoder(tmp_path: Path) -> None:
    """A plain Qwen2ForCausalLM directory plus a tokenizer that declares a mask token is an
    Open-dCoder checkpoint: shifted, bidirectional, mask from the tokenizer."""
    hf = _hf_model("qwen2", tie=True)
    hf.save_pretrained(tmp_path)
    src, _ = make_family_dir(tmp_path / "donor", "open-dcoder")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / f, tmp_path / f)
    # the donor tokenizer has more ids than this tiny model: give the model a matching head
    cfg = json.loads((tmp_path / "config.json").read_text())
    with pytest.raises(CheckpointError, match="outside the model's vocabulary"):
        load_checkpoint(tmp_path)
    big = _hf_model_with_vocab(cfg, 530)
    big.save_pretrained(tmp_path)
    ck = load_checkpoint(tmp_path)
    assert ck.family.name == "open-dcoder" and ck.family.shifted
    assert ck.family.mask_id == ck.tokenizer.token_to_id("<M>")


def _hf_model_with_vocab(cfg: dict, vocab: int) -> torch.nn.Module:
    c = transformers.Qwen2Config(
        vocab_size=vocab,
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg["num_key_value_heads"],
        tie_word_embeddings=True,
    )
    m = transformers.Qwen2ForCausalLM(c)
    _randomise(m, 3)
    return m


def test_plain_llama_needs_a_family(tmp_path: Path) -> None:
    hf = _hf_model("llama", tie=False)
    hf.save_pretrained(tmp_path)
    src, _ = make_family_dir(tmp_path / "donor", "coda")
    shutil.copy(src / "tokenizer.json", tmp_path / "tokenizer.json")
    with pytest.raises(CheckpointError, match="cannot tell which diffusion family model_type 'llama'"):
        load_checkpoint(tmp_path)
    # naming the family in config.json serves it without code (the tokenizer declares no mask
    # token, so the open-dcoder builder needs config.json's mask id)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update(diffill_family="open-dcoder", mask_token_id=5)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    ck = load_checkpoint(tmp_path)
    assert ck.family.name == "open-dcoder" and ck.family.mask_id == 5 and ck.family.shifted


# ----------------------------------------------------------------------------- family directories
KINDS = ["dream", "dreamon", "diffucoder-instruct", "open-dcoder", "coda", "llada"]


def _ids(d: Path, kind: str) -> dict[str, int]:
    tok = load_checkpoint(d).tokenizer
    return {t: tok.token_to_id(t) for t in FAMILY_TOKENS[kind]}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, torch.nn.Module]]:
    root = tmp_path_factory.mktemp("families")
    return {k: make_family_dir(root / k, k, shards=2 if k in ("llada", "coda") else 1) for k in KINDS}


EXPECTED = {
    # kind: (family, shifted, mask, eos tokens, pad, begin tokens, end tokens, expand)
    "dream": (
        "dream",
        True,
        "<|mask|>",
        ["<|endoftext|>", "<|im_end|>"],
        "<|endoftext|>",
        ["<|beginoftext|>"],
        [],
        None,
    ),
    "dreamon": (
        "dream",
        True,
        "<|mask|>",
        ["<|endoftext|>", "<|im_end|>"],
        "<|endoftext|>",
        ["<|beginoftext|>"],
        ["<|endoftext|>"],
        "<|expand|>",
    ),
    "diffucoder-instruct": (
        "dream",
        True,
        "<|mask|>",
        ["<|endoftext|>", "<|dlm_pad|>", "<|im_end|>"],
        "<|dlm_pad|>",
        [],
        [],
        None,
    ),
    "open-dcoder": ("open-dcoder", True, "<M>", ["<|endoftext|>"], "<|endoftext|>", [], [], None),
    "coda": ("coda", True, "<|mask|>", ["<|im_end|>", "<|endoftext|>"], "<|endoftext|>", [], [], None),
    "llada": (
        "llada",
        False,
        "<|mdm_mask|>",
        ["<|endoftext|>", "<|eot_id|>"],
        "<|endoftext|>",
        ["<|startoftext|>"],
        [],
        None,
    ),
}


@pytest.mark.parametrize("kind", KINDS)
def test_family_dir_ids_and_logits(kind: str, family_dirs: dict) -> None:
    d, source = family_dirs[kind]
    ck = load_checkpoint(d)
    tok, f = ck.tokenizer, ck.family
    name, shifted, mask, eos, pad, begin, end, expand = EXPECTED[kind]

    def tid(t: str) -> int:
        i = tok.token_to_id(t)
        assert i is not None, t
        return i

    assert f.name == name and f.shifted is shifted
    assert f.mask_id == tid(mask)
    assert set(f.eos_ids) == {tid(t) for t in eos} and f.eos_ids[0] == tid(eos[0])
    assert f.pad_id == tid(pad)
    assert f.begin_ids == tuple(tid(t) for t in begin)
    assert f.end_ids == tuple(tid(t) for t in end)
    assert f.expand_id == (tid(expand) if expand else None)
    assert {tid(t) for t in FAMILY_TOKENS[kind]} <= f.special_ids
    # control tokens are whole tokens when allowed in text, and never come back from decode
    assert tok.encode(f"a{mask}b", allow_special=True)[1] == f.mask_id
    assert f.mask_id not in tok.encode(f"a{mask}b")
    assert tok.decode(tok.encode(f"x = 1{mask}{eos[0]}", allow_special=True)) == "x = 1"

    ids = torch.tensor([tok.encode("def add(a, b):\n\treturn a + b  # 😀\r\n")])
    logits = ck.model.logits(ck.model(ids))
    assert logits.shape == (1, ids.shape[1], ck.model.cfg.vocab_size)
    assert torch.isfinite(logits).all()
    # the loaded network is exactly the one the directory was written from
    with torch.no_grad():
        want = source.logits(source(ids))
    assert torch.equal(logits, want)


@pytest.mark.parametrize("kind", ["dream", "coda", "llada"])
def test_inspect_matches_load(kind: str, family_dirs: dict) -> None:
    d, source = family_dirs[kind]
    info = inspect_checkpoint(d)
    ck = load_checkpoint(d)
    assert info.family == ck.family and info.config == ck.model.cfg
    assert info.parameters == sum(p.numel() for p in ck.model.parameters()) == info.config.num_parameters()
    assert info.stored_dtype == "F32"
    summary = info.as_dict()
    json.dumps(summary)
    assert summary["special_tokens"]["mask"]["id"] == ck.family.mask_id


def test_default_dtype_and_override(family_dirs: dict) -> None:
    d, _ = family_dirs["dream"]
    assert load_checkpoint(d, device="cpu").dtype == torch.float32
    ck = load_checkpoint(d, device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in ck.model.parameters()} == {torch.bfloat16}


def test_family_override(family_dirs: dict, tmp_path: Path) -> None:
    d, _ = family_dirs["coda"]
    ck = load_checkpoint(d, family="open-dcoder")
    # no <M> here: the open-dcoder builder takes the tokenizer's declared mask token
    assert ck.family.name == "open-dcoder" and ck.family.mask_id == ck.tokenizer.token_to_id("<|mask|>")
    with pytest.raises(CheckpointError, match="unknown family 'gpt'"):
        load_checkpoint(d, family="gpt")


def test_llada_matches_an_independent_reference(family_dirs: dict) -> None:
    """A plain-torch LLaDA block written from the published block structure (RMSNorm, q/k/v,
    half-split RoPE, bidirectional attention, attn_out, ff_norm, silu(ff_proj) * up_proj, ff_out),
    applied straight to the checkpoint's tensors: catches a swapped gate/up or misnamed tensor."""
    d, _ = family_dirs["llada"]
    cfg = json.loads((d / "config.json").read_text())
    index = json.loads((d / "model.safetensors.index.json").read_text())
    w: dict[str, torch.Tensor] = {}
    for shard in set(index["weight_map"].values()):
        w.update(load_file(d / shard))
    ck = load_checkpoint(d)
    ids = torch.tensor([ck.tokenizer.encode("for i in range(10):\n    print(i)\n")])
    t = ids.shape[1]
    h, kvh, dm = cfg["n_heads"], cfg["n_kv_heads"], cfg["d_model"]
    hd, eps = dm // h, cfg["rms_norm_eps"]

    def rms(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return g * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    inv = 1.0 / cfg["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd)
    ang = torch.arange(t).float()[:, None] * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()

    def rope(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    p = "model.transformer."
    x = w[p + "wte.weight"][ids[0]]
    for i in range(cfg["n_layers"]):
        b = f"{p}blocks.{i}."
        y = rms(x, w[b + "attn_norm.weight"])
        q = (y @ w[b + "q_proj.weight"].T).view(t, h, hd).transpose(0, 1)
        k = (y @ w[b + "k_proj.weight"].T).view(t, kvh, hd).transpose(0, 1)
        v = (y @ w[b + "v_proj.weight"].T).view(t, kvh, hd).transpose(0, 1)
        k, v = k.repeat_interleave(h // kvh, 0), v.repeat_interleave(h // kvh, 0)
        att = torch.softmax(rope(q) @ rope(k).transpose(1, 2) / math.sqrt(hd), -1) @ v
        x = x + att.transpose(0, 1).reshape(t, dm) @ w[b + "attn_out.weight"].T
        y = rms(x, w[b + "ff_norm.weight"])
        gated = torch.nn.functional.silu(y @ w[b + "ff_proj.weight"].T) * (y @ w[b + "up_proj.weight"].T)
        x = x + gated @ w[b + "ff_out.weight"].T
    ref = rms(x, w[p + "ln_f.weight"]) @ w[p + "ff_out.weight"].T
    with torch.no_grad():
        got = ck.model.logits(ck.model(ids))[0]
    assert (got - ref).abs().max().item() <= 1e-4


def test_dream_vocab_merges_only(tmp_path: Path) -> None:
    """Dream ships vocab.json + merges.txt + added_tokens.json and no tokenizer_config.json:
    the added tokens are special at their published ids and the mask id comes from config.json."""
    d, _ = make_family_dir(tmp_path / "m", "dream", tokenizer_config=False)
    assert not (d / "tokenizer.json").exists() and not (d / "tokenizer_config.json").exists()
    ck = load_checkpoint(d)
    added = json.loads((d / "added_tokens.json").read_text())
    assert all(ck.tokenizer.token_to_id(t) == i for t, i in added.items())
    assert ck.family.mask_id == added["<|mask|>"] and ck.family.begin_ids == ()
    assert set(added.values()) <= ck.tokenizer.special_ids


def test_added_tokens_keep_ids_across_a_gap(tmp_path: Path) -> None:
    """A published id that is not the next free id (a gap after the base vocabulary) is kept."""
    d, _ = make_family_dir(tmp_path / "m", "dream", tokenizer_config=False)
    added = json.loads((d / "added_tokens.json").read_text())
    added["<|mask|>"] = max(added.values()) + 3
    (d / "added_tokens.json").write_text(json.dumps(added))
    cfg = json.loads((d / "config.json").read_text())
    cfg["mask_token_id"] = added["<|mask|>"]
    (d / "config.json").write_text(json.dumps(cfg))
    ck = load_checkpoint(d)
    assert ck.tokenizer.token_to_id("<|mask|>") == added["<|mask|>"] == ck.family.mask_id


# ----------------------------------------------------------------------------- broken family dirs
def _fresh(tmp_path: Path, kind: str, **kw: object) -> Path:
    return make_family_dir(tmp_path / kind, kind, **kw)[0]


def _set(d: Path, file: str, **changes: object) -> None:
    data = json.loads((d / file).read_text())
    for k, v in changes.items():
        if v is None:
            data.pop(k, None)
        else:
            data[k] = v
    (d / file).write_text(json.dumps(data))


def test_unknown_model_type(tmp_path: Path) -> None:
    d = _fresh(tmp_path, "dream")
    _set(d, "config.json", model_type="mamba")
    with pytest.raises(CheckpointError, match="unknown model_type 'mamba' in config.json"):
        load_checkpoint(d)


def test_missing_model_type(tmp_path: Path) -> None:
    d = _fresh(tmp_path, "dream")
    _set(d, "config.json", model_type=None)
    with pytest.raises(CheckpointError, match="missing required key 'model_type'"):
        load_checkpoint(d)


@pytest.mark.parametrize(
    ("kind", "key"),
    [("dream", "num_hidden_layers"), ("coda", "hidden_size"), ("llada", "d_model"), ("llada", "n_heads")],
)
def test_missing_required_family_key(tmp_path: Path, kind: str, key: str) -> None:
    d = _fresh(tmp_path, kind)
    _set(d, "config.json", **{key: None})
    with pytest.raises(CheckpointError, match=f"missing required key '{key}' in config.json"):
        load_checkpoint(d)


def test_unsupported_rope_scaling(tmp_path: Path) -> None:
    d = _fresh(tmp_path, "dream")
    _set(d, "config.json", rope_scaling={"type": "yarn", "factor": 4.0})
    with pytest.raises(CheckpointError, match="unsupported rope scaling 'yarn'"):
        load_checkpoint(d)


def test_unsupported_llada_variant(tmp_path: Path) -> None:
    d = _fresh(tmp_path, "llada")
    _set(d, "config.json", block_type="sequential")
    with pytest.raises(CheckpointError, match="unsupported value for 'block_type'"):
        load_checkpoint(d)


def test_missing_shard(tmp_path: Path) -> None:
    d = _fresh(tmp_path, "coda", shards=2)
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing shard model-00002-of-00002.safetensors"):
        load_checkpoint(d)


def test_tensor_listed_in_index_but_not_in_shard(tmp_path: Path) -> None:
    d = _fresh(tmp_path, "coda", shards=2)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    name = "model.layers.0.self_attn.q_norm.weight"
    shard = index["weight_map"][name]
    tensors = load_file(d / shard)
    del tensors[name]
    save_file(tensors, d / shard)
    with pytest.raises(CheckpointError, match=f"missing tensor '{name}' in {shard}"):
        load_checkpoint(d)


def test_missing_tensor_named(tmp_path: Path) -> None:
    d = _fresh(tmp_path, "dream")
    t = load_file(d / "model.safetensors")
    t.pop("model.layers.1.self_attn.v_proj.bias")
    save_file(t, d / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing tensor 'model.layers.1.self_attn.v_proj.bias'"):
        load_checkpoint(d)


def test_missing_untied_head(tmp_path: Path) -> None:
    d = _fresh(tmp_path, "dream")
    t = load_file(d / "model.safetensors")
    t.pop("lm_head.weight")
    save_file(t, d / "model.safetensors")
    with pytest.raises(CheckpointError, match="missing tensor 'lm_head.weight'"):
        load_checkpoint(d)


def test_wrong_shape_named_before_reading_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = _fresh(tmp_path, "llada", shards=2)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    name = "model.transformer.blocks.0.up_proj.weight"
    shard = index["weight_map"][name]
    t = load_file(d / shard)
    t[name] = t[name][:, :-1].contiguous()
    save_file(t, d / shard)
    from diffusion_core import checkpoint

    def no_reads(self, name):  # noqa: ANN001, ANN202
        raise AssertionError("tensor data read before every shape was checked")

    monkeypatch.setattr(checkpoint._TensorStore, "get", no_reads)
    with pytest.raises(CheckpointError, match=r"blocks.0.up_proj.weight \[96, 63\].*mlp.gate_up.weight"):
        load_checkpoint(d)


def test_wrong_shape_single_tensor(tmp_path: Path) -> None:
    d = _fresh(tmp_path, "dream")
    t = load_file(d / "model.safetensors")
    t["model.norm.weight"] = torch.ones(65)
    save_file(t, d / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"'model.norm.weight' has shape \[65\], expected \[64\]"):
        load_checkpoint(d)


def test_missing_tokenizer_files(tmp_path: Path) -> None:
    d = _fresh(tmp_path, "dream")
    (d / "merges.txt").unlink()
    with pytest.raises(
        CheckpointError, match=r"missing tokenizer files .*tokenizer.json.*vocab.json \+ merges.txt"
    ):
        load_checkpoint(d)


def test_invalid_tokenizer_config_json(tmp_path: Path) -> None:
    d = _fresh(tmp_path, "coda")
    (d / "tokenizer_config.json").write_text("{")
    with pytest.raises(CheckpointError, match=r"invalid JSON in .*tokenizer_config.json"):
        load_checkpoint(d)


def test_invalid_tokenizer_json(tmp_path: Path) -> None:
    d = _fresh(tmp_path, "coda")
    (d / "tokenizer.json").write_text('{"model": 3}')
    with pytest.raises(CheckpointError, match="invalid tokenizer.json"):
        load_checkpoint(d)


def test_missing_mask_token(tmp_path: Path) -> None:
    d = _fresh(tmp_path, "dream", tokenizer_config=False)
    _set(d, "config.json", mask_token_id=None)
    _set(d, "added_tokens.json", **{"<|mask|>": None})
    with pytest.raises(CheckpointError, match=r"missing mask token for the dream family"):
        load_checkpoint(d)


def test_mask_token_mismatch(tmp_path: Path) -> None:
    d = _fresh(tmp_path, "coda")
    _set(d, "config.json", mask_token_id=3)
    with pytest.raises(CheckpointError, match=r"mask token mismatch: config.json mask_token_id is 3"):
        load_checkpoint(d)


def test_added_token_id_conflict(tmp_path: Path) -> None:
    d = _fresh(tmp_path, "coda")
    tcfg = json.loads((d / "tokenizer_config.json").read_text())
    dec = tcfg["added_tokens_decoder"]
    first = min(dec, key=int)
    dec[str(int(first) + 100)] = dec.pop(first)
    (d / "tokenizer_config.json").write_text(json.dumps(tcfg))
    with pytest.raises(CheckpointError, match=r"added token .* has id \d+ in tokenizer_config.json"):
        load_checkpoint(d)


def test_engine_loads_a_family_dir(family_dirs: dict) -> None:
    from diffusion_core.engine import Engine

    d, _ = family_dirs["dreamon"]
    eng = Engine.from_pretrained(d)
    info = eng.info()
    assert info["family"] == "dream" and info["shifted_logits"] is True
    assert info["length_policy"] == "expand"
    assert info["mask_id"] == eng.tokenizer.token_to_id("<|mask|>")


@pytest.mark.parametrize(
    ("family", "want_pad"),
    [("dream", 1), ("open_dcoder", 1), ("coda", 2), ("llada", 2)],
)
def test_each_family_takes_its_pad_from_its_own_source(family: str, want_pad: int) -> None:
    """Where tokenizer_config.json and config.json name different pads, the Dream-style families
    take the tokenizer's (DiffuCoder pads answers with it) and CoDA and LLaDA the config's: the
    order each family states in one place (``eos_pad``'s ``pad_from``)."""
    from model_fixtures import tiny_tokenizer

    from diffusion_core.families import coda, dream, llada, open_dcoder
    from diffusion_core.families.spec import TokenizerInfo

    tok = tiny_tokenizer()  # ids: <|endoftext|> 0, <|mask|> 1, <|begin|> 2
    config = {"eos_token_id": 0, "pad_token_id": 2, "mask_token_id": 1}
    info = TokenizerInfo(eos="<|endoftext|>", pad="<|mask|>", mask="<|mask|>")
    build = {"dream": dream, "open_dcoder": open_dcoder, "coda": coda, "llada": llada}[family].build
    spec = build(config, tok, info)
    assert spec.pad_id == want_pad and 0 in spec.eos_ids
