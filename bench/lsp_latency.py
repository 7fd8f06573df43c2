"""Request→response latency of `diffill serve` over stdio, as an editor sees it.

Starts the real server as a subprocess, talks to it with pygls' LanguageClient and times
``textDocument/inlineCompletion`` round trips in four cases:

- miss: a context never seen before (one model call each; Invoked trigger, so no debounce);
- cache hit: the same request again;
- typed-through: the user typed the next character of the shown ghost text;
- accept→next: the user accepted the whole item and asks at its end, with speculative prefetch
  on and given idle time to finish (what "accepting and continuing is instant" means).

The model defaults to the tiny random-weight test model (so it measures the server, not a model);
pass ``--model DIR`` for a real one. Writes ``bench/results/lsp_latency.json`` and prints one
markdown line.

    python bench/lsp_latency.py [--model DIR] [--misses 30] [--out bench/results/lsp_latency.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.lsp.client import LanguageClient

REPO = Path(__file__).resolve().parents[1]


def summary(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"n": 0}
    s = sorted(xs)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))]
    return {
        "n": len(s),
        "p50_ms": round(pick(0.5), 3),
        "p90_ms": round(pick(0.9), 3),
        "p99_ms": round(pick(0.99), 3),
        "mean_ms": round(statistics.fmean(s), 3),
    }


def plain(value: Any) -> Any:
    if hasattr(value, "_asdict"):
        return {k: plain(v) for k, v in value._asdict().items()}
    return value


class Bench:
    def __init__(self, client: LanguageClient) -> None:
        self.client = client
        self.version = 1

    async def stats(self) -> dict[str, Any]:
        return plain(await self.client.protocol.send_request_async("diffill/stats", {}))

    async def inline(self, uri: str, line: int, col: int, invoked: bool) -> tuple[float, list]:
        kinds = types.InlineCompletionTriggerKind
        kind = kinds.Invoked if invoked else kinds.Automatic
        params = types.InlineCompletionParams(
            context=types.InlineCompletionContext(trigger_kind=kind),
            text_document=types.TextDocumentIdentifier(uri),
            position=types.Position(line, col),
        )
        t0 = time.perf_counter()
        res = await self.client.text_document_inline_completion_async(params)
        return (time.perf_counter() - t0) * 1000.0, list(res.items) if res else []

    def insert(self, uri: str, line: int, col: int, text: str) -> None:
        self.version += 1
        self.client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=self.version),
                content_changes=[
                    types.TextDocumentContentChangePartial(
                        range=types.Range(types.Position(line, col), types.Position(line, col)), text=text
                    )
                ],
            )
        )

    async def configure(self, **values: Any) -> None:
        self.client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"diffill": values})
        )
        await self.stats()  # a round trip: the notification has been applied


def end_of(text: str, inserted: str, line: int, col: int) -> tuple[int, int]:
    """Cursor position (utf-16) after inserting ``inserted`` at (line, col)."""
    parts = inserted.replace("\r\n", "\n").split("\n")
    if len(parts) == 1:
        return line, col + len(parts[0].encode("utf-16-le")) // 2
    return line + len(parts) - 1, len(parts[-1].encode("utf-16-le")) // 2


async def run(model: Path, misses: int, hits_per: int) -> dict[str, Any]:
    client = LanguageClient("diffill-bench", "0")
    client.feature("diffill/status")(lambda params: None)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    await client.start_io(
        sys.executable,
        "-m",
        "diffill.cli",
        "serve",
        "--model",
        str(model),
        "--log-level",
        "warning",
        cwd=str(REPO),
        env=env,
    )
    b = Bench(client)
    await client.initialize_async(
        types.InitializeParams(
            capabilities=types.ClientCapabilities(),
            process_id=os.getpid(),
            initialization_options={"diffill": {"debounceMs": 0, "prefetch": False, "maxTokens": 32}},
        )
    )
    client.initialized(types.InitializedParams())
    while (st := await b.stats())["state"] not in ("ready", "failed"):
        await asyncio.sleep(0.05)
    if st["state"] != "ready":
        raise SystemExit(f"model failed to load: {st['error']}")

    # warm-up (first forward pays torch's one-time costs)
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            types.TextDocumentItem("file:///bench/warm.py", "python", 1, "def warm():\n    \n")
        )
    )
    await b.inline("file:///bench/warm.py", 1, 4, True)

    miss, hit, typed, accept = [], [], [], []
    shown: list[tuple[str, int, int, str]] = []
    calls0 = (await b.stats())["modelCalls"]
    for k in range(misses):
        uri = f"file:///bench/m{k}.py"
        text = f"import math\n\ndef area_{k}(radius):\n    scale = {k}\n    "
        client.text_document_did_open(
            types.DidOpenTextDocumentParams(types.TextDocumentItem(uri, "python", 1, text))
        )
        ms, items = await b.inline(uri, 4, 4, True)
        miss.append(ms)
        if items:
            shown.append((uri, 4, 4, items[0].insert_text))
        for _ in range(hits_per):
            hit.append((await b.inline(uri, 4, 4, True))[0])
    st = await b.stats()
    assert st["modelCalls"] - calls0 == misses, "hits must not call the model"

    for uri, line, col, text in shown:
        for ch in text[:8]:
            if ch in "\r\n":
                break
            b.insert(uri, line, col, ch)
            col += len(ch.encode("utf-16-le")) // 2
            ms, items = await b.inline(uri, line, col, False)
            if not items:
                break
            typed.append(ms)
    st2 = await b.stats()
    assert st2["modelCalls"] == st["modelCalls"], "typed-through must not call the model"

    await b.configure(prefetch=True)
    for k in range(min(misses, 15)):
        uri = f"file:///bench/a{k}.py"
        client.text_document_did_open(
            types.DidOpenTextDocumentParams(
                types.TextDocumentItem(uri, "python", 1, f"def total_{k}(items):\n    result = 0\n    ")
            )
        )
        _, items = await b.inline(uri, 2, 4, True)
        if not items:
            continue
        before = (await b.stats())["prefetches"]
        for _ in range(400):  # idle time: let the prefetch finish, as a reading user would
            if (await b.stats())["prefetches"] > before:
                break
            await asyncio.sleep(0.01)
        b.insert(uri, 2, 4, items[0].insert_text)
        line, col = end_of("", items[0].insert_text, 2, 4)
        accept.append((await b.inline(uri, line, col, False))[0])
    final = await b.stats()
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    return {
        "miss": summary(miss),
        "cache_hit": summary(hit),
        "typed_through": summary(typed),
        "accept_next_prefetched": summary(accept),
        "server_counters": {
            k: final[k]
            for k in ("requests", "modelCalls", "cacheHits", "typedThroughHits", "prefetchHits", "prefetches")
        },
        "model_id": final["modelId"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="model directory (default: a tiny random-weight test model)")
    ap.add_argument("--misses", type=int, default=30)
    ap.add_argument("--hits-per-miss", type=int, default=5)
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/lsp_latency.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from model_fixtures import make_tiny_model_dir

            model = make_tiny_model_dir(Path(tmp) / "tiny")
        res = asyncio.run(run(model, args.misses, args.hits_per_miss))
    res["machine"] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    res["model"] = str(args.model) if args.model else "tiny random-weight model (tests/model_fixtures.py)"
    p50 = lambda k: res[k].get("p50_ms", float("nan"))
    res["markdown"] = (
        f"| LSP stdio latency p50 ({res['model_id']}, {res['machine']['cpus']} CPUs) | "
        f"miss {p50('miss'):.1f} ms | cache hit {p50('cache_hit'):.2f} ms | "
        f"typed-through {p50('typed_through'):.2f} ms | accept→next (prefetched) "
        f"{p50('accept_next_prefetched'):.2f} ms |"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(
        json.dumps(
            {k: res[k] for k in ("miss", "cache_hit", "typed_through", "accept_next_prefetched")}, indent=2
        )
    )
    print(res["markdown"])


if __name__ == "__main__":
    main()
