#!/usr/bin/env bash
# Sync benchmark of nftables and iptables (legacy and nft) modes: full sync, full resync
# and one-endpoint partial syncs at N services × 3 endpoints, each in a fresh network
# namespace. Root needed. Builds in release mode.
#
#   scripts/bench-sync.sh                      # 1k, 10k, 50k, all modes (iptables-nft at
#                                              # 50k: its first restore alone ran > 17 min)
#   scripts/bench-sync.sh 1000,10000           # only these sizes
#   scripts/bench-sync.sh 50000 nftables       # only these sizes and modes
#   scripts/bench-sync.sh --ipvs-vm [SIZES] [MODES]  # inside the qemu guest of
#       scripts/run-ipvs-vm.sh (default: 1000,10000 and ipvs,nftables: nftables there
#       gives the guest's slowdown against this machine, qemu TCG emulates the CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --ipvs-vm ]; then
  shift
  sizes="${1:-1000,10000}" modes="${2:-ipvs,nftables}"
  exe=$(cargo bench -p kproxy-dataplane --bench sync --no-run --message-format=json \
    | grep -o '"executable":"[^"]*"' | cut -d'"' -f4 | grep '/sync-' | head -n1)
  [ -n "$exe" ] || { echo "bench-sync.sh: building the benchmark failed" >&2; exit 1; }
  exec scripts/run-ipvs-vm.sh --timeout 3000 --run "$exe --sizes $sizes --modes $modes"
fi
sizes="${1:-1000,10000,50000}"
modes="${2:-nftables,iptables-nft,iptables-legacy}"
command -v nft >/dev/null || { echo "nft missing: apt-get install -y nftables" >&2; exit 1; }
cargo bench -p kproxy-dataplane --bench sync -- --sizes "$sizes" --modes "$modes"
