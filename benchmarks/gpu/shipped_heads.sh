#!/usr/bin/env bash
# Leave the shipped heads' weights home while a payload uploads, then bring them back.
#
#   benchmarks/gpu/shipped_heads.sh away    # before pack_payload.sh: its parts grow into the room they leave
#   benchmarks/gpu/shipped_heads.sh back    # after the last part's call, before the call that starts the run
#
# Every device call carries the whole working tree, and the shipped checkpoints' safetensors are most of it
# (46 of 59 MB in session 34), so a payload goes in parts of about 8 MB and an upload takes 31 calls. With
# them away, parts of about 50 MB take 5. They come back from git (`git checkout`), which is why `away`
# refuses while any of them differs from the last commit. Until `back`, git status shows them deleted:
# commit nothing in between.
set -euo pipefail
cd "$(dirname "$0")/../.."
heads=comprexit_rag/pretrained
case "${1:-}" in
  away)
    git diff --quiet -- "$heads" || { echo "$heads has uncommitted changes: commit them first" >&2; exit 2; }
    git ls-files -z -- "$heads/*.safetensors" | xargs -0 rm -f
    echo "shipped weights away: run 'benchmarks/gpu/shipped_heads.sh back' before the call that starts the run"
    ;;
  back)
    git checkout -- "$heads"
    echo "shipped weights back"
    ;;
  *)
    echo "usage: benchmarks/gpu/shipped_heads.sh away|back" >&2
    exit 2
    ;;
esac
