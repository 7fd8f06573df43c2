"""Suite-wide setup that must happen before any test module imports triton.

Triton decides at kernel-definition time whether a kernel is compiled or interpreted, and the
first test module that imports ``diffusion_core`` defines every kernel. Without a GPU we build
them for Triton's CPU interpreter here, once, so tests/kernels can run them. Interpreted kernels
launch on CPU tensors only where a test opts in (``kernels._common.allow_cpu_interpreter``), so
the rest of the suite, and the servers it starts, keep the fast torch path.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Diffill-Coder's draft window is measured at load (diffusion_core/coder/window_policy.py); tests
# take the adapter's configured window so their outcome never depends on this machine's speed.
# The policy's own tests and the README command's test run the measurement.
os.environ.setdefault("DIFFILL_WINDOW", "configured")
# Likewise the CPU weight format: the measured choice may pick w8a8, whose activation scale is per
# call (a row's result depends on the rows computed with it), so the exactness tests (quality 1 is
# greedy AR, reused K/V is a recomputation) would depend on the machine. Tests take plain weights
# unless they ask for a format; the format tests and the README command's test measure.
os.environ.setdefault("DIFFILL_WEIGHTS", "plain")


def _import_pypi_kernels() -> None:
    """``python -m pytest`` puts the repository root first on sys.path, where the design card's
    ``kernels/`` folder (installed as ``diffill_kernels``) shadows the PyPI package ``kernels``,
    which transformers >= 5.25 imports whenever it is installed (the converter and family tests
    check against transformers). Load the installed package under its own name first."""
    import importlib.metadata
    import importlib.util
    import sys

    try:
        init = Path(str(importlib.metadata.distribution("kernels").locate_file("kernels/__init__.py")))
    except importlib.metadata.PackageNotFoundError:
        return
    if "kernels" in sys.modules or not init.exists():
        return
    spec = importlib.util.spec_from_file_location(
        "kernels", init, submodule_search_locations=[str(init.parent)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["kernels"] = module
    spec.loader.exec_module(module)


_import_pypi_kernels()


@pytest.fixture(scope="session")
def coder_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(base directory, adapter directory) of the tiny test coder (tests/coder_fixtures.py)."""
    from coder_fixtures import make_tiny_coder  # after the environment above is set

    return make_tiny_coder(tmp_path_factory.mktemp("coder"))
