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
# A short SFT run first: a broken SFT stage (non-finite steps) stops the call before it spends minutes.
rm -rf /tmp/sft-smoke
python -m comprexit_rag.cli train --stage sft --method comprexit --output-dir /tmp/sft-smoke --max-steps 12 \
  --init-from comprexit_rag/pretrained/comprexit-smollm2-135m || exit 1
cat /tmp/sft-smoke/log.jsonl
python3 -c "import json, sys; s = json.load(open('/tmp/sft-smoke/summary.json')); sys.exit(s['skipped_steps'] > 0)" \
  || { echo "SFT smoke run skipped non-finite steps: stopping"; exit 1; }
time bash benchmarks/gpu/train_all.sh
grep -h '"steps"\|wall_time' "$RUNS"/*/summary.json | paste - - | head -20
tail -qn 1 "$RUNS"/*/log.jsonl
( cd "$RUNS" && tar czf - */final */summary.json */log.jsonl *.log ) | split -b 15M - "$OUT/runs.tgz.part."
[ "${EVAL_S:-200}" = 0 ] && exit 0
timeout "${EVAL_S:-200}" python3 benchmarks/run_grid.py --out "$OUT/grid.jsonl" --predictions "$OUT/predictions.jsonl" \
  --checkpoints "$RUNS" --device cuda --batch-size 64
echo "grid exit $?"
