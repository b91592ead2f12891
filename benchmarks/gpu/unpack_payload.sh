#!/usr/bin/env bash
# On the GPU machine, after the last part has been copied to /tmp/parts (see pack_payload.sh): join the
# parts and put wheels in /tmp/x, data in /tmp/data and a carried training state in
# /tmp/runs/pretrain/checkpoint (or a carried head + adapter to start from in /tmp/init), where setup.sh
# and reader_adapter.sh look for them.
set -euo pipefail
rm -rf /tmp/pl && mkdir -p /tmp/pl /tmp/x /tmp/data
cat /tmp/parts/part-* | tar xf - -C /tmp/pl
cp -r /tmp/pl/x/. /tmp/x/
cp -r /tmp/pl/data/. /tmp/data/
if [ -d /tmp/pl/state/checkpoint ]; then
  rm -rf /tmp/runs/pretrain && mkdir -p /tmp/runs/pretrain
  cp -r /tmp/pl/state/checkpoint /tmp/runs/pretrain/
  cat /tmp/runs/pretrain/checkpoint/state.json && echo
fi
if [ -d /tmp/pl/init ]; then
  rm -rf /tmp/init && cp -r /tmp/pl/init /tmp/init
  python3 -c "import json; print('init: trained at', json.load(open('/tmp/init/config.json'))['config']['trained_ratios'])"
fi
ls /tmp/x /tmp/data/wiki
