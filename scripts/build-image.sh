#!/usr/bin/env bash
# Builds kproxy's container image from Debian packages and this project's files only (no
# registry, no Docker daemon): mmdebstrap extracts a minimal Debian root holding exactly
# the tools kproxy calls (iptables with both backends, nftables, ipset, iproute2,
# conntrack), the release kproxy goes to /usr/local/bin, and podman turns the tree into an
# image and saves it as a docker-archive, loadable with `podman load`, `docker load` or
# `ctr images import`.
#
# Usage: scripts/build-image.sh            (as root; installs mmdebstrap and podman if missing)
# Output: target/image/kproxy-image.tar (image localhost/kproxy:latest), path and size last.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=target/image
IMAGE=localhost/kproxy:latest
SUITE=bookworm
MIRROR=${KPROXY_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# What kproxy runs, and the C runtime of the Rust binary.
PACKAGES=iptables,nftables,ipset,iproute2,conntrack,libgcc-s1

scripts/install-deps.sh image

echo "build-image: building the release kproxy (the first build takes several minutes)"
cargo build --release -p kproxy --bin kproxy

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$OUT"

echo "build-image: extracting a minimal $SUITE root ($PACKAGES)"
mmdebstrap --quiet --variant=extract --include="$PACKAGES" \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    "$SUITE" "$work/root.tar" "$MIRROR"

# The release binary, and the file upstream's DaemonSet mounts over (it must exist).
mkdir -p "$work/add/usr/local/bin" "$work/add/run"
install -m 0755 target/release/kproxy "$work/add/usr/local/bin/kproxy"
: > "$work/add/run/xtables.lock"
tar -rf "$work/root.tar" -C "$work/add" ./usr/local/bin/kproxy ./run/xtables.lock

echo "build-image: importing as $IMAGE"
podman rmi --force "$IMAGE" >/dev/null 2>&1 || true
podman import --quiet \
    --change 'ENTRYPOINT ["/usr/local/bin/kproxy"]' \
    --change 'LABEL org.opencontainers.image.title=kproxy' \
    --change "LABEL org.opencontainers.image.version=$(target/release/kproxy --version | cut -d' ' -f2)" \
    "$work/root.tar" "$IMAGE" >/dev/null
rm -f "$OUT/kproxy-image.tar"
podman save --quiet --format docker-archive -o "$OUT/kproxy-image.tar" "$IMAGE"

compressed=$(gzip -c "$OUT/kproxy-image.tar" | wc -c)
echo "build-image: $OUT/kproxy-image.tar ($(du -h "$OUT/kproxy-image.tar" | cut -f1), $((compressed / 1024 / 1024)) MiB gzipped)"
