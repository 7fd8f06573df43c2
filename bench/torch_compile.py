"""Does torch.compile make Diffill-Coder's CPU step faster? (issue: "the denoising step compiled if
it measures faster"). Same weights and requests, eager vs ``torch.compile(model.forward,
dynamic=True)``, the AR decoder and the default sampler, interleaved, median of 5; the context K/V
cache is cleared before every call so each one encodes its ~900-token context.

    python3 bench/torch_compile.py          # ~8 minutes on 2 cores, most of it compiling

Writes bench/results/torch_compile.json.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from diffusion_core.engine import Engine
from diffusion_core.interface import InfillRequest, SamplingOptions

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    eng = Engine.from_pretrained()
    prefix = (REPO / "lsp_server" / "completer.py").read_text()[:3000]
    reqs = [
        InfillRequest(
            prefix + f"\n\ndef helper_{i}(x):\n    return ",
            "\n",
            16,
            SamplingOptions(decoder=d),
            stop=("\n",),
        )
        for i, d in enumerate(["ar", "diffusion"])
    ]

    def run(req: InfillRequest) -> tuple[float, str]:
        eng.prefix_cache.clear()
        t = time.perf_counter()
        c = eng.infill_batch([req])[0]
        return (time.perf_counter() - t) * 1000, c.text

    eager = eng.model.forward
    compiled = torch.compile(eager, dynamic=True)
    res: dict = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
        }
    }
    for label, fwd in (("eager", eager), ("compiled", compiled)):
        eng.model.forward = fwd
        t = time.perf_counter()
        for r in reqs:
            run(r)  # warm-up: the compiled one compiles here
        res[f"{label}_warmup_s"] = round(time.perf_counter() - t, 1)
    times: dict[str, list[float]] = {}
    texts: dict[str, str] = {}
    for _ in range(5):
        for label, fwd in (("eager", eager), ("compiled", compiled)):
            eng.model.forward = fwd
            for r in reqs:
                ms, text = run(r)
                key = f"{label}-{r.options.decoder}"
                times.setdefault(key, []).append(ms)
                texts[key] = text
    res["median_ms"] = {k: round(statistics.median(v), 1) for k, v in times.items()}
    res["same_text"] = len({texts["eager-ar"], texts["compiled-ar"]}) == 1
    out = REPO / "bench" / "results" / "torch_compile.json"
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
