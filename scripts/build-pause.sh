#!/usr/bin/env bash
# Builds knode-pause as a static binary (the pause image has no dynamic
# loader) and puts it next to knode in target/<profile>/, where the agent
# looks for it. pause/ is its own small workspace with its own target dir, so
# +crt-static applies to it alone and no workspace-wide cargo command can
# relink it dynamically.
# Usage: scripts/build-pause.sh [--release]   (default: the dev profile)
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO="${CARGO:-cargo}"

profile=debug
args=()
case "${1:-}" in
  --release) profile=release; args=(--release) ;;
  "") ;;
  *) echo "build-pause: unknown argument $1 (only --release)" >&2; exit 2 ;;
esac

RUSTFLAGS="-C target-feature=+crt-static" "$CARGO" build "${args[@]}" \
  --manifest-path pause/Cargo.toml --target-dir target/pause
built="target/pause/$profile/knode-pause"
# A static binary has no program interpreter (PT_INTERP) to load it.
if LC_ALL=C readelf -l "$built" | grep -q 'Requesting program interpreter'; then
  echo "build-pause: $built is dynamically linked" >&2
  exit 1
fi
mkdir -p "target/$profile"
install -m 0755 "$built" "target/$profile/knode-pause"
echo "build-pause: target/$profile/knode-pause is static"
