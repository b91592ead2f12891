#!/usr/bin/env bash
# Reader adapter on one GPU (issue: slots that carry the passage), in one script; start it with setsid.
#   1. COMPARE=1: short equal-time arms (COMPARE_ARMS, default experiments/reader_adapter/compare-*.json), each
#      from $PRETRAIN_INIT when given, scored on held-out reconstruction at its config's first ratio, also by
#      length (benchmarks/slot_quality.py --recon only); the arm with the lowest NQ own-slot loss gives its design
#      to the long run (settled in session 7: all positions, 128 tokens).
#   2. The long run ($PRETRAIN_CONFIG, default pretrain-4x.json, + the winning design), one piece of
#      PIECE_S seconds; resumes from $RUNS/pretrain/checkpoint when it is there (a previous piece).
#      PIECE_S=0: no piece (a session of baselines only, with SFT_S=0).
#      LR_SWEEP="1e-4 3e-4 1e-3" first runs LR_SWEEP_S seconds of it at each head lr (the adapter's half of
#      it), from $PRETRAIN_INIT when given, each scored on held-out reconstruction at 4x and OTHER_RATIOS;
#      the lowest mean own-slot loss sets the long run's lr (results in lr-sweep.json).
#   3. QA fine-tuning of the piece's head and adapter, or of $SFT_INIT's without a piece ($SFT_CONFIG, SFT_S
#      seconds; 0: none), then the held-out table (slot_quality.py: reconstruction, NQ and HotpotQA own /
#      other / closed-book / raw text). The piece's and the QA stage's heads also reconstruct held-out passages
#      cut to RECON_LENGTHS tokens (default "32 64 128 256 512"; slot_quality.py --recon-lengths).
#      OTHER_RATIOS="8 16" scores the piece's and the QA stage's head at those ratios too.
#      NQ_RETRIEVED (default 400; 0: none): the first N NQ dev questions read among 4 retrieved passages
#      (slot_quality.py --nq-retrieved), for the QA head, the shipped head and each baseline, each in a call of
#      its own; the neighbours come from the carried cache (pack_payload.sh), as the GPU has no embedder.
#      READING_TASKS (default 200; 0: none): held-out span-cloze and what-follows questions in the QA head's
#      and each baseline's table (slot_quality.py --reading-tasks).
#      TEACHER_QA=2wiki first writes runs/teacher-qa/2wiki.jsonl (comprexit-rag teacher-qa on the 6,108 2Wiki
#      passages outside the evaluation splits), the QA family that sft-4x-mixed-teacher-qa.json names; its
#      manifest comes back in results.tgz. The answers come from TEACHER_QA_FROM's reader adapter reading the
#      raw passages (default: the shipped head; /tmp/teacher: the carried full-lora checkpoint).
#      DISTILL_TEACHER: a full-lora checkpoint (pack_payload.sh TEACHER=, lands in /tmp/teacher) whose adapter is
#      the QA stage's distillation teacher (--distill-teacher) instead of the head's own adapter.
#      SFT_PIECE_S: the QA stage is a long run in pieces instead (an SFT_CONFIG with a fixed max_steps, e.g.
#      sft-4x-mixed-2pass.json): one piece of SFT_PIECE_S seconds, resumed from $RUNS/sft/checkpoint when it is
#      there (pack_payload.sh STATE_RUN=sft); a piece that ends before the run's last step packs its state into
#      $RESULTS/sft-piece ("SFT PIECE READY") and is not scored, the piece that reaches it is scored as SFT_S's run.
#      SFT_MAX_STEPS: the QA stage's max_steps instead of its config's (a shorter pass with the same recipe).
#      SFT_UNTIL: a QA piece that runs until this time (epoch seconds) instead of for SFT_PIECE_S, so that a
#      session chains pretraining and a QA piece without knowing how long the pretraining takes. A QA stage
#      after this session's pretraining runs only when the pretraining reached its last step.
#   4. BASELINES="baseline-full-lora-sft baseline-mean-pool-sft baseline-comi-sft": same-budget baselines (the
#      QA stage's step count, or their files' max_steps without one), trained and scored after the head's results:
#      each one's weights packed into state/<name>.final.tar.part-* once trained ("<name> TRAINED"), its scores
#      into out/<name>.tgz ("<name> READY"). full-lora's adapter also reads truncated text at TRUNCATE_RATIOS
#      (default "4 8 16"): truncation with the same adapter budget. One trained in an earlier session and carried
#      back (pack_payload.sh TRAINED=: its final/ and a summary.json that says finished) is only scored.
#      same-budget-comprexit-sft is ComprExIT itself on the baselines' recipe (a fresh head, no pretraining).
#   5. THROUGHPUT=1 (after the results are packed): training throughput at THROUGHPUT_SHAPES (context x batch; benchmarks/train_throughput.py)
#      and a profile of a few 512-token steps; THROUGHPUT_COMPILE=1 measures the same with compiled decoder
#      layers too (--compile: TrainConfig.compile_layers) into throughput-compiled.json.
# Every run saves a resumable checkpoint each SAVE_EVERY steps (default 100), which benchmarks/gpu/collect.sh,
# run at every poll, brings back while the run goes on; a run restarted from one (pack_payload.sh STATE=,
# STATE_RUN=<its name>) continues from it. Everything lands in $RESULTS; "ALL DONE" ends its log.
set -uo pipefail
source benchmarks/gpu/setup.sh
set +e
export COMPREXIT_DATA=${COMPREXIT_DATA:-/tmp/data} PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
RUNS=${RUNS:-/tmp/runs} RESULTS=${RESULTS:-/tmp/results}
COMPARE=${COMPARE:-0} COMPARE_S=${COMPARE_S:-80} PIECE_S=${PIECE_S:-420} SFT_S=${SFT_S:-420}
LR_SWEEP=${LR_SWEEP:-} LR_SWEEP_S=${LR_SWEEP_S:-100}
OTHER_RATIOS=${OTHER_RATIOS:-} THROUGHPUT=${THROUGHPUT:-1} THROUGHPUT_COMPILE=${THROUGHPUT_COMPILE:-0} THROUGHPUT_SHAPES=${THROUGHPUT_SHAPES:-512x16 512x64 128x64 128x256} BASELINES=${BASELINES:-} SFT_CONFIG=${SFT_CONFIG:-experiments/reader_adapter/sft-4x-mixed.json}
EXP=experiments/reader_adapter PRETRAIN_CONFIG=${PRETRAIN_CONFIG:-experiments/reader_adapter/pretrain-4x.json}
# PRETRAIN_INIT: a head + adapter directory a new long run starts from (a resumed run reads its checkpoint).
PRETRAIN_INIT=${PRETRAIN_INIT:-}
mkdir -p "$RUNS" "$RESULTS"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$RESULTS/device.txt"
python3 -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__)" \
  | tee -a "$RESULTS/device.txt"
