#!/usr/bin/env bash
# Retrain diffill-tiny (the 1.3M test model, the default until Diffill-Coder) on a lent GPU machine in ONE device command (< 10 minutes).
# See diffusion_core/training/gpu_recipe.md. Run from the repository root:
#   here:    mkdir -p data/humaneval && cp ../shared/benchmarks/humaneval-infilling/*.jsonl.gz data/humaneval/
#   device:  run(command="bash bench/train_gpu.sh", carry=["data/humaneval"], timeout_s=600)
# Builds the corpus from the device's own stdlib + site-packages (decontaminated against the carried
# HumanEval files), trains with the shipped tokenizer for TRAIN_MIN minutes in bf16, and writes the
# bf16 weights in <= 15 MB shards to $OUT/tiny_model (plus logs and corpus stats).
set -euo pipefail
OUT=${OUT:-runs/gpu-out}
WORK=${WORK:-/tmp/diffill-gpu}
AR_MIN=${AR_MIN:-2}
TRAIN_MIN=${TRAIN_MIN:-3.5}
CORPUS_MB=${CORPUS_MB:-250}
HUMANEVAL=${HUMANEVAL:-data/humaneval}
TOKENIZER=${TOKENIZER:-diffusion_core/tiny_model/tokenizer.json}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT" "$WORK"
t0=$(date +%s)
[ -n "$(ls "$HUMANEVAL"/*.jsonl* 2>/dev/null)" ] || { echo "no HumanEval files in $HUMANEVAL (carry them)"; exit 2; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

python3 -m diffill.cli corpus --out "$WORK/corpus" --humaneval "$HUMANEVAL" --max-mb "$CORPUS_MB" \
  --wheels /opt/pypi /opt/pypi-more /opt/wheels > "$WORK/corpus.log" 2>&1 || { tail -20 "$WORK/corpus.log"; exit 1; }
cp "$WORK/corpus/stats.json" "$OUT/corpus_stats.json"
echo "corpus built in $(( $(date +%s) - t0 ))s: $(python3 -c "import json;s=json.load(open('$WORK/corpus/stats.json'));print(s['files'],'files',s['bytes']//10**6,'MB')")"

# ~14M parameters (d=384, 8 layers, GQA 6/2 heads). Two phases, as measured on the CPU (see the
# model card): a causal next-token warm-up teaches the network to use context ~20x faster than
# masked diffusion from scratch, then Dream-style shifted masked diffusion + FIM canvases.
# ARCH / BATCH / WORKERS / EVAL_EXAMPLES are overridable only for a CPU dry run of this script.
# The diffusion phase draws FIM mask counts independently of the middle's length (the default
# --mask-counts independent), so the exported model predicts its completion's length (length=auto).
ARCH=${ARCH:-"--hidden-size 384 --num-layers 8 --num-heads 6 --num-kv-heads 2 --intermediate-size 1024"}
BATCH=${BATCH:-64}
EVAL_EXAMPLES=${EVAL_EXAMPLES:-256}
COMMON="--data $WORK/corpus --tokenizer $TOKENIZER --train-mb $CORPUS_MB --workers ${WORKERS:-12} --no-progress"
python3 -m diffill.cli train $COMMON $ARCH --out "$WORK/ar" --objective ar --shifted true \
  --seq-len 512 --batch-size "$BATCH" --steps 30000 --lr 2e-3 --warmup 200 --eval-every 500 --save-every 1000 \
  --eval-examples "$EVAL_EXAMPLES" --max-minutes "$AR_MIN" > "$WORK/ar.log" 2>&1 || { tail -30 "$WORK/ar.log"; exit 1; }
tail -1 "$WORK/ar/log.jsonl"
python3 -m diffill.cli train $COMMON $ARCH --out "$WORK/run" --init-from "$WORK/ar/state.pt" --shifted true \
  --seq-len 512 --batch-size "$BATCH" --steps 30000 --lr 1e-3 --warmup 100 --fim-rate 0.6 --eps 0.1 \
  --eval-every 500 --save-every 1000 --eval-examples "$EVAL_EXAMPLES" \
  --max-minutes "$TRAIN_MIN" > "$WORK/train.log" 2>&1 || { tail -30 "$WORK/train.log"; exit 1; }
tail -3 "$WORK/run/log.jsonl"

rm -rf "$OUT/tiny_model" && cp -r "$WORK/run/model" "$OUT/tiny_model"
python3 -c "
import torch
from diffusion_core.training.train import shard_weights
print(shard_weights('$OUT/tiny_model', 15_000_000, torch.bfloat16))"
cp "$WORK/ar/log.jsonl" "$OUT/ar_log.jsonl"
cp "$WORK/run/log.jsonl" "$OUT/train_log.jsonl"
cp "$WORK/run/train_config.json" "$OUT/"
python3 -c "
from diffusion_core.engine import Engine
e = Engine.from_pretrained('$OUT/tiny_model', device='$DEVICE')
c = e.infill('def add(a, b):\n', '\n\nprint(add(1, 2))\n', max_tokens=16)
print('smoke infill:', repr(c.text), c.stop_reason, f'{c.latency_ms:.0f} ms')"
ls -la "$OUT" "$OUT/tiny_model"
echo "total $(( $(date +%s) - t0 ))s"
