#!/usr/bin/env bash
# Runs the CNI input fuzz target (cni-plugins/fuzz) for FUZZ_SECONDS
# (default 60). cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP enables
# them on the stable toolchain.
set -euo pipefail
cd "$(dirname "$0")/../cni-plugins"
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
mkdir -p fuzz/corpus/cni_input
printf 'ADD\0abc\0/run/netns/x\0eth0\0K=V\0/opt/cni/bin\0{"cniVersion":"1.0.0","name":"n","type":"knode-bridge","ipam":{"type":"knode-host-local","ranges":[[{"subnet":"10.1.0.0/24"}]]}}' \
  > fuzz/corpus/cni_input/seed-add
RUSTC_BOOTSTRAP=1 cargo fuzz run cni_input -- -max_total_time="${FUZZ_SECONDS:-60}"
