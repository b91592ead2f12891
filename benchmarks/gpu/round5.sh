#!/usr/bin/env bash
# Round 5 on one GPU, in one script (start it with setsid; it outlasts one device call):
#   1. three fresh heads pretrained side by side (half reconstruction), same data, seed and budget:
#      METHOD.md's design ("raw"), standardised layers + transport locality ("local"), and that plus
#      token-offset gates ("gated"); each then scored on held-out reconstruction (head_design_probe.py --head);
#   2. QA fine-tuning of each as one mixed-ratio head, plus a 4x-only head of the best pretrained design;
#   3. the dev grid of the four heads, then the speed benchmark of the gated head (issue 11).
# Everything lands in $RESULTS; "ALL DONE" ends its log. It ran at commit 45fe0c6: the "gated" design's
# --gate-radius was removed from the library after this round (no gain, slower).
set -uo pipefail
source benchmarks/gpu/setup.sh
set +e
export COMPREXIT_DATA=${COMPREXIT_DATA:-/tmp/data} PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
RUNS=${RUNS:-/tmp/runs} RESULTS=${RESULTS:-/tmp/results}
PRETRAIN_S=${PRETRAIN_S:-300} SFT_S=${SFT_S:-240} LR=${LR:-3e-3}
mkdir -p "$RUNS" "$RESULTS/probe"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$RESULTS/device.txt"
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)" | tee -a "$RESULTS/device.txt"

declare -A DESIGN=(
  [raw]=""
  [local]="--standardize-layers --locality-weight 0.25"
  [gated]="--standardize-layers --locality-weight 0.25 --gate-radius 16"
)
train() { python3 -m comprexit_rag.cli -v train --seed 0 --save-every 100000 --max-steps 100000 "$@"; }
for name in raw local gated; do
  # shellcheck disable=SC2086
  train --stage pretrain ${DESIGN[$name]} --lr "$LR" --batch-size 32 --time-budget "$PRETRAIN_S" \
    --output-dir "$RUNS/pretrain-$name" > "$RUNS/pretrain-$name.log" 2>&1 &
done
wait
for name in raw local gated; do
  tail -n 1 "$RUNS/pretrain-$name/log.jsonl"
  python3 benchmarks/head_design_probe.py --head "$RUNS/pretrain-$name/final" \
    --out "$RESULTS/probe/pretrain-$name.json" > "$RESULTS/probe/pretrain-$name.log" 2>&1 &
done
wait
tail -qn 1 "$RESULTS"/probe/*.log

best=$(python3 - "$RESULTS/probe" <<'EOF'
import json, sys
from pathlib import Path
scores = {path.stem.removeprefix("pretrain-"): json.loads(path.read_text())["curve"][-1]["nq_dev_loss"]
          for path in Path(sys.argv[1]).glob("pretrain-*.json")}
print(min(scores, key=scores.get))
EOF
)
echo "best pretrained design on NQ dev reconstruction: $best" | tee "$RESULTS/best.txt"

sft() { train --stage sft --batch-size 32 --time-budget "$SFT_S" "$@"; }
for name in raw local gated; do
  sft --init-from "$RUNS/pretrain-$name/final" --ratios 4 8 16 --output-dir "$RUNS/comprexit-$name" \
    > "$RUNS/sft-$name.log" 2>&1 &
done
sft --init-from "$RUNS/pretrain-$best/final" --ratios 4 --output-dir "$RUNS/comprexit-$best-r4" \
  > "$RUNS/sft-$best-r4.log" 2>&1 &
wait
tail -qn 1 "$RUNS"/comprexit-*/log.jsonl

grid=(python3 benchmarks/run_grid.py --checkpoints "$RUNS" --device cuda --batch-size 64)
for name in raw local gated "$best-r4"; do
  "${grid[@]}" --only "round5-$name" --out "$RESULTS/grid-$name.jsonl" \
    --predictions "$RESULTS/predictions-$name.jsonl" > "$RESULTS/grid-$name.log" 2>&1 &
done
wait
cat "$RESULTS"/grid-*.log | grep F1=
timeout 240 python3 benchmarks/speed.py --device cuda --dtype bfloat16 --shapes 64x512 8x4096 \
  --head "$RUNS/comprexit-gated/final" --out "$RESULTS/speed_gated.json" || echo "speed benchmark failed or timed out"
( cd "$RUNS" && tar czf "$RESULTS/training.tgz" */summary.json */log.jsonl *.log )
echo ALL DONE
