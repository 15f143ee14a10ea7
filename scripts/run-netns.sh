#!/usr/bin/env bash
# kproxy's main job on one machine (as root): builds a 3-node cluster out of network
# namespaces, runs kproxy in every node, programs a handful of Services, sends traffic and
# prints a report per Service (endpoints, hits per backend, chi-square p, DNAT on the
# source node, sync times) plus an SVG bar chart under target/run-netns/.
# Leaves nothing behind, also after an interrupted run.
#
#   scripts/run-netns.sh [--mode iptables|nftables|userspace] [--requests N] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh demo

echo "==> removing leftovers of interrupted runs"
scripts/netns-clean.sh | tail -n 1
# If this run is interrupted, its namespaces go as soon as run-netns has exited.
trap 'scripts/netns-clean.sh >/dev/null 2>&1 || true' EXIT

echo "==> building kproxy and run-netns"
cargo build -p kproxy -p kproxy-netns-tests --bins
./target/debug/run-netns "$@"
