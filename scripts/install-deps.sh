#!/usr/bin/env bash
# Installs the Debian packages kproxy's demo and tests need, if any is missing.
# Run as root on Debian 12. The Rust toolchain (cargo >= 1.89) must already be installed.
set -euo pipefail

# Host tools for the tests and the demo, then what the IPVS lane's qemu guest needs
# (scripts/run-ipvs-vm.sh: the host kernel has no IP_VS, the guest boots Debian's).
PACKAGES=(iptables nftables conntrack ipset ipvsadm iproute2 procps socat
          qemu-system-x86 cpio xz-utils busybox-static kmod binutils strace)

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: run as root (network namespaces and netfilter need it)" >&2
    exit 1
fi
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
if ! command -v cargo >/dev/null; then
    echo "install-deps: cargo not found: install a Rust toolchain >= 1.89 (rustup) first" >&2
    exit 1
fi
