#!/usr/bin/env bash
# Runs every test layer: unit tests, then the netns tests (root, real kernel)
# against freshly built plugin binaries. Under CI=true a test that would skip
# fails instead. Called by `make test` after scripts/bootstrap.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "test: cargo not found; install the Rust toolchain (rustup) first" >&2; exit 1; }
if [ "$(id -u)" -ne 0 ]; then
  if [ "${CI:-}" = "true" ]; then
    echo "test: the netns tests need root, and CI=true forbids skipping them" >&2
    exit 1
  fi
  echo "test: not root: netns tests will be skipped (each says why)" >&2
fi

echo "== build"
cargo build --workspace --bins
echo "== unit tests"
cargo test --workspace --exclude netns-tests
echo "== netns tests (real kernel, namespaces created by the tests)"
cargo test -p netns-tests -- --test-threads="${NETNS_TEST_THREADS:-2}"
