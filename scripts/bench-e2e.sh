#!/usr/bin/env bash
# End-to-end benchmark of kproxy as a user sees it: N Services × 3 endpoints in 100
# manifest files, the real kproxy (release build) on a node namespace, and for each mode:
# the first sync, one endpoint change from the file's rename to the first connection
# through the new pod (p50 and max), a periodic full resync, kproxy's peak RSS, and the
# kernel tool's one-chain floor. Root needed. Prints a Markdown table; writes
# target/bench-e2e/results.json and kproxy's logs under target/bench-e2e/logs/.
#
#   scripts/bench-e2e.sh                        # 1k and 10k in every mode this kernel has,
#                                               # then 50k in nftables mode
#   scripts/bench-e2e.sh 10000 nftables         # only these sizes and modes
#   scripts/bench-e2e.sh 1000 nftables --changes 3 --no-resync   # extra bench-e2e flags
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh demo
cargo build --release -p kproxy -p kproxy-netns-tests --bins
export KPROXY_BIN="$PWD/target/release/kproxy"
if [ "$#" -eq 0 ]; then
  target/release/bench-e2e --sizes 1000,10000 --modes nftables,iptables-nft,iptables-legacy,userspace
  target/release/bench-e2e --sizes 50000 --modes nftables
else
  sizes="$1" modes="${2:-nftables,iptables-nft,iptables-legacy,userspace}"
  shift; [ "$#" -gt 0 ] && shift
  target/release/bench-e2e --sizes "$sizes" --modes "$modes" "$@"
fi
