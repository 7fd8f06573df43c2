#!/usr/bin/env bash
# Everything the project still owes a GPU, in ONE device command (<= 10 minutes), for a session
# that is lent a device with little time left after start-up (15 minutes in all):
#   here:    mkdir -p data/humaneval && cp ../shared/benchmarks/humaneval-infilling/*.jsonl.gz data/humaneval/
#   device:  run(command="bash bench/gpu_session.sh", carry=["data/humaneval"], timeout_s=600)
# 1. issue 3: retrain diffill-tiny, the test model (bench/train_gpu.sh, shorter phases) -> $OUT/train/
# 2. issue 6: kernel tests on the GPU + the latency benchmark (bench/gpu_check.sh) -> $OUT/bench/
# Each phase has its own deadline and writes into $OUT as it goes, so a phase that fails or runs
# out of time still leaves the other's results. Back here, follow
# diffusion_core/training/gpu_recipe.md step 3 (weights, eval) and copy bench/RESULTS.md.
set -u
OUT=${OUT:-runs/gpu-session}
TOTAL_S=${TOTAL_S:-570}   # stay under the device's 600 s command limit
TRAIN_S=${TRAIN_S:-330}   # corpus + AR warm-up + diffusion phase + export
t0=$(date +%s)
mkdir -p "$OUT/train" "$OUT/bench"

echo "== issue 3: retrain diffill-tiny (deadline ${TRAIN_S}s)"
OUT="$OUT/train" AR_MIN="${AR_MIN:-1.5}" TRAIN_MIN="${TRAIN_MIN:-2.5}" \
  timeout "$TRAIN_S" bash bench/train_gpu.sh >"$OUT/train/session_log.txt" 2>&1
echo "train exit $?"
tail -15 "$OUT/train/session_log.txt"

left=$((TOTAL_S - ($(date +%s) - t0)))
# kernel tests, model set-up and the last cell take ~2.5 minutes beyond the benchmark's own budget
bench_min=$(python3 -c "print(max(0.5, round(($left - 150) / 60, 1)))")
echo "== issue 6: kernel tests + benchmark (${left}s left, BENCH_MINUTES=$bench_min)"
OUT="$OUT/bench" BENCH_MINUTES="$bench_min" timeout "$left" bash bench/gpu_check.sh
echo "bench exit $?; total $(($(date +%s) - t0))s"

# What comes back from the device is at most 8 files of at most 16 MiB, two folders deep: keep the
# summary as it is and pack everything else into one archive per phase (split below 16 MiB).
cp "$OUT/bench/RESULTS.md" "$OUT/RESULTS.md" 2>/dev/null || true
for phase in train bench; do
  [ -d "$OUT/$phase" ] || continue
  tar -czf "$OUT/$phase.tar.gz" -C "$OUT" "$phase" && rm -rf "${OUT:?}/$phase"
  if [ "$(stat -c %s "$OUT/$phase.tar.gz")" -gt $((15 * 1024 * 1024)) ]; then
    split -b 15M -d "$OUT/$phase.tar.gz" "$OUT/$phase.tar.gz.part" && rm "$OUT/$phase.tar.gz"
  fi
done
ls -la "$OUT"
echo "unpack here: cat OUT/train.tar.gz* | tar -xz  (and the same for bench)"
