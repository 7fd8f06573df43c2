"""What `pip install` puts on a user's sys.path: only names that are clearly Diffill's (the folders
`kernels/` and `http_server/` install as `diffill_kernels` and `diffill_http`: `kernels` is a real
PyPI package), the shipped models, and no test fixtures."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_unambiguous_packages_with_the_models(tmp_path: Path) -> None:
    # build from a copy of the tracked files, so the checkout gets no build/ folder
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True)
    src = tmp_path / "src"
    for rel in tracked.stdout.splitlines():
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    out = tmp_path / "wheel"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        str(src),
        "-w",
        str(out),
    ]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = out.glob("diffill-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"diffill", "diffusion_core", "lsp_server", "diffill_kernels", "diffill_http"}
    assert "diffill_kernels/attention.py" in names and "diffill_http/app.py" in names
    assert "diffusion_core/tiny_model/model.safetensors" in names
    assert "diffusion_core/coder/weights/config.json" in names
    assert not [n for n in names if "model_fixtures" in n or n.endswith("/testing.py")]
    # every package of the checkout is in the wheel (an explicit package list can miss a new one)
    renamed = {"kernels": "diffill_kernels", "http_server": "diffill_http"}
    for init in tracked.stdout.splitlines():
        parts = init.split("/")
        if parts[-1] == "__init__.py" and parts[0] in {"diffill", "diffusion_core", "lsp_server", *renamed}:
            installed = "/".join([renamed.get(parts[0], parts[0]), *parts[1:]])
            assert installed in names, f"{init} is not in the wheel"
