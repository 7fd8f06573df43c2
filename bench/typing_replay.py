"""Keystroke to suggestion through `diffill serve` over stdio, replaying a person typing real code.

A recorded session is built from real files: a function's body is taken out of the file and then
typed back one character at a time, with pauses drawn like a person's (mostly 80-250 ms between
keys, a longer pause at the end of a line and now and then a stop to think). After every key
the client sends ``didChange`` and an automatic ``textDocument/inlineCompletion``; a request still
unanswered when the next key comes is cancelled (``$/cancelRequest``), as editors do.

Reported: keystroke-to-suggestion latency p50/p95 of the requests that were answered (and how
many were superseded), how many answers came from the completion cache or typed-through, and
the share of context tokens whose K/V the engine reused from the previous request.

    python bench/typing_replay.py [--model DIR] [--files N] [--time-budget-ms MS]
                                  [--out bench/results/typing_replay.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.lsp.client import LanguageClient

from diffusion_core.runtime import cpu_name

REPO = Path(__file__).resolve().parents[1]
PAUSE_S = 0.4  # a stop longer than this is a person waiting for (or reading) a suggestion
# real code of this repository (MIT), typed back: functions of moderate size
SOURCES = [
    ("diffusion_core/coder/prefix_cache.py", "def common_prefix"),
    ("lsp_server/context.py", "def suffix_window"),
    ("diffusion_core/evaluation/humaneval.py", "def spread"),
    ("lsp_server/postprocess.py", "def _unclosed"),
]


def plain(value: Any) -> Any:
    if hasattr(value, "_asdict"):
        return {k: plain(v) for k, v in value._asdict().items()}
    return value


def session(path: Path, start: str, rng: random.Random, max_chars: int) -> tuple[str, int, str]:
    """(file text without the typed part, offset where typing starts, the text to type)."""
    text = path.read_text()
    at = text.index(start)
    body = text.index("\n", at) + 1  # type the body, keep the signature
    end = text.find("\n\n", body)
    end = len(text) if end < 0 else end + 1
    typed = text[body:end][:max_chars]
    return text[:body] + text[body + len(typed) :], body, typed


def pauses(typed: str, rng: random.Random) -> list[float]:
    out = []
    for i, ch in enumerate(typed):
        p = rng.lognormvariate(-1.9, 0.35)  # median ~150 ms
        if ch == "\n":
            p += rng.uniform(0.2, 0.6)
        if rng.random() < 0.03:
            p += rng.uniform(0.8, 2.0)  # a pause to think
        if i and typed[i - 1] == " " and ch == " ":
            p *= 0.4  # indentation comes fast (or from the editor)
        out.append(p)
    return out


def to_position(text: str, offset: int) -> types.Position:
    line = text.count("\n", 0, offset)
    col = offset - (text.rfind("\n", 0, offset) + 1)
    return types.Position(line=line, character=col)


async def replay(
    model: str | None, files: int, max_chars: int, seed: int, budget_ms: int | None = None
) -> dict[str, Any]:
    client = LanguageClient("diffill-typing-replay", "0")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    args = ["serve"] + (["--model", model] if model else [])
    await client.start_io(sys.executable, "-m", "diffill.cli", *args, cwd=str(REPO), env=env)
    opts: dict[str, Any] = {"diffill": {"prefetch": True}}
    if budget_ms is not None:
        opts["diffill"]["timeBudgetMs"] = budget_ms
    caps = types.ClientCapabilities(
        text_document=types.TextDocumentClientCapabilities(
            inline_completion=types.InlineCompletionClientCapabilities()
        )
    )
    await client.initialize_async(types.InitializeParams(capabilities=caps, initialization_options=opts))
    client.initialized(types.InitializedParams())
    t_load = time.perf_counter()
    while True:
        st = plain(await client.protocol.send_request_async("diffill/stats", {}))
        if st["state"] in ("ready", "failed"):
            break
        await asyncio.sleep(0.2)
    if st["state"] != "ready":
        raise SystemExit(f"model failed to load: {st['error']}")
    load_s = time.perf_counter() - t_load
    rng = random.Random(seed)
    answered: list[float] = []
    at_pause: list[float | None] = []  # keys followed by a pause >= PAUSE_S: latency, None if unanswered
    pause_text: list[str] = []  # what those suggestions showed
    shown = superseded = keys = 0
    for n, (rel, start) in enumerate(SOURCES[:files]):
        base, offset, typed = session(REPO / rel, start, rng, max_chars)
        uri = f"file:///replay/{n}/{Path(rel).name}"
        client.text_document_did_open(
            types.DidOpenTextDocumentParams(
                types.TextDocumentItem(uri=uri, language_id="python", version=1, text=base)
            )
        )
        text, version = base, 1
        pending: asyncio.Future | None = None
        sent_at = 0.0
        for ch, pause in zip(typed, pauses(typed, rng)):
            if pending is not None and not pending.done():
                pending.cancel()  # the client cancels the request the keystroke made stale
                superseded += 1
            pos = to_position(text, offset)
            version += 1
            client.text_document_did_change(
                types.DidChangeTextDocumentParams(
                    types.VersionedTextDocumentIdentifier(uri=uri, version=version),
                    [types.TextDocumentContentChangePartial(range=types.Range(pos, pos), text=ch)],
                )
            )
            text = text[:offset] + ch + text[offset:]
            offset += 1
            keys += 1
            params = types.InlineCompletionParams(
                context=types.InlineCompletionContext(
                    trigger_kind=types.InlineCompletionTriggerKind.Automatic
                ),
                text_document=types.TextDocumentIdentifier(uri),
                position=to_position(text, offset),
            )
            sent_at = time.perf_counter()
            pending = asyncio.ensure_future(client.text_document_inline_completion_async(params))

            slot = None
            if pause >= PAUSE_S:
                at_pause.append(None)
                slot = len(at_pause) - 1

            def done(fut: asyncio.Future, t0: float = sent_at, slot: int | None = slot) -> None:
                nonlocal shown
                if fut.cancelled() or fut.exception() is not None:
                    return
                ms = (time.perf_counter() - t0) * 1000.0
                answered.append(ms)
                res = fut.result()
                shown += bool(res and res.items)
                if slot is not None and res and res.items:
                    at_pause[slot] = ms
                    pause_text.append(str(res.items[0].insert_text))

            pending.add_done_callback(done)
            await asyncio.sleep(pause)
        if pending is not None:
            try:
                await asyncio.wait_for(pending, 60)
            except (asyncio.CancelledError, asyncio.TimeoutError, Exception):  # noqa: BLE001
                pass
    st = plain(await client.protocol.send_request_async("diffill/stats", {}))
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    s = sorted(answered)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))] if s else None  # noqa: E731
    # what a person sees: after a key followed by a pause, the suggestion (if it came in the pause)
    seen = sorted(x for x in at_pause if x is not None)
    pause_pick = lambda q: round(seen[min(len(seen) - 1, int(q * len(seen)))], 1) if seen else None  # noqa: E731
    engine = st.get("engine") or {}
    return {
        "what": "keystroke -> inline completion answer, diffill serve over stdio, automatic trigger",
        "model": st.get("modelId"),
        "machine": cpu_name(),
        "date": time.strftime("%Y-%m-%d"),
        "keys": keys,
        "answered": len(s),
        "superseded_by_next_key": superseded,
        "with_a_suggestion": shown,
        "latency_ms_p50": round(pick(0.5), 1) if s else None,
        "latency_ms_p95": round(pick(0.95), 1) if s else None,
        "latency_ms_mean": round(statistics.fmean(s), 1) if s else None,
        "pauses": len(at_pause),
        "pauses_with_a_suggestion": len(seen),
        "pause_latency_ms_p50": pause_pick(0.5),
        "pause_latency_ms_p95": pause_pick(0.95),
        # how much those suggestions held: a time budget trades lines for latency
        "pause_suggestion_chars_mean": round(statistics.fmean(map(len, pause_text or [""])), 1),
        "pause_suggestions_multiline": sum("\n" in t for t in pause_text),
        "cache_hits": st.get("cacheHits"),
        "typed_through_hits": st.get("typedThroughHits"),
        "prefetch_hits": st.get("prefetchHits"),
        "model_calls": st.get("modelCalls"),
        "context_tokens_reused_fraction": engine.get("reused_fraction"),
        "engine": engine,
        "model_load_s": round(load_s, 1),
        "settings": st.get("settings"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="checkpoint (default: the default model, Diffill-Coder)")
    ap.add_argument("--files", type=int, default=len(SOURCES))
    ap.add_argument("--max-chars", type=int, default=400, help="characters typed per file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--time-budget-ms", type=int, help="the timeBudgetMs setting (default: the server's; 0: no limit)"
    )
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "typing_replay.json"))
    args = ap.parse_args()
    # pygls' client logs every answer that arrives for a request it has already cancelled
    logging.getLogger("pygls").setLevel(logging.CRITICAL)
    result = asyncio.run(replay(args.model, args.files, args.max_chars, args.seed, args.time_budget_ms))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    keys = ("keys", "answered", "superseded_by_next_key", "latency_ms_p50", "latency_ms_p95", "pauses",
            "pauses_with_a_suggestion", "pause_latency_ms_p50", "pause_latency_ms_p95",
            "pause_suggestion_chars_mean", "pause_suggestions_multiline", "cache_hits",
            "typed_through_hits", "context_tokens_reused_fraction")  # fmt: skip
    print(json.dumps({k: result[k] for k in keys}))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
