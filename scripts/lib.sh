# Helpers sourced by scripts/test.sh and scripts/bench.sh.

# require_cargo NAME: stops with a hint when there is no Rust toolchain.
require_cargo() {
  command -v cargo >/dev/null || { echo "$1: cargo not found; install the Rust toolchain (rustup) first" >&2; exit 1; }
}

# have_root NAME WHAT: true as root. Otherwise a failure under CI=true
# (skips are not allowed there); elsewhere it says that WHAT is skipped
# and returns false.
have_root() {
  [ "$(id -u)" -eq 0 ] && return 0
  if [ "${CI:-}" = "true" ]; then
    echo "$1: $2 need root, and CI=true forbids skipping them" >&2
    exit 1
  fi
  echo "$1: not root: $2 are skipped" >&2
  return 1
}
