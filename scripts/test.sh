#!/usr/bin/env bash
# Runs kproxy's whole test suite: unit, golden and property tests, the end-to-end tests
# that send real packets through network namespaces (root needed), the container image
# run with podman, and the IPVS tests inside a qemu guest (this kernel has no IP_VS).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh tests vm image
# The end-to-end tests run the real kproxy binary: build it first.
cargo build --workspace --all-targets
cargo test --workspace
# The image (release build), then the test that runs it (ignored by a plain cargo test).
scripts/build-image.sh
cargo test -p kproxy-netns-tests --test image -- --ignored
scripts/run-ipvs-vm.sh
