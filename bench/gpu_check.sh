#!/usr/bin/env bash
# One-shot GPU check for issue 6, for a session that is lent a device (run from the repo root):
#   1. the kernel tests on the GPU (compiled Triton, not the interpreter; GPU-marked tests included),
#   2. `diffill bench` on CUDA (random-weight 0.5B / 1.7B / 7B shapes + the default; all baselines),
#   3. bench/RESULTS.md (card, date, commit, every number) into $OUT with the JSON.
# Needs torch + triton only (the benchmark imports no LSP packages). Budget: ~9 minutes; the
# benchmark stops starting new cells after BENCH_MINUTES and reports what it skipped.
set -u
OUT="${OUT:-bench/results}"
BENCH_MINUTES="${BENCH_MINUTES:-5.5}"
mkdir -p "$OUT" bench/results
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
card="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)"
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
start=$(date +%s)

echo "== kernel tests on $card"
timeout 420 python3 -m pytest -q -p no:cacheprovider tests/kernels --durations=5 \
  --ignore=tests/kernels/test_bench_cli.py >"$OUT/kernel_tests.txt" 2>&1
tests_rc=$?
tail -25 "$OUT/kernel_tests.txt"

echo "== benchmark"
python3 -m diffill.cli bench --device cuda --max-minutes "$BENCH_MINUTES" --out "$OUT/bench_tmp" \
  >"$OUT/bench_log.txt" 2>&1
bench_rc=$?
tail -40 "$OUT/bench_log.txt"
json="$(ls -t "$OUT"/bench_tmp/latency-cuda-*.json 2>/dev/null | head -1)"
md="$(ls -t "$OUT"/bench_tmp/latency-cuda-*.md 2>/dev/null | head -1)"
[ -n "$json" ] && cp "$json" "$OUT/latency.json"
[ -n "$md" ] && cp "$md" "$OUT/latency.md"
rm -rf "$OUT/bench_tmp"

{
  echo "# Issue 6 GPU results"
  echo
  echo "- card: $card"
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- commit: $commit"
  echo "- torch $(python3 -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)'), triton $(python3 -c 'import triton; print(triton.__version__)' 2>/dev/null)"
  echo "- kernel tests: exit $tests_rc ($(grep -E '[0-9]+ (passed|failed)' "$OUT/kernel_tests.txt" | tail -1))"
  echo "- benchmark: exit $bench_rc; wall $(( $(date +%s) - start )) s for the whole check"
  echo
  if [ -f "$OUT/latency.md" ]; then sed 's/^# /## /' "$OUT/latency.md"; else echo "(no benchmark output; see bench_log.txt)"; fi
  echo
  echo "## Kernel test summary"
  echo
  echo '```'
  tail -15 "$OUT/kernel_tests.txt"
  echo '```'
} >"$OUT/RESULTS.md"
# only a real GPU run becomes the repository's results file (a CPU dry run has no card)
[ -n "$card" ] && cp "$OUT/RESULTS.md" bench/RESULTS.md 2>/dev/null
echo "wrote $OUT/RESULTS.md"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]  # the script fails when either part did
