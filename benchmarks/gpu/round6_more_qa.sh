#!/usr/bin/env bash
# Round 6, second call: the round-6 `local` head (carried in as $HEAD) gets more QA fine-tuning, alone on
# the GPU, then its dev grid. Results land in $OUT.
set -uo pipefail
source benchmarks/gpu/setup.sh
set +e
export COMPREXIT_DATA=${COMPREXIT_DATA:-/tmp/data}
RUNS=${RUNS:-/tmp/runs} SFT_S=${SFT_S:-130}
python3 -m comprexit_rag.cli train --stage sft --seed 1 --batch-size 32 --time-budget "$SFT_S" --max-steps 100000 \
  --save-every 100000 --init-from "$HEAD" --ratios 4 8 16 --output-dir "$RUNS/round6-local-more-qa" \
  > "$OUT/sft.log" 2>&1
tail -n 1 "$RUNS/round6-local-more-qa/log.jsonl"
for dataset in nq hotpotqa; do
  python3 benchmarks/run_grid.py --checkpoints "$RUNS" --device cuda --batch-size 64 --only round6-local-more-qa \
    --datasets "$dataset" --out "$OUT/grid-$dataset.jsonl" > "$OUT/grid-$dataset.log" 2>&1 &
done
wait
grep -h F1= "$OUT"/grid-*.log
cp "$RUNS/round6-local-more-qa/log.jsonl" "$RUNS/round6-local-more-qa/summary.json" "$OUT/"
