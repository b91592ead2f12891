#!/usr/bin/env bash
# Round 6 on one GPU, in one script (start it with setsid; it outlasts one device call):
#   1. three fresh heads of round 5's best design (standardised layers + transport locality 0.25)
#      pretrained side by side for longer: as in round 5 ("local"), with slots bounded to norm 32
#      ("bounded"), and bounded with reconstruction-only pretraining ("bounded-recon"); each then scored
#      on held-out reconstruction (head_design_probe.py --head);
#   2. QA fine-tuning of each as one mixed-ratio head (4/8/16x);
#   3. the dev grid of the three heads and the slot content probe of each (own vs another passage).
# Everything lands in $RESULTS; "ALL DONE" ends its log.
set -uo pipefail
source benchmarks/gpu/setup.sh
set +e
export COMPREXIT_DATA=${COMPREXIT_DATA:-/tmp/data} PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
RUNS=${RUNS:-/tmp/runs} RESULTS=${RESULTS:-/tmp/results}
PRETRAIN_S=${PRETRAIN_S:-540} SFT_S=${SFT_S:-270} LR=${LR:-3e-3}
mkdir -p "$RUNS" "$RESULTS/probe"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$RESULTS/device.txt"
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)" | tee -a "$RESULTS/device.txt"

ARMS=(local bounded bounded-recon)
declare -A DESIGN=(
  [local]="--standardize-layers --locality-weight 0.25"
  [bounded]="--standardize-layers --locality-weight 0.25 --max-slot-norm 32"
  [bounded-recon]="--standardize-layers --locality-weight 0.25 --max-slot-norm 32 --reconstruction-prob 1.0"
)
train() { python3 -m comprexit_rag.cli -v train --seed 0 --save-every 100000 --max-steps 100000 "$@"; }
for name in "${ARMS[@]}"; do
  # shellcheck disable=SC2086
  train --stage pretrain ${DESIGN[$name]} --lr "$LR" --batch-size 32 --time-budget "$PRETRAIN_S" \
    --output-dir "$RUNS/pretrain-$name" > "$RUNS/pretrain-$name.log" 2>&1 &
done
wait
for name in "${ARMS[@]}"; do
  tail -n 1 "$RUNS/pretrain-$name/log.jsonl"
  python3 benchmarks/head_design_probe.py --head "$RUNS/pretrain-$name/final" \
    --out "$RESULTS/probe/pretrain-$name.json" > "$RESULTS/probe/pretrain-$name.log" 2>&1 &
done
wait
tail -qn 1 "$RESULTS"/probe/*.log

for name in "${ARMS[@]}"; do
  train --stage sft --batch-size 32 --time-budget "$SFT_S" --init-from "$RUNS/pretrain-$name/final" \
    --ratios 4 8 16 --output-dir "$RUNS/round6-$name" > "$RUNS/sft-$name.log" 2>&1 &
done
wait
tail -qn 1 "$RUNS"/round6-*/log.jsonl

for name in "${ARMS[@]}"; do
  python3 benchmarks/run_grid.py --checkpoints "$RUNS" --device cuda --batch-size 64 --only "round6-$name" \
    --out "$RESULTS/grid-$name.jsonl" --predictions "$RESULTS/predictions-$name.jsonl" \
    > "$RESULTS/grid-$name.log" 2>&1 &
  python3 benchmarks/slot_content_probe.py --device cuda --head "$RUNS/round6-$name/final" \
    --out "$RESULTS/slot_content_probe_$name.json" > "$RESULTS/slot_content_probe_$name.log" 2>&1 &
done
wait
cat "$RESULTS"/grid-*.log | grep F1=
tail -n 3 "$RESULTS"/slot_content_probe_*.log
# What comes back from the machine: at most 8 files of 16 MiB, so one archive of results and one per head.
( cd "$RUNS" && tar czf "$RESULTS/training.tgz" */summary.json */log.jsonl *.log )
mkdir -p "$RESULTS/out"
( cd "$RESULTS" && tar czf out/results.tgz --exclude=out . )
for name in "${ARMS[@]}"; do tar czf "$RESULTS/out/head-$name.tgz" -C "$RUNS/round6-$name" final; done
echo ALL DONE