SAVE_EVERY=${SAVE_EVERY:-100} RECON_LENGTHS=${RECON_LENGTHS:-32 64 128 256 512}
train() { python3 -m comprexit_rag.cli -v train --save-every "$SAVE_EVERY" "$@"; }
# pass_cap CONFIG: on a card of under 100 GB (an H100), --max-pass-tokens 65536 when CONFIG asks for more: the
# batch-128 configs read a QA batch in passes of 131,072 padded tokens, sized for the H200 (session 20 set 65,536
# by hand on an H100). A pass's size does not change what a step computes. GPU_MIB: the card's memory.
GPU_MIB=${GPU_MIB:-$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2> /dev/null | head -n 1)}
pass_cap() {
  python3 -c "import json, sys; asked = json.load(open(sys.argv[1])).get('max_pass_tokens') or 0
small = sys.argv[2].isdigit() and int(sys.argv[2]) < 100_000
print('--max-pass-tokens 65536' if small and asked > 65536 else '')" "$1" "$GPU_MIB"
}
# finished SUMMARY: whether a run's summary.json says it ran to its last step.
finished() { [ -f "$1" ] && python3 -c "import json, sys; sys.exit(not json.load(open(sys.argv[1]))['finished'])" "$1"; }
# The QA families slot_quality.py reads by default, none of them: its reconstruction-only and retrieved-only tables.
NO_QA=(--nq 0 --hotpotqa 0 --squad 0)
# pack DEST PATH...: PATHs under $RUNS as one tar in 15 MiB parts DEST.tar.part-* (a device call brings back
# files of <= 16 MiB), for collect.sh to bring back.
# shellcheck source=benchmarks/gpu/tar_weights_first.sh
source benchmarks/gpu/tar_weights_first.sh
pack() { local dest=$1; shift; mkdir -p "$(dirname "$dest")"; tar_weights_first "$RUNS" "$@" | split -b 15m - "$dest.tar.part-"; }
NQ_RETRIEVED=${NQ_RETRIEVED:-400}
READING_TASKS=${READING_TASKS:-200}
# retrieved NAME [slot_quality.py options]: the NQ table among retrieved passages into $NAME-quality-retrieved.json;
# a call of its own, so that missing neighbours (and no embedder to make them) cost no other table.
retrieved() {
  local name=$1; shift
  [ "$NQ_RETRIEVED" = 0 ] && return
  python3 benchmarks/slot_quality.py "$@" --device cuda --batch-size 64 --recon 0 "${NO_QA[@]}" \
    --nq-retrieved "$NQ_RETRIEVED" --out "$RESULTS/$name-quality-retrieved.json" > "$RUNS/$name-quality-retrieved.log" 2>&1
  grep -a "F1" "$RUNS/$name-quality-retrieved.log" | tail -1
}

