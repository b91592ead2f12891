#!/usr/bin/env bash
# Round 4 on one GPU, in one script (start it with setsid; it outlasts one device call):
#   * COMI's projector trained with ComprExIT's SFT budget: 239 steps of batch 32 (issue 4);
#   * the transport window: the shipped head continued 120 SFT steps with W = 64, 128 and 256 (issue 3);
#   * the dev grid of those runs, then torch.compile timed alone (issue 11).
# Everything lands in $RESULTS; "ALL DONE" ends its log.
set -uo pipefail
source benchmarks/gpu/setup.sh
set +e
export COMPREXIT_DATA=${COMPREXIT_DATA:-/tmp/data} PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
RUNS=${RUNS:-/tmp/runs} RESULTS=${RESULTS:-/tmp/results}
mkdir -p "$RUNS" "$RESULTS"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$RESULTS/device.txt"
python3 -c "
import torch, transformers
from comprexit_rag.backbone import Backbone
from comprexit_rag.prompts import answer_end_token_id
t = Backbone.from_pretrained().tokenizer
print(torch.__version__, transformers.__version__, 'eos', t.eos_token, t.eos_token_id, 'answer end', answer_end_token_id(t))
" | tee -a "$RESULTS/device.txt"

sft() { python3 -m comprexit_rag.cli -v train --stage sft --seed 0 --batch-size 32 --save-every 100000 "$@"; }
sft --method comi --max-steps 239 --time-budget 560 --output-dir "$RUNS/comi" > "$RUNS/comi.log" 2>&1 &
for window in 64 128 256; do
  sft --method comprexit --init-from comprexit_rag/pretrained/comprexit-smollm2-135m --window "$window" \
    --ratios 4 8 16 --max-steps 120 --time-budget 400 --output-dir "$RUNS/comprexit-w$window" \
    > "$RUNS/comprexit-w$window.log" 2>&1 &
done
wait
tail -qn 1 "$RUNS"/*/log.jsonl
( cd "$RUNS" && tar czf "$RESULTS/runs.tgz" */final */summary.json */log.jsonl *.log )

grid=(python3 benchmarks/run_grid.py --checkpoints "$RUNS" --device cuda --batch-size 64)
"${grid[@]}" --out "$RESULTS/grid.jsonl" --predictions "$RESULTS/predictions.jsonl" \
  --only comprexit-w64 comprexit-w128 comprexit-w256 --ratios 4 16 &
"${grid[@]}" --out "$RESULTS/grid_comi.jsonl" --predictions "$RESULTS/predictions_comi.jsonl" --only comi &
wait
timeout 300 python3 benchmarks/speed.py --device cuda --dtype bfloat16 --shapes 64x512 8x4096 \
  --head comprexit_rag/pretrained/comprexit-smollm2-135m --compile --out "$RESULTS/speed_compile.json" \
  || echo "compiled speed benchmark failed or timed out"
echo ALL DONE
