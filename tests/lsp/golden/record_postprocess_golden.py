"""Record the raw middles Diffill-Coder gives for the post-processing golden cases.

Run by hand (``python3 tests/lsp/golden/record_postprocess_golden.py``) when the default model
changes; it rewrites ``postprocess_golden.json``'s ``raw`` fields with the model's output for each
``source`` (cursor at ``|``), asked the way the language server asks: stop at the line's end
where the cursor's line has code. The ``expected`` fields are written by a person who read the
case; this script keeps them, and prints the cases where post-processing now disagrees.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).with_name("postprocess_golden.json")


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from test_postprocess import ctx_at

    from diffusion_core.engine import Engine
    from diffusion_core.interface import InfillRequest, SamplingOptions
    from lsp_server.postprocess import postprocess

    engine = Engine.from_pretrained()
    cases = json.loads(HERE.read_text())
    for case in cases["cases"]:
        src = case["source"]
        cut = src.index("|")
        ctx = ctx_at(src)
        stop = ("\n",) if ctx.mid_line or ctx.line_prefix.strip() else ()
        req = InfillRequest(src[:cut], src[cut + 1 :], 64, SamplingOptions(), stop=stop)
        case["raw"] = engine.infill_batch([req])[0].text
        got = postprocess(case["raw"], ctx)
        if got != case.get("expected"):
            print(
                f"--- {case['name']}: raw {case['raw']!r}\n"
                f"    postprocess {got!r}\n    expected {case.get('expected')!r}"
            )
    cases["model"] = engine.model_id
    HERE.write_text(json.dumps(cases, indent=1, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