cp "$PRETRAIN_CONFIG" "$RESULTS/pretrain.json"
if [ "$COMPARE" = 1 ]; then
  arms=()
  # shellcheck disable=SC2086  # COMPARE_ARMS: config files or a glob of them
  for config in ${COMPARE_ARMS:-$EXP/compare-*.json}; do
    arms+=("$config")
    arm=$(basename "$config" .json)
    ratio=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get("ratios", [4])[0])' "$config")
    train --config "$config" ${PRETRAIN_INIT:+--init-from "$PRETRAIN_INIT"} --time-budget "$COMPARE_S" \
      --output-dir "$RUNS/$arm" > "$RUNS/$arm.log" 2>&1
    # shellcheck disable=SC2086  # RECON_LENGTHS: one argument per length
    python3 benchmarks/slot_quality.py --head "$RUNS/$arm/final" --ratio "$ratio" --device cuda "${NO_QA[@]}" \
      --recon-lengths $RECON_LENGTHS --out "$RESULTS/$arm.json" > "$RUNS/$arm-quality.log" 2>&1
    tail -n 1 "$RUNS/$arm/log.jsonl"; grep -o '"own_nats": [0-9.]*' "$RESULTS/$arm.json"
  done
  # The winner's design (scope, objective mix, window lengths, batch) goes into the long run's config.
  python3 - "$RESULTS" "${arms[@]}" <<'EOF'
import json, pathlib, sys
results, configs = pathlib.Path(sys.argv[1]), {pathlib.Path(arm).stem: pathlib.Path(arm) for arm in sys.argv[2:]}
scores = {arm: json.loads((results / f"{arm}.json").read_text())["reconstruction_nq"]["own_nats"] for arm in configs}
winner = min(scores, key=scores.get)
design = json.loads(configs[winner].read_text())
keys = ("adapter_scope", "reconstruction_prob", "continuation_length", "context_lengths", "batch_size")
config = json.loads((results / "pretrain.json").read_text()) | {k: design[k] for k in keys if k in design}
(results / "pretrain.json").write_text(json.dumps(config, indent=1) + "\n")
(results / "compare.json").write_text(json.dumps({"own_nats": scores, "winner": winner}, indent=1) + "\n")
print("winner", winner, scores)
EOF
fi

if [ -n "$LR_SWEEP" ]; then
  for lr in $LR_SWEEP; do
    adapter_lr=$(python3 -c "import sys; print(float(sys.argv[1]) / 2)" "$lr")
    train --config "$RESULTS/pretrain.json" ${PRETRAIN_INIT:+--init-from "$PRETRAIN_INIT"} --lr "$lr" \
      --adapter-lr "$adapter_lr" --time-budget "$LR_SWEEP_S" --output-dir "$RUNS/lr-$lr" > "$RUNS/lr-$lr.log" 2>&1
    for ratio in 4 $OTHER_RATIOS; do
      python3 benchmarks/slot_quality.py --head "$RUNS/lr-$lr/final" --ratio "$ratio" --device cuda "${NO_QA[@]}" \
        --out "$RESULTS/lr-$lr-${ratio}x.json" > "$RUNS/lr-$lr-${ratio}x.log" 2>&1
    done
  done
  python3 - "$RESULTS" $LR_SWEEP <<'EOF'
