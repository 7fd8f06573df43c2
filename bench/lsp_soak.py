"""Memory of `diffill serve` over many requests: is RSS flat once the completion cache is full?

Starts the real server over stdio on the tiny random test model (so the model's own allocations
stay fixed), keeps one document open and, per request, types a character and asks for an inline
completion at a new position, so each request is a cache miss, a model call and a cache insert.
The cache is small (``cacheSize`` 64) so it is full after the first few dozen requests; past that
point every structure the server keeps should stop growing. Prints RSS every ``--every``
requests and writes the curve to ``bench/results/lsp_soak.json``.

    python bench/lsp_soak.py [--requests 10000] [--every 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from lsprotocol import types
from pygls.lsp.client import LanguageClient

REPO = Path(__file__).resolve().parents[1]


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def soak(model: Path, requests: int, every: int) -> list[dict]:
    client = LanguageClient("diffill-soak", "0")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    await client.start_io(
        sys.executable, "-m", "diffill.cli", "serve", "--model", str(model), cwd=str(REPO), env=env
    )
    opts = {"diffill": {"debounceMs": 0, "prefetch": False, "maxTokens": 4, "cacheSize": 64}}
    await client.initialize_async(
        types.InitializeParams(capabilities=types.ClientCapabilities(), initialization_options=opts)
    )
    client.initialized(types.InitializedParams())
    while (await client.protocol.send_request_async("diffill/stats", {})).state != "ready":
        await asyncio.sleep(0.1)
    uri = "file:///soak.py"
    text = "def f(x):\n    return x\n\n"
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(types.TextDocumentItem(uri, "python", 1, text))
    )
    pid = client._server.pid
    curve = []
    t0 = time.perf_counter()
    line, col, version = 2, 0, 1
    for i in range(1, requests + 1):
        version += 1
        ch = "abcdefghij"[i % 10]
        client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                types.VersionedTextDocumentIdentifier(uri=uri, version=version),
                [
                    types.TextDocumentContentChangePartial(
                        range=types.Range(types.Position(line, col), types.Position(line, col)), text=ch
                    )
                ],
            )
        )
        col += 1
        if col >= 60:  # a new line keeps the document small and the contexts distinct
            version += 1
            client.text_document_did_change(
                types.DidChangeTextDocumentParams(
                    types.VersionedTextDocumentIdentifier(uri=uri, version=version),
                    [
                        types.TextDocumentContentChangePartial(
                            range=types.Range(types.Position(line, col), types.Position(line, col)), text="\n"
                        )
                    ],
                )
            )
            line, col = line + 1, 0
            if line > 40:  # start over in place: delete the typed lines
                version += 1
                client.text_document_did_change(
                    types.DidChangeTextDocumentParams(
                        types.VersionedTextDocumentIdentifier(uri=uri, version=version),
                        [types.TextDocumentContentChangeWholeDocument(text=text)],
                    )
                )
                line = 2
        params = types.InlineCompletionParams(
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
            text_document=types.TextDocumentIdentifier(uri),
            position=types.Position(line, col),
        )
        await client.text_document_inline_completion_async(params)
        if i % every == 0 or i == 1:
            point = {"requests": i, "rss_kb": rss_kb(pid), "elapsed_s": round(time.perf_counter() - t0, 1)}
            curve.append(point)
            print(json.dumps(point), flush=True)
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    return curve


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--every", type=int, default=500)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "lsp_soak.json"))
    args = ap.parse_args()
    sys.path[:0] = [str(REPO), str(REPO / "tests")]
    from model_fixtures import make_tiny_model_dir

    with tempfile.TemporaryDirectory() as tmp:
        model = make_tiny_model_dir(Path(tmp) / "tiny")
        curve = asyncio.run(soak(model, args.requests, args.every))
    warm = [p for p in curve if p["requests"] >= 2000]  # the cache and pools are full by then
    slope = 0.0
    if len(warm) >= 2:
        slope = (warm[-1]["rss_kb"] - warm[0]["rss_kb"]) / (warm[-1]["requests"] - warm[0]["requests"])
    result = {
        "what": "RSS of diffill serve (tiny random model, cacheSize 64) per request, cache full after ~64",
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
        "requests": args.requests,
        "rss_kb_per_request_after_2000": round(slope, 3),
        "curve": curve,
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"growth after 2000 requests: {slope:.3f} KB/request; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
