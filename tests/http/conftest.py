"""Fixtures for the HTTP server tests: a real tiny model and real servers on loopback sockets."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from http_live import CHAT_TEMPLATE, LiveServer
from model_fixtures import make_tiny_model_dir

from diffusion_core.engine import Engine


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("http-tiny") / "model")


@pytest.fixture(scope="session")
def instruct_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = make_tiny_model_dir(
        tmp_path_factory.mktemp("http-tiny-instruct") / "model", model_id="diffill-tiny-it"
    )
    (path / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": CHAT_TEMPLATE, "eos_token": "<|endoftext|>"}), encoding="utf-8"
    )
    return path


@pytest.fixture(scope="session")
def engine(tiny_model_dir: Path) -> Engine:
    return Engine.from_pretrained(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def server(engine: Engine) -> Iterator[LiveServer]:
    with LiveServer(engine) as s:
        yield s