import json, pathlib, statistics, sys
results, rates = pathlib.Path(sys.argv[1]), sys.argv[2:]
scores = {
    rate: {
        path.stem.rsplit("-", 1)[1]: json.loads(path.read_text())["reconstruction_nq"]["own_nats"]
        for path in results.glob(f"lr-{rate}-*x.json")
    }
    for rate in rates
}
best = min(rates, key=lambda rate: statistics.mean(scores[rate].values()) if scores[rate] else float("inf"))
config = json.loads((results / "pretrain.json").read_text()) | {"lr": float(best), "adapter_lr": float(best) / 2}
(results / "pretrain.json").write_text(json.dumps(config, indent=1) + "\n")
(results / "lr-sweep.json").write_text(json.dumps({"own_nats": scores, "chosen_lr": float(best)}, indent=1) + "\n")
print("lr sweep", scores, "->", best)
EOF
fi

# SFT_INIT: a finished pretraining run's head + adapter (e.g. /tmp/init from pack_payload.sh INIT=): no
# pretraining this session, the QA stage starts from it.
if [ -z "${SFT_INIT:-}" ] && [ "$PIECE_S" != 0 ]; then
  train --config "$RESULTS/pretrain.json" ${PRETRAIN_INIT:+--init-from "$PRETRAIN_INIT"} --piece-seconds "$PIECE_S" --output-dir "$RUNS/pretrain" \
    > "$RUNS/pretrain.log" 2>&1
  tail -n 2 "$RUNS/pretrain/log.jsonl"
  # The piece's state first, in 15 MiB parts: collect it before anything else (a machine given back
  # takes everything on it; the resumable state is what a long run cannot lose). A run at its last step
  # needs no optimizer state: its head and adapter (what a QA stage starts from) are a third of the parts.
  if finished "$RUNS/pretrain/summary.json"; then
    pack "$RESULTS/piece/piece" pretrain/final pretrain/log.jsonl pretrain/summary.json
  else
    pack "$RESULTS/piece/piece" pretrain/checkpoint pretrain/log.jsonl
  fi
  echo PIECE READY
  # shellcheck disable=SC2086  # RECON_LENGTHS: one argument per length
  python3 benchmarks/slot_quality.py --head "$RUNS/pretrain/final" --device cuda "${NO_QA[@]}" \
    --recon-lengths $RECON_LENGTHS --out "$RESULTS/pretrain-quality.json" > "$RUNS/pretrain-quality.log" 2>&1
  # OTHER_RATIOS="8 16": the same tables at other ratios (a head trained at several, e.g. pretrain-multi-ratio-b256.json).
  for ratio in $OTHER_RATIOS; do
    python3 benchmarks/slot_quality.py --head "$RUNS/pretrain/final" --ratio "$ratio" --device cuda "${NO_QA[@]}" \
      --out "$RESULTS/pretrain-quality-${ratio}x.json" > "$RUNS/pretrain-quality-${ratio}x.log" 2>&1
    grep -a "reconstruction" "$RUNS/pretrain-quality-${ratio}x.log" | tail -1
  done
fi
SFT_FROM=${SFT_INIT:-$RUNS/pretrain/final}
# A QA stage that starts from this session's pretraining needs the pretraining's last step, not a piece's end.
if [ -z "${SFT_INIT:-}" ] && [ "$PIECE_S" != 0 ] && ! finished "$RUNS/pretrain/summary.json"; then
  echo "pretraining did not reach its last step: no QA stage this session"
  SFT_S=0 SFT_PIECE_S="" SFT_UNTIL=""
fi
# SFT_UNTIL (epoch seconds): the QA piece runs until then, however long the stages before it took.
if [ -n "${SFT_UNTIL:-}" ]; then
  SFT_PIECE_S=$((SFT_UNTIL - $(date +%s)))
  echo "QA piece: $SFT_PIECE_S s"
  [ "$SFT_PIECE_S" -lt 60 ] && { echo "under 60 s left: no QA stage this session"; SFT_S=0 SFT_PIECE_S=""; }
