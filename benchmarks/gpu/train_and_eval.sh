#!/usr/bin/env bash
# One GPU call: train every module (benchmarks/gpu/train_all.sh), pack the checkpoints into
# $OUT, then run the dev-split grid until EVAL_S seconds are spent (rows stream into $OUT).
#
# Expects the wheel parts in /tmp/x and the data in /tmp/data (see setup.sh).
set -uo pipefail
source benchmarks/gpu/setup.sh
set +e
export COMPREXIT_DATA=/tmp/data RUNS=/tmp/runs
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)" | tee -a "$OUT/device.txt"
time bash benchmarks/gpu/train_all.sh
grep -h '"steps"\|wall_time' "$RUNS"/*/summary.json | paste - - | head -20
tail -qn 1 "$RUNS"/*/log.jsonl
( cd "$RUNS" && tar czf - */final */summary.json */log.jsonl *.log ) | split -b 15M - "$OUT/runs.tgz.part."
timeout "${EVAL_S:-200}" python3 benchmarks/run_grid.py --out "$OUT/grid.jsonl" --predictions "$OUT/predictions.jsonl" \
  --checkpoints "$RUNS" --device cuda --batch-size 64
echo "grid exit $?"
