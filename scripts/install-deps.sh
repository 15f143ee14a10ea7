#!/usr/bin/env bash
# Installs the Debian packages a purpose needs, if any is missing. Run as root on Debian
# 12; the Rust toolchain (cargo >= 1.89) must already be installed.
#
#   scripts/install-deps.sh demo     the run-netns demo: netfilter tools, iproute2
#   scripts/install-deps.sh tests    the tests (the demo's tools, plus ipvsadm and strace)
#   scripts/install-deps.sh vm       the IPVS lane's qemu guest (scripts/run-ipvs-vm.sh)
#   scripts/install-deps.sh image    the container image (scripts/build-image.sh)
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: run as root (network namespaces and netfilter need it)" >&2
    exit 1
fi
if [ "$#" -eq 0 ]; then
    echo "usage: install-deps.sh demo|tests|vm|image ..." >&2
    exit 2
fi
PACKAGES=()
for purpose in "$@"; do
    case "$purpose" in
        demo) PACKAGES+=(iptables nftables conntrack ipset iproute2 procps socat) ;;
        tests) PACKAGES+=(iptables nftables conntrack ipset iproute2 procps socat ipvsadm strace) ;;
        # The host kernel has no IP_VS: the guest boots Debian's.
        vm) PACKAGES+=(qemu-system-x86 cpio xz-utils busybox-static kmod binutils) ;;
        image) PACKAGES+=(mmdebstrap podman runc uidmap) ;;
        *) echo "install-deps: unknown purpose $purpose (demo, tests, vm, image)" >&2; exit 2 ;;
    esac
done
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