fi
if [ -n "${TEACHER_QA:-}" ]; then
  python3 -m comprexit_rag.cli -v teacher-qa --teacher "${TEACHER_QA_FROM:-comprexit_rag/pretrained/comprexit-smollm2-135m}" \
    --source "$TEACHER_QA" --limit 6119 --out "runs/teacher-qa/$TEACHER_QA.jsonl" --batch-size 256 --device cuda \
    > "$RUNS/teacher-qa.log" 2>&1
  tail -n 2 "$RUNS/teacher-qa.log"
  mkdir -p "$RESULTS/teacher-qa" && cp "runs/teacher-qa/$TEACHER_QA.manifest.json" "$RESULTS/teacher-qa/"
fi
# SFT_S=0: no QA stage (a piece of a long run whose QA stage comes in a later session).
mkdir -p "$RESULTS/out" "$RESULTS/state"
if [ -n "${SFT_PIECE_S:-}" ]; then
  # A resumed run rebuilds its head and adapter from the checkpoint (--init-from serves the first piece).
  train --config "$SFT_CONFIG" $(pass_cap "$SFT_CONFIG") ${SFT_MAX_STEPS:+--max-steps "$SFT_MAX_STEPS"} --init-from "$SFT_FROM" ${DISTILL_TEACHER:+--distill-teacher "$DISTILL_TEACHER"} --piece-seconds "$SFT_PIECE_S" \
    --output-dir "$RUNS/sft" > "$RUNS/sft.log" 2>&1
  tail -n 1 "$RUNS/sft/log.jsonl"
  # A finished run's final head is what comes back (below): its optimizer state would only delay it.
  if ! finished "$RUNS/sft/summary.json"; then
    pack "$RESULTS/sft-piece/piece" sft/checkpoint sft/log.jsonl
    echo SFT PIECE READY
  fi
elif [ "$SFT_S" != 0 ]; then
  rm -rf "$RUNS/sft"
  train --config "$SFT_CONFIG" $(pass_cap "$SFT_CONFIG") ${SFT_MAX_STEPS:+--max-steps "$SFT_MAX_STEPS"} --init-from "$SFT_FROM" ${DISTILL_TEACHER:+--distill-teacher "$DISTILL_TEACHER"} --time-budget "$SFT_S" \
    --output-dir "$RUNS/sft" > "$RUNS/sft.log" 2>&1
  tail -n 1 "$RUNS/sft/log.jsonl"
fi
# A QA piece that did not reach its last step is scored in the session that finishes it.
if { [ -n "${SFT_PIECE_S:-}" ] || [ "$SFT_S" != 0 ]; } && finished "$RUNS/sft/summary.json"; then
  # The QA head in 15 MiB parts, before it is scored (the piece's state is in $RESULTS/sft-piece, above).
  pack "$RESULTS/state/state" sft/final
  echo "QA HEAD READY"
  # shellcheck disable=SC2086
  python3 benchmarks/slot_quality.py --head "$RUNS/sft/final" --device cuda --batch-size 64 \
    --recon-lengths $RECON_LENGTHS --reading-tasks "$READING_TASKS" --out "$RESULTS/sft-quality.json" > "$RUNS/sft-quality.log" 2>&1
  grep -A3 '"own"\|content_gap\|own_nats' "$RESULTS/sft-quality.json" | grep -v examples | head -40
  retrieved sft --head "$RUNS/sft/final"
  retrieved shipped
  for ratio in $OTHER_RATIOS; do
    python3 benchmarks/slot_quality.py --head "$RUNS/sft/final" --ratio "$ratio" --device cuda --batch-size 64 \
      --out "$RESULTS/sft-quality-${ratio}x.json" > "$RUNS/sft-quality-${ratio}x.log" 2>&1
    grep -a "F1\|reconstruction" "$RUNS/sft-quality-${ratio}x.log" | tail -3
  done
fi

