#!/usr/bin/env bash
# Train every trainable module of the benchmark on one GPU, in parallel streams.
#
#   RUNS=/tmp/runs bash benchmarks/gpu/train_all.sh
#
# Stage 1 (PRETRAIN_S seconds): ComprExIT and mean-pool heads, continued from the heads shipped in
# comprexit_rag/pretrained, on Wikipedia + passages, half the steps reconstructing the compressed
# text and half predicting its continuation. Stage 2 (SFT_S seconds, same data, seed and step cap
# for every stream): the mixed-ratio ComprExIT head (4/8/16x), a 4x-only ComprExIT head, mean-pool
# and the COMI projector. The full-tuned soft prompt is not retrained (its shipped checkpoint is
# evaluated as it is).
set -uo pipefail  # no -e: one failed stage must not stop the other streams
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
RUNS=${RUNS:-/tmp/runs}
PRETRAIN_S=${PRETRAIN_S:-240}
SFT_S=${SFT_S:-330}
BATCH=${BATCH:-64}
mkdir -p "$RUNS"
train() { python3 -m comprexit_rag.cli -v train --seed 0 --batch-size "$BATCH" --save-every 100000 "$@" ${EXTRA:-}; }
pretrain() { train --stage pretrain --max-steps 20000 --time-budget "$PRETRAIN_S" --reconstruction-prob 0.5 "$@"; }
sft() { train --stage sft --max-steps 20000 --time-budget "$SFT_S" "$@"; }

pretrain --method comprexit --init-from comprexit_rag/pretrained/comprexit-smollm2-135m \
  --output-dir "$RUNS/comprexit-pretrain" > "$RUNS/comprexit-pretrain.log" 2>&1 &
pretrain --method mean-pool --init-from comprexit_rag/pretrained/mean-pool-smollm2-135m \
  --output-dir "$RUNS/mean-pool-pretrain" > "$RUNS/mean-pool-pretrain.log" 2>&1 &
wait

sft --method comprexit --init-from "$RUNS/comprexit-pretrain/final" --ratios 4 8 16 \
  --output-dir "$RUNS/comprexit-mixed" > "$RUNS/comprexit-mixed.log" 2>&1 &
sft --method comprexit --init-from "$RUNS/comprexit-pretrain/final" --ratios 4 \
  --output-dir "$RUNS/comprexit-r4" > "$RUNS/comprexit-r4.log" 2>&1 &
sft --method mean-pool --init-from "$RUNS/mean-pool-pretrain/final" \
  --output-dir "$RUNS/mean-pool" > "$RUNS/mean-pool.log" 2>&1 &
sft --method comi --output-dir "$RUNS/comi" > "$RUNS/comi.log" 2>&1 &
wait
