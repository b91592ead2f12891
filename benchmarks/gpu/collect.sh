#!/usr/bin/env bash
# Every poll of a GPU session runs this (`sleep 300; bash benchmarks/gpu/collect.sh`): it brings back what
# the session has done so far, so a machine that stops answering takes at most one poll's work with it.
# Into $OUT (at most 8 files of <= 16 MiB, about 64 MiB in all, come back from a call; MAX_MIB keeps under it):
#   progress.tgz          the session's log, every run's log.jsonl and summary, and the finished results
#                         ($RESULTS/out/*.tgz and JSON files), as they stand now: every poll, whole
#   <part files>          the parts the script packs, each once: a piece's state ($RESULTS/piece, sft-piece), the
#                         QA head and each trained baseline's weights ($RESULTS/state)
#   <run>.<generation>.ckpt.tar.part-*
#                         the newest checkpoint of a run still training, once a generation: its state.json,
#                         the generation it names and its log.jsonl, over one poll or more; `cat` one
#                         generation's parts | `tar x` gives <run>/checkpoint, which
#                         `pack_payload.sh STATE=... STATE_RUN=<run>` carries back
# The checkpoint is copied state.json first, then the files it names (training/checkpoints.py: those are
# complete and never rewritten), so a copy taken while the run saves is whole, or skipped until next time.
set -uo pipefail
# shellcheck source=benchmarks/gpu/tar_weights_first.sh
source "$(dirname "$0")/tar_weights_first.sh"
RUNS=${RUNS:-/tmp/runs} RESULTS=${RESULTS:-/tmp/results} LOG=${LOG:-/tmp/run.log}
SENT=${SENT:-/tmp/collected} MAX_FILES=8 MAX_MIB=${MAX_MIB:-63} PART=15m
: "${OUT:?collect.sh writes into OUT, the folder a device call brings back}"
mkdir -p "$SENT" "$OUT"
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT

tail -n 3 "$LOG" 2> /dev/null | tr '\r' '\n' | tail -n 3 | cut -c1-300
for log in "$RUNS"/*/log.jsonl; do
  [ -f "$log" ] && echo "$(basename "$(dirname "$log")"): $(tail -n 1 "$log" | cut -c1-200)"
done
grep -h "READY\|ALL DONE" "$LOG" 2> /dev/null
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2> /dev/null  # a stalled run shows here

mkdir -p "$STAGE/progress"
cp "$LOG" "$STAGE/progress/" 2> /dev/null
( cd "$RUNS" 2> /dev/null && find . -maxdepth 2 \( -name log.jsonl -o -name summary.json -o -name '*.log' \) \
  -exec cp --parents {} "$STAGE/progress/" \; )
( cd "$RESULTS" 2> /dev/null && find . -maxdepth 2 \( -name '*.tgz' -o -name '*.json' \) -size -4M \
  -exec cp --parents {} "$STAGE/progress/" \; )
tar czf "$OUT/progress.tgz" -C "$STAGE" progress
files=1
# room KIB...: whether files of these sizes (KiB) still fit this call's file count and total size.
room() {
  local total=0 size
  for size in "$@"; do total=$((total + size)); done
  [ $((files + $#)) -le "$MAX_FILES" ] && [ $(($(du -sk "$OUT" | cut -f1) + total)) -le $((MAX_MIB * 1024)) ]
}

# Parts the script packed, each brought back once.
for part in "$RESULTS"/piece/* "$RESULTS"/sft-piece/* "$RESULTS"/state/*; do
  [ -f "$part" ] || continue
  marker="$SENT/$(basename "$(dirname "$part")")-$(basename "$part")"
  [ -e "$marker" ] && continue
  room "$(du -k "$part" | cut -f1)" || { echo "more parts wait for the next poll"; break; }
  cp "$part" "$OUT/$(basename "$(dirname "$part")")-$(basename "$part")" && touch "$marker"
  files=$((files + 1))
done

# The newest checkpoint of each run still training (no summary.json yet). One with an optimizer state is larger
# than a call brings back, so it is staged once, whole ($SENT/ckpt-<run>: its parts, named by its generation),
# and sent over as many polls as it takes; a newer one is staged only after every part of the last has gone.
for state in "$RUNS"/*/checkpoint/state.json; do
  [ -f "$state" ] || continue
  run_dir=$(dirname "$(dirname "$state")") && run=$(basename "$run_dir")
  [ -f "$run_dir/summary.json" ] && continue
  staged="$SENT/ckpt-$run"
  if ! compgen -G "$staged/*.part-*" > /dev/null; then
    rm -rf "$STAGE/$run" && mkdir -p "$STAGE/$run/checkpoint"
    cp "$state" "$STAGE/$run/checkpoint/state.json" || continue
    generation=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1])).get('files', ''))" \
      "$STAGE/$run/checkpoint/state.json")
    [ -n "$generation" ] || continue  # a checkpoint without generations is only read whole at a piece's end
    [ "$(cat "$SENT/$run.ckpt" 2> /dev/null)" = "$generation" ] && continue
    if ! cp -r "$run_dir/checkpoint/$generation" "$STAGE/$run/checkpoint/" 2> /dev/null; then
      echo "$run: $generation was replaced while copying; next poll"
      continue
    fi
    cp "$run_dir/log.jsonl" "$STAGE/$run/" 2> /dev/null
    mkdir -p "$staged"
    tar_weights_first "$STAGE" "$run" | split -b "$PART" - "$staged/$run.$generation.ckpt.tar.part-"
    echo "$generation" > "$SENT/$run.ckpt"
  fi
  sent=0
  for part in "$staged"/*.part-*; do
    room "$(du -k "$part" | cut -f1)" || break
    mv "$part" "$OUT/" && files=$((files + 1)) && sent=$((sent + 1))
  done
  waiting=$(find "$staged" -name '*.part-*' | wc -l)
  echo "$run: checkpoint $(cat "$SENT/$run.ckpt"), parts sent in this poll: $sent, left for the next: $waiting"
done
ls -la "$OUT"
