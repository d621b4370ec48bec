#!/usr/bin/env bash
# Runs every test layer: unit tests, the end-to-end tests (real etcd, real
# agents), then the netns tests (root, real kernel) against freshly built
# binaries. Under CI=true a test that would skip fails instead. Called by
# `make test` after scripts/bootstrap.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib.sh
require_cargo test
have_root test "the netns tests" || true

echo "== build"
cargo build --workspace --bins
scripts/build-pause.sh
echo "== unit tests"
cargo test --workspace --no-fail-fast --exclude netns-tests --exclude knode-tests
echo "== end-to-end tests (real etcd and knode agents on loopback)"
scripts/python-client.sh
cargo test -p knode-tests --no-fail-fast
echo "== netns tests (real kernel, namespaces created by the tests)"
cargo test -p netns-tests --no-fail-fast -- --test-threads="${NETNS_TEST_THREADS:-2}"
