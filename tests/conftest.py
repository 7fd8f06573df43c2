"""Suite-wide setup that must happen before any test module imports triton.

Triton decides at kernel-definition time whether a kernel is compiled or interpreted, and the
first test module that imports ``diffusion_core`` defines every kernel. Without a GPU we build
them for Triton's CPU interpreter here, once, so tests/kernels can run them. Interpreted kernels
launch on CPU tensors only where a test opts in (``kernels._common.allow_cpu_interpreter``), so
the rest of the suite, and the servers it starts, keep the fast torch path.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
