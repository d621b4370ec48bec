#!/usr/bin/env bash
# Runs every benchmark (`make bench`): builds the release binaries, then
# `bench` measures ours and the reference tools side by side in network
# namespaces it creates, writing bench/results/<name>.json and a chart.
# Needs root; under CI=true a missing root is a failure, not a skip.
# Extra arguments go to `bench` (e.g. `scripts/bench.sh cni --pods 50`).
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib.sh
require_cargo bench
have_root bench "the benchmarks (network namespaces)" || exit 0

echo "== build (release)"
cargo build --release --bins
# The agents the pod and DNS benches start need the static pause binary.
scripts/build-pause.sh --release
echo "== bench"
[ "$#" -gt 0 ] || set -- all --pods 200

# `bench` deletes its namespaces and temp dirs itself, even on failure; only
# a signal can stop it before it does. Then remove what it left: the names
# carry its pid (netns_tests::unique), so nothing else is touched.
target/release/bench --out bench/results "$@" &
pid=$!
interrupted() {
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local tag=$((pid % 100000))
  # Agents, containerd, etcd and shims carry their temp dirs in their
  # command lines; then the mounts, namespaces and dirs. Every name made by
  # `bench` ends in its pid tag (netns_tests::unique).
  pkill -KILL -f "/knode-[a-z0-9-]+-${tag}[0-9]" 2>/dev/null || true
  awk '{print $5}' /proc/self/mountinfo | grep -E "/knode-[a-z0-9-]+-${tag}[0-9]" | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  ip netns list | awk '{print $1}' | grep -E "^kn-[a-z0-9]+-${tag}[0-9]+$" | xargs -r -n1 ip netns delete || true
  rm -rf "${TMPDIR:-/tmp}"/knode-*-"${tag}"[0-9]*
  echo "bench: interrupted; removed its namespaces and temp dirs" >&2
  exit 130
}
trap interrupted INT TERM
wait "$pid"