# What comes back (8 files of <= 16 MiB a call): results + logs in one archive, and the parts above.
# (a baselines-only session has no logs yet)
compgen -G "$RUNS/*.log" > /dev/null && ( cd "$RUNS" && tar czf "$RESULTS/logs.tgz" */summary.json */log.jsonl *.log )
( cd "$RESULTS" && tar czf out/results.tgz --exclude=out --exclude=state --exclude=piece --exclude=sft-piece . )
ls -la "$RESULTS/out" "$RESULTS/state"
echo STATE READY
# BASELINES: experiment files of $EXP (names without .json) trained after the head's results are packed,
# each for as many steps as the head's QA stage took (same data, steps and seed), then scored by
# slot_quality.py --method <its method>; each one's results in out/<name>.tgz, packed before the next starts.
# Without a QA stage this session, each trains for its experiment file's max_steps (the shipped head's). One
# carried back from an earlier session (pack_payload.sh STATE_RUN=<name>) resumes from its checkpoint.
qa_steps=""
[ -f "$RUNS/sft/summary.json" ] && qa_steps=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['steps'])" "$RUNS/sft/summary.json")
for name in $BASELINES; do
  method=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['method'])" "$EXP/$name.json")
  if [ -f "$RUNS/$name/final/config.json" ] && finished "$RUNS/$name/summary.json"; then
    echo "$name TRAINED (carried: pack_payload.sh TRAINED=)"  # trained in an earlier session, scored here
  else
    train --config "$EXP/$name.json" ${qa_steps:+--max-steps "$qa_steps"} --output-dir "$RUNS/$name" > "$RUNS/$name.log" 2>&1
    # Its weights first (a machine lost while scoring keeps them: the scores can be made again elsewhere).
    pack "$RESULTS/state/$name.final" "$name/final" "$name/summary.json"
    echo "$name TRAINED"
  fi
  python3 benchmarks/slot_quality.py --method "$method" --head "$RUNS/$name/final" --device cuda --batch-size 64 \
    --reading-tasks "$READING_TASKS" --out "$RESULTS/$name-quality.json" > "$RUNS/$name-quality.log" 2>&1
  grep -a "F1" "$RUNS/$name-quality.log" | tail -2
  retrieved "$name" --method "$method" --head "$RUNS/$name/final"
  if [ "$method" = full-lora ]; then
    for ratio in ${TRUNCATE_RATIOS:-4 8 16}; do
      python3 benchmarks/slot_quality.py --method truncate --reader-adapter "$RUNS/$name/final" --ratio "$ratio" \
        --recon 0 --device cuda --batch-size 64 --out "$RESULTS/$name-truncate-${ratio}x-quality.json" \
        > "$RUNS/$name-truncate-${ratio}x-quality.log" 2>&1
      grep -a "F1" "$RUNS/$name-truncate-${ratio}x-quality.log" | tail -2
    done
  fi
  # (a carried run brings no training log: its log.jsonl and $name.log came back in the session that trained it)
  tar czf "$RESULTS/out/$name.tgz" -C "$RESULTS" $(cd "$RESULTS" && ls "$name"-*quality*.json) \
    -C "$RUNS" $(cd "$RUNS" && ls -d "$name/log.jsonl" "$name/summary.json" "$name.log" "$name-quality.log" 2> /dev/null)
  echo "$name READY"
done
# Last, so the results above can be collected while it runs.
if [ "$THROUGHPUT" = 1 ]; then
  python3 benchmarks/train_throughput.py --config "$EXP/throughput-4x.json" --shapes $THROUGHPUT_SHAPES \
    --profile --out "$RESULTS/throughput.json" > "$RUNS/throughput.log" 2>&1
  grep -o '"sequences_per_s": [0-9.]*' "$RESULTS/throughput.json"
  tar czf "$RESULTS/out/throughput.tgz" -C "$RESULTS" throughput.json throughput.profile.txt -C "$RUNS" throughput.log
  if [ "$THROUGHPUT_COMPILE" = 1 ]; then
    python3 benchmarks/train_throughput.py --config "$EXP/throughput-4x.json" --shapes $THROUGHPUT_SHAPES --compile \
      --profile --out "$RESULTS/throughput-compiled.json" > "$RUNS/throughput-compiled.log" 2>&1
    grep -o '"sequences_per_s": [0-9.]*' "$RESULTS/throughput-compiled.json"
    tar czf "$RESULTS/out/throughput-compiled.tgz" -C "$RESULTS" throughput-compiled.json \
      throughput-compiled.profile.txt -C "$RUNS" throughput-compiled.log
  fi
fi
echo ALL DONE
