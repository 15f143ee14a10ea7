#!/bin/bash
# Builds the IPVS guest: Debian's stock 6.1 kernel (standard flavour: it has 9p) as an
# uncompressed, PVH-bootable ELF vmlinux, and a small uncompressed cpio initramfs with the
# IPVS/netfilter modules and host-copied userland (bash, busybox-static, iproute2, ipvsadm,
# iptables legacy+nft, nft, conntrack, ipset, strace).
#
# Usage: build-initramfs.sh CACHE_DIR
#   Writes CACHE_DIR/vmlinux-<kver> and CACHE_DIR/initramfs.cpio; the kernel package is
#   downloaded once into CACHE_DIR/debs and unpacked into CACHE_DIR/kernel.
# Env: KPKG (default: the newest linux-image-6.1.0-*-amd64-unsigned apt knows),
#      STRIP_SIG=1 drops module signatures (faster insmod under TCG, taints the kernel).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${1:?usage: build-initramfs.sh CACHE_DIR}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
KDIR=$CACHE/kernel
OUT=$CACHE/initramfs.cpio

if [ ! -d "$KDIR/lib/modules" ]; then
  mkdir -p "$CACHE/debs"
  if ! ls "$CACHE"/debs/linux-image-6.1.0-*-amd64-unsigned_*.deb >/dev/null 2>&1; then
    KPKG=${KPKG:-$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$' \
      | cut -d' ' -f1 | sort -V | tail -n1)}
    [ -n "$KPKG" ] || { echo "no linux-image-6.1.0-*-amd64-unsigned in apt (apt-get update?)" >&2; exit 1; }
    (cd "$CACHE/debs" && apt-get download "$KPKG")
  fi
  rm -rf "$KDIR.tmp"
  dpkg -x "$(ls "$CACHE"/debs/linux-image-6.1.0-*-amd64-unsigned_*.deb | sort -V | tail -n1)" "$KDIR.tmp"
  mv "$KDIR.tmp" "$KDIR"
fi
KVER=$(ls "$KDIR/lib/modules" | head -n1)

# The uncompressed ELF vmlinux has a PVH note: qemu boots it directly, skipping the slow
# (under TCG) real-mode setup and xz decompression of the bzImage.
VMLINUX=$CACHE/vmlinux-$KVER
if [ ! -s "$VMLINUX" ]; then
  BZ=$KDIR/boot/vmlinuz-$KVER
  off=$(grep -abo $'\xfd7zXZ\x00' "$BZ" | head -n1 | cut -d: -f1)
  tail -c +$((off + 1)) "$BZ" | xz -dc > "$VMLINUX.tmp" 2>/dev/null || true
  readelf -h "$VMLINUX.tmp" >/dev/null   # must be an ELF
  mv "$VMLINUX.tmp" "$VMLINUX"
fi

ROOT=$(mktemp -d "${TMPDIR:-/tmp}/ipvs-rootfs.XXXXXX")
trap 'rm -rf "$ROOT"' EXIT
# modules.dep is generated at install time, not shipped in the .deb
[ -f "$KDIR/lib/modules/$KVER/modules.dep" ] || depmod -b "$KDIR" "$KVER"

MODS=${MODS:-"virtio_pci 9p 9pnet_virtio
 dummy veth bridge br_netfilter tun
 ip_vs ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_wlc ip_vs_sh ip_vs_dh ip_vs_mh ip_vs_sed ip_vs_nq
 nf_conntrack nf_conntrack_netlink nf_nat xt_ipvs
 ip_tables iptable_filter iptable_nat iptable_mangle iptable_raw ip6_tables ip6table_filter ip6table_nat
 xt_statistic xt_comment xt_mark xt_MASQUERADE xt_conntrack xt_addrtype xt_nat xt_multiport
 xt_physdev xt_set xt_tcpudp xt_REDIRECT ipt_REJECT ip6t_REJECT xt_NFLOG
 ip_set ip_set_hash_ip ip_set_hash_ipport ip_set_hash_ipportip ip_set_hash_ipportnet
 ip_set_hash_net ip_set_bitmap_port
 nf_tables nft_compat nft_chain_nat nft_ct nft_nat nft_masq nft_numgen nft_hash nft_reject_inet
 nft_redir nft_fib_inet nft_limit nft_reject_ipv4 nft_reject_ipv6"}

mkdir -p "$ROOT"/{bin,sbin,etc,proc,sys,dev,tmp,run,mnt/host,lib64,usr/lib/x86_64-linux-gnu,var} \
         "$ROOT/lib/modules/$KVER"
ln -s ../run "$ROOT/var/run"

# kernel modules, in dependency order
: > "$ROOT/etc/modules.load"
for m in $MODS; do
  modprobe -d "$KDIR" -S "$KVER" --show-depends "$m" 2>/dev/null | awk '$1=="insmod"{print $2}'
done | awk '!seen[$0]++' | while read -r p; do
  rel=${p#"$KDIR"}
  mkdir -p "$ROOT$(dirname "$rel")"
  cp "$p" "$ROOT$rel"
  if [ "${STRIP_SIG:-0}" = 1 ] && [ "$(tail -c 28 "$p")" = "~Module signature appended~" ]; then
    # shellcheck disable=SC2046 # the signature length's four bytes, split on purpose
    set -- $(tail -c 32 "$p" | head -c 4 | od -An -tu1)
    truncate -s -$(( ($1<<24) + ($2<<16) + ($3<<8) + $4 + 40 )) "$ROOT$rel"
  fi
  echo "$rel" >> "$ROOT/etc/modules.load"
done
cp "$KDIR/lib/modules/$KVER"/modules.{order,builtin,builtin.modinfo} "$ROOT/lib/modules/$KVER/" 2>/dev/null || true
depmod -b "$ROOT" "$KVER"

# busybox (static)
cp /bin/busybox "$ROOT/bin/busybox"
for a in $(/bin/busybox --list); do
  [ -e "$ROOT/bin/$a" ] || ln -s busybox "$ROOT/bin/$a"
done

# dynamically linked host binaries + their libraries
copy_bin() {
  local src=$1
  mkdir -p "$ROOT$(dirname "$src")"
  cp -L "$src" "$ROOT$src"
  ldd "$src" | awk '/=>/ {print $3} /^\t\/lib64/ {print $1}' | while read -r l; do
    [ -n "$l" ] && [ -e "$l" ] && { mkdir -p "$ROOT$(dirname "$l")"; cp -Ln "$l" "$ROOT$l"; }
  done
}
for b in /bin/bash /usr/sbin/ip /usr/sbin/ipvsadm /usr/sbin/ipset \
         /usr/sbin/xtables-legacy-multi /usr/sbin/xtables-nft-multi; do
  [ -x "$b" ] || { echo "build-initramfs.sh: $b missing (apt-get install bash iproute2 ipvsadm ipset iptables)" >&2; exit 1; }
  rm -f "$ROOT/bin/$(basename "$b")"   # drop the busybox applet link of the same name
  copy_bin "$b"
done
for b in /usr/sbin/nft /usr/sbin/conntrack /usr/bin/strace; do   # optional (debugging, captures)
  if [ -x "$b" ]; then rm -f "$ROOT/bin/$(basename "$b")"; copy_bin "$b"
  else echo "build-initramfs.sh: optional $b not installed, left out" >&2; fi
done
# Rust test binaries need libgcc_s for unwinding
for l in /lib/x86_64-linux-gnu/libgcc_s.so.1 /lib/x86_64-linux-gnu/libm.so.6; do
  [ -e "$l" ] && cp -Ln "$l" "$ROOT$l"
done
cp -a /usr/lib/x86_64-linux-gnu/xtables "$ROOT/usr/lib/x86_64-linux-gnu/"
for x in "$ROOT"/usr/lib/x86_64-linux-gnu/xtables/*.so; do
  ldd "$x" | awk '/=>/ {print $3}' | while read -r l; do cp -Ln "$l" "$ROOT$l" 2>/dev/null || true; done
done
for fam in iptables ip6tables; do
  for sfx in "" -save -restore; do
    ln -s xtables-legacy-multi "$ROOT/usr/sbin/$fam-legacy$sfx"
    ln -s xtables-nft-multi    "$ROOT/usr/sbin/$fam-nft$sfx"
    ln -s xtables-nft-multi    "$ROOT/usr/sbin/$fam$sfx"   # default = nft, like Debian 12
  done
done
rm -f "$ROOT"/bin/{iptables,ip6tables}*
mkdir -p "$ROOT/etc/iproute2" && cp -r /etc/iproute2/* "$ROOT/etc/iproute2/" 2>/dev/null || true
echo 'root:x:0:0:root:/root:/bin/sh' > "$ROOT/etc/passwd"
echo 'root:x:0:' > "$ROOT/etc/group"
printf 'tcp 6 TCP\nudp 17 UDP\nicmp 1 ICMP\nsctp 132 SCTP\n' > "$ROOT/etc/protocols"
printf 'http 80/tcp\n' > "$ROOT/etc/services"

cp "$HERE/guest-init.sh" "$ROOT/init"
mkdir -p "$ROOT/guest"
cp "$HERE"/guest-*.sh "$ROOT/guest/"
chmod +x "$ROOT/init" "$ROOT"/guest/*.sh

(cd "$ROOT" && find . -print0 | cpio --null -o -H newc --quiet) > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "built $OUT ($(du -h "$OUT" | cut -f1), $(wc -l < "$ROOT/etc/modules.load") modules, kernel $KVER)"
