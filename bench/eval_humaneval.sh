#!/usr/bin/env bash
# HumanEval-Infilling pass@1 of a model with the four mask-length policies (fixed / predicted /
# length ensemble / oracle), both subsets, plus the empty-completion control; one JSON per run in $RESULTS.
#   bash bench/eval_humaneval.sh [MODEL_DIR] [SINGLE_LINE_LIMIT] [RANDOM_SPAN_LIMIT]
# MODEL_DIR empty = the default model (Diffill-Coder); limits 0 = every problem.
set -euo pipefail
MODEL=${1:-}
SL_LIMIT=${2:-0}
RS_LIMIT=${3:-0}
RESULTS=${RESULTS:-runs/eval}
THREADS=${THREADS:-0}
mkdir -p "$RESULTS"
margs=()
[ -n "$MODEL" ] && margs=(--model "$MODEL")
run() {  # subset limit length max_tokens
  python3 -m diffill.cli eval humaneval-infilling --subset "$1" --limit "$2" --length "$3" --max-tokens "$4" \
    --threads "$THREADS" "${margs[@]}" --save-samples "$RESULTS/$1-$3.samples.jsonl" --out "$RESULTS/$1-$3.json"
}
python3 -m diffill.cli eval humaneval-infilling --subset single-line --control empty --limit "$SL_LIMIT" \
  --out "$RESULTS/single-line-empty.json"
for subset in single-line random-span-light; do
  limit=$SL_LIMIT; [ "$subset" = random-span-light ] && limit=$RS_LIMIT
  run "$subset" "$limit" fixed 32
  run "$subset" "$limit" predict 64
  run "$subset" "$limit" ensemble 64
  run "$subset" "$limit" oracle 0
done
