#!/usr/bin/env bash
# On the GPU machine, after the last part has been copied to /tmp/parts (see pack_payload.sh): join the
# parts and put wheels in /tmp/x, data in /tmp/data and a carried training state in
# /tmp/runs/<its run>/checkpoint (pretrain, or sft for a QA stage in pieces; or a carried head + adapter to start from in /tmp/init;
# finished runs to score in /tmp/runs/<name>), where setup.sh
# and reader_adapter.sh look for them; carried retrieved neighbours go to /tmp/cache/distractors (setup.sh's cache).
set -euo pipefail
rm -rf /tmp/pl && mkdir -p /tmp/pl /tmp/x /tmp/data
cat /tmp/parts/part-* | tar xf - -C /tmp/pl
cp -r /tmp/pl/x/. /tmp/x/
cp -r /tmp/pl/data/. /tmp/data/
if [ -d /tmp/pl/state/checkpoint ]; then
  run=$(cat /tmp/pl/state/run 2> /dev/null || echo pretrain)
  rm -rf "/tmp/runs/$run" && mkdir -p "/tmp/runs/$run"
  cp -r /tmp/pl/state/checkpoint "/tmp/runs/$run/"
  if [ -f /tmp/pl/state/log.jsonl ]; then cp /tmp/pl/state/log.jsonl "/tmp/runs/$run/"; fi
  echo "resuming $run:" && cat "/tmp/runs/$run/checkpoint/state.json" && echo
fi
if [ -d /tmp/pl/cache ]; then
  mkdir -p /tmp/cache && cp -r /tmp/pl/cache/. /tmp/cache/ && ls /tmp/cache/distractors
fi
if [ -d /tmp/pl/finished ]; then
  mkdir -p /tmp/runs && cp -r /tmp/pl/finished/. /tmp/runs/ && ls /tmp/pl/finished
fi
if [ -d /tmp/pl/teacher ]; then
  rm -rf /tmp/teacher && cp -r /tmp/pl/teacher /tmp/teacher
fi
if [ -d /tmp/pl/init ]; then
  rm -rf /tmp/init && cp -r /tmp/pl/init /tmp/init
  python3 -c "import json; print('init: trained at', json.load(open('/tmp/init/config.json'))['config']['trained_ratios'])"
fi
ls /tmp/x /tmp/data/wiki
