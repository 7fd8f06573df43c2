"""Models by hub id against a fake hub on loopback (``HF_ENDPOINT``), as a user runs them.

Each command runs in a fresh process (huggingface_hub reads its environment at import), with its
own ``HF_HOME``, so the real cache is never touched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_hub import FakeHub, FakeRepo
from model_fixtures import make_tiny_model_dir

REPO = Path(__file__).resolve().parents[2]
ID = "test-org/tiny-diffill"


def diffill(
    *args: str, home: Path, endpoint: str | None, offline: bool = False
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(
        HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_ETAG_TIMEOUT="5", HF_HUB_DOWNLOAD_TIMEOUT="5"
    )
    env["HF_ENDPOINT"] = endpoint or "http://127.0.0.1:9"  # nothing listens on the discard port
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "diffill.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> FakeRepo:
    model = make_tiny_model_dir(tmp_path_factory.mktemp("hub-src") / "tiny")
    return FakeRepo.from_dir(
        model,
        **{
            "pytorch_model.bin": b"\x80\x04 not a pickle we would ever open",
            "modeling_evil.py": b"import os\n",
        },
    )


def test_pull_fetches_only_what_the_loader_reads_then_loads_offline(
    tiny_repo: FakeRepo, tmp_path: Path
) -> None:
    with FakeHub({ID: tiny_repo}) as hub:
        r = diffill("pull", ID, home=tmp_path, endpoint=hub.url)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "diffill checkpoint" in r.stdout and ID in r.stdout
        fetched = hub.fetched_files()
    assert "config.json" in fetched and "model.safetensors" in fetched
    assert not [f for f in fetched if f.endswith((".bin", ".py"))], fetched
    # the hub is gone and the machine offline: the cached model still loads and completes
    r = diffill(
        "complete",
        "examples/hello.py",
        "--line",
        "4",
        "--col",
        "9",
        "--model",
        ID,
        "--raw",
        home=tmp_path,
        endpoint=None,
        offline=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    r = diffill("models", home=tmp_path, endpoint=None, offline=True)
    assert r.returncode == 0 and ID in r.stdout and "diffill" in r.stdout.split(ID, 1)[1], r.stdout


def test_model_by_id_downloads_on_first_use_and_pins_revisions(tiny_repo: FakeRepo, tmp_path: Path) -> None:
    with FakeHub({ID: tiny_repo}) as hub:
        r = diffill("info", f"{ID}@{tiny_repo.commit}", home=tmp_path, endpoint=hub.url)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "diffill" in r.stdout
        r = diffill("info", f"{ID}@no-such-branch", home=tmp_path, endpoint=hub.url)
    assert r.returncode == 1
    assert "no revision 'no-such-branch'" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_not_cached_and_offline_is_one_clear_error(tmp_path: Path) -> None:
    r = diffill("info", "test-org/never-fetched", home=tmp_path, endpoint=None, offline=True)
    assert r.returncode == 1
    line = r.stderr.strip().splitlines()[-1]
    assert "not in the Hugging Face cache" in line and "HF_HUB_OFFLINE" in line and "diffill pull" in line, (
        r.stderr
    )
    assert "Traceback" not in r.stderr
    # unreachable rather than offline: the same, saying so
    r = diffill("info", "test-org/never-fetched", home=tmp_path, endpoint=None)
    assert r.returncode == 1 and "cannot be reached" in r.stderr, r.stderr


def test_a_corrupt_download_is_refused_by_hash_and_removed(tiny_repo: FakeRepo, tmp_path: Path) -> None:
    bad = FakeRepo(dict(tiny_repo.files), wrong_sha={"model.safetensors"})
    with FakeHub({ID: bad}) as hub:
        r = diffill("pull", ID, home=tmp_path, endpoint=hub.url)
    assert r.returncode == 1
    assert "model.safetensors" in r.stderr and "sha256" in r.stderr, r.stderr
    snapshots = list((tmp_path / "hub").rglob("model.safetensors"))
    assert not [p for p in snapshots if p.exists()], snapshots


def test_a_prebuilt_cache_folder_loads_with_the_network_off(tiny_repo: FakeRepo, tmp_path: Path) -> None:
    """The layout other tools (or a copied ~/.cache/huggingface) leave: refs/main -> snapshot."""
    root = tmp_path / "hub" / "models--test-org--tiny-diffill"
    snap = root / "snapshots" / tiny_repo.commit
    snap.mkdir(parents=True)
    for name, data in tiny_repo.files.items():
        if name.endswith((".bin", ".py")):
            continue
        (snap / name).write_bytes(data)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(tiny_repo.commit)
    r = diffill("info", ID, home=tmp_path, endpoint=None, offline=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert str(snap) in r.stdout or "diffill" in r.stdout


def test_the_language_server_reports_a_hub_download_as_progress(tiny_repo: FakeRepo, tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from lsp.conftest import LspSession, plain

    env = {"HF_HOME": str(tmp_path), "HF_HUB_DISABLE_TELEMETRY": "1"}
    with FakeHub({ID: tiny_repo}) as hub:
        env["HF_ENDPOINT"] = hub.url
        s = LspSession(["--model", ID], env=env)
        try:
            s.initialize(init_options={"diffill": {"debounceMs": 0, "prefetch": False}})
            s.wait_notification("diffill/status", lambda p: plain(p)["state"] in ("ready", "failed"))
            assert s.stats()["state"] == "ready", s.stats()
            reports = [
                p.value.get("message", "")
                for m, p in s.notifications
                if m == "$/progress" and p.value.get("kind") == "report"
            ]
        finally:
            s.close()
    assert any(f"Downloading {ID}" in r for r in reports), reports
    assert "model.safetensors" in hub.fetched_files()
