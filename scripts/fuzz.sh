#!/usr/bin/env bash
# Runs the fuzz targets for FUZZ_SECONDS each (default 60): CNI input
# (cni-plugins/fuzz) and the DNS query path (dns/fuzz). cargo-fuzz needs
# nightly features; RUSTC_BOOTSTRAP enables them on the stable toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1

mkdir -p cni-plugins/fuzz/corpus/cni_input
printf 'ADD\0abc\0/run/netns/x\0eth0\0K=V\0/opt/cni/bin\0{"cniVersion":"1.0.0","name":"n","type":"knode-bridge","ipam":{"type":"knode-host-local","ranges":[[{"subnet":"10.1.0.0/24"}]]}}' \
  > cni-plugins/fuzz/corpus/cni_input/seed-add
(cd cni-plugins && cargo fuzz run cni_input -- -max_total_time="${FUZZ_SECONDS:-60}")

# Seeds: an A query for a Service (with EDNS0) and an SRV query for a
# headless Service's named port, as `dig` sends them.
mkdir -p dns/fuzz/corpus/dns_query
printf '\x00\x2a\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01\x03web\x07default\x03svc\x07cluster\x05local\x00\x00\x01\x00\x01\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00' \
  > dns/fuzz/corpus/dns_query/seed-a
printf '\x00\x2b\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05_http\x04_tcp\x02db\x07default\x03svc\x07cluster\x05local\x00\x00\x21\x00\x01' \
  > dns/fuzz/corpus/dns_query/seed-srv
(cd dns && cargo fuzz run dns_query -- -max_total_time="${FUZZ_SECONDS:-60}")
