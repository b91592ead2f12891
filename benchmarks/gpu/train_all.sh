#!/usr/bin/env bash
# Train every trainable module of the benchmark on one GPU, in parallel streams.
#
#   RUNS=/tmp/runs bash benchmarks/gpu/train_all.sh
#
# Budgets are equal across methods: each pretraining stage gets PRETRAIN_S seconds and
# each SFT stage SFT_S seconds (and the same step cap), on the same data and seed.
# SHIPPED_INIT=1 continues pretraining from the heads shipped in comprexit_rag/pretrained
# (more pretraining text for both slot methods) instead of starting from scratch.
set -uo pipefail  # no -e: one failed stage must not stop the other streams
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
RUNS=${RUNS:-/tmp/runs}
PRETRAIN_S=${PRETRAIN_S:-240}
SFT_S=${SFT_S:-180}
mkdir -p "$RUNS"
train() { python -m comprexit_rag.cli -v train --seed 0 --save-every 100000 "$@" ${EXTRA:-}; }
sft() { train --stage sft --max-steps 3000 --time-budget "$SFT_S" "$@"; }
pretrain_init() { [ "${SHIPPED_INIT:-0}" = 1 ] && echo "--init-from comprexit_rag/pretrained/$1-smollm2-135m"; }

(
  train --stage pretrain --method comprexit --output-dir "$RUNS/comprexit-pretrain" \
    --max-steps 6000 --time-budget "$PRETRAIN_S" $(pretrain_init comprexit)
  init="$RUNS/comprexit-pretrain/final"
  sft --method comprexit --init-from "$init" --output-dir "$RUNS/comprexit-mixed" --ratios 4 8 16 &
  for ratio in ${RATIO_HEADS:-4 8 16}; do
    sft --method comprexit --init-from "$init" --output-dir "$RUNS/comprexit-r$ratio" --ratios "$ratio" &
  done
  wait
) > "$RUNS/comprexit.log" 2>&1 &
comprexit=$!

(
  train --stage pretrain --method mean-pool --output-dir "$RUNS/mean-pool-pretrain" \
    --max-steps 6000 --time-budget "$PRETRAIN_S" $(pretrain_init mean-pool)
  sft --method mean-pool --init-from "$RUNS/mean-pool-pretrain/final" --output-dir "$RUNS/mean-pool"
) > "$RUNS/mean-pool.log" 2>&1 &
mean_pool=$!

(
  # Raw contexts are up to ~1,500 tokens: same 32 examples per step, in 4 micro-batches.
  sft --method full-tuned --lr 1e-2 --batch-size 8 --grad-accum 4 --output-dir "$RUNS/full-tuned"
  sft --method comi --output-dir "$RUNS/comi"
) > "$RUNS/baselines.log" 2>&1 &
baselines=$!

wait "$comprexit" "$mean_pool" "$baselines"
