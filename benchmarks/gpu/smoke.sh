#!/usr/bin/env bash
# GPU smoke run: every training stream and a few grid rows with tiny budgets.
set -euo pipefail
source benchmarks/gpu/setup.sh
export COMPREXIT_DATA=$PWD/.carry/smokedata
RUNS=/tmp/smoke PRETRAIN_S=20 SFT_S=20 EXTRA="--max-pretrain-tokens 300000" bash benchmarks/gpu/train_all.sh
for f in /tmp/smoke/*/summary.json; do python3 -c "import json,sys; s=json.load(open('$f')); print('$f', s['steps'], s['examples_seen'], s['wall_time_s'])"; done
tail -n 2 /tmp/smoke/*/log.jsonl
python3 benchmarks/run_grid.py --out /tmp/smoke/grid.jsonl --checkpoints /tmp/smoke --device cuda --limit 32 \
  --only full comprexit comi mean-pool full-tuned
