# Sourced by reader_adapter.sh and collect.sh. A checkpoint comes back in 15 MiB parts over one poll or more,
# and a machine lost between two polls keeps the parts not yet sent (session 33 lost a run with 4 of its 6
# parts home, the head's weights in the missing two). Weights travel first and the optimizer state last, so
# the parts already home hold a head and adapter to start from (pack_payload.sh INIT=), if not an exact resume.

# tar_weights_first DIR PATH...: a tar of the PATHs (relative to DIR) on stdout, optimizer states last.
tar_weights_first() {
  local dir=$1
  shift
  (cd "$dir" && find "$@" -type f ! -name 'optimizer*' | sort && find "$@" -type f -name 'optimizer*' | sort) \
    | tar cf - -C "$dir" --no-recursion -T -
}
