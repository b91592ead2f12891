#!/usr/bin/env bash
# Second GPU session of the QA fine-tuning round: the two SFT streams that ran out of GPU memory
# next to the others in train_all.sh, run alone with the step count the mixed-ratio ComprExIT head
# reached there (189 steps of 64), then their grid rows and the torch.compile speed case.
#
#   INIT=path/to/comprexit-pretrain/final bash benchmarks/gpu/comi_and_ratio_head.sh
set -uo pipefail
source benchmarks/gpu/setup.sh
set +e
export COMPREXIT_DATA=${COMPREXIT_DATA:-/tmp/data} RUNS=${RUNS:-/tmp/runs2} PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
RESULTS=${RESULTS:-$OUT}
STEPS=${STEPS:-189}
mkdir -p "$RESULTS" "$RUNS"
sft() { python3 -m comprexit_rag.cli -v train --stage sft --seed 0 --batch-size 64 --save-every 100000 \
  --max-steps "$STEPS" --time-budget "${SFT_S:-250}" "$@"; }
sft --method comprexit --init-from "$INIT" --ratios 4 --output-dir "$RUNS/comprexit-r4" > "$RUNS/comprexit-r4.log" 2>&1 &
sft --method comi --output-dir "$RUNS/comi" > "$RUNS/comi.log" 2>&1 &
wait
tail -qn 1 "$RUNS"/*/log.jsonl
( cd "$RUNS" && tar czf "$RESULTS/runs2.tgz" */final */summary.json */log.jsonl *.log )

grid=(python3 benchmarks/run_grid.py --checkpoints "$RUNS" --device cuda --batch-size 64)
"${grid[@]}" --out "$RESULTS/grid_r4.jsonl" --predictions "$RESULTS/predictions_r4.jsonl" --only comprexit-r4 --ratios 4 &
for ratios in "4 8" "16 32"; do
  timeout "${COMI_EVAL_S:-200}" "${grid[@]}" --out "$RESULTS/grid_comi_${ratios// /_}.jsonl" \
    --predictions "$RESULTS/predictions_comi_${ratios// /_}.jsonl" --only comi --ratios $ratios &
done
wait
timeout "${SPEED_S:-90}" python3 benchmarks/speed.py --device cuda --dtype bfloat16 --shapes 64x512 8x4096 \
  --head "$INIT" --compile --out "$RESULTS/speed_compile.json"
echo ALL DONE
