#!/usr/bin/env bash
# Second GPU call, on the machine still warm from train_and_eval.sh (EVAL_S=0): the dev-split grid
# over the trained runs in /tmp/runs, then the speed benchmark of issue 11.
#
#   ROWS="comprexit comprexit-r4 ..." EVAL_S=400 bash benchmarks/gpu/eval_and_speed.sh
set -uo pipefail
source benchmarks/gpu/setup.sh
export COMPREXIT_DATA=/tmp/data
python3 benchmarks/speed.py --device cuda --dtype bfloat16 --shapes 64x512 8x4096 --out "$OUT/speed_h100.json" \
  || echo "speed benchmark failed"
timeout "${EVAL_S:-400}" python3 benchmarks/run_grid.py --out "$OUT/grid.jsonl" --predictions "$OUT/predictions.jsonl" \
  --checkpoints /tmp/runs --device cuda --batch-size 64 ${ROWS:+--only $ROWS}
echo "grid exit $?"
