#!/usr/bin/env bash
# Runs kproxy's whole test suite: unit, golden and property tests, the end-to-end tests
# that send real packets through network namespaces (root needed), and the IPVS tests
# inside a qemu guest (this kernel has no IP_VS).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# The end-to-end tests run the real kproxy binary: build it first.
cargo build --workspace --all-targets
cargo test --workspace
scripts/run-ipvs-vm.sh
