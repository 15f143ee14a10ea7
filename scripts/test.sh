#!/usr/bin/env bash
# Runs kproxy's whole test suite: unit, golden and property tests, and the end-to-end tests
# that send real packets through network namespaces (root needed).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# The end-to-end tests run the real kproxy binary: build it first.
cargo build --workspace --all-targets
cargo test --workspace
