#!/usr/bin/env bash
# The whole GPU session in one script: train every module (train_all.sh), then the dev-split grid
# for the retrained modules and the speed benchmark of issue 11. Everything lands in $RESULTS
# (default $OUT): the trained runs as runs.tgz, grid.jsonl, predictions.jsonl, speed_*.json, logs.
#
#   bash benchmarks/gpu/train_and_eval.sh            # expects the wheel parts in /tmp/x, data in /tmp/data
#
# Long enough to outlast one device call: start it with setsid and collect $RESULTS in a later call.
set -uo pipefail
source benchmarks/gpu/setup.sh
set +e
export COMPREXIT_DATA=${COMPREXIT_DATA:-/tmp/data} RUNS=${RUNS:-/tmp/runs}
RESULTS=${RESULTS:-$OUT}
mkdir -p "$RESULTS"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$RESULTS/device.txt"
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)" | tee -a "$RESULTS/device.txt"

time bash benchmarks/gpu/train_all.sh
tail -qn 1 "$RUNS"/*/log.jsonl
( cd "$RUNS" && tar czf "$RESULTS/runs.tgz" */final */summary.json */log.jsonl *.log )

# The grid of the retrained slot heads and the COMI rows run side by side (both are latency-bound at
# batch 64); the speed benchmark runs alone afterwards, on an idle GPU.
grid=(python3 benchmarks/run_grid.py --checkpoints "$RUNS" --device "${DEVICE:-cuda}" --batch-size 64 ${LIMIT:+--limit $LIMIT})
"${grid[@]}" --out "$RESULTS/grid.jsonl" --predictions "$RESULTS/predictions.jsonl" \
  --only comprexit comprexit-r4 mean-pool --ratios 4 8 16 &
timeout "${COMI_EVAL_S:-240}" "${grid[@]}" --out "$RESULTS/grid_comi.jsonl" \
  --predictions "$RESULTS/predictions_comi.jsonl" --only comi &
wait
for compile in "" "--compile"; do
  python3 benchmarks/speed.py --device "${SPEED_DEVICE:-cuda}" --dtype bfloat16 --shapes ${SPEED_SHAPES:-64x512 8x4096} \
    --head "$RUNS/comprexit-mixed/final" $compile --out "$RESULTS/speed${compile:+_compile}.json" \
    || echo "speed benchmark $compile failed"
done
echo ALL DONE
