#!/bin/bash
# /init (PID 1) of the IPVS guest. bash, not busybox ash: Debian's busybox-static runs its
# own applets (e.g. a limited "ip") before searching PATH.
#
# Loads the modules, mounts the host share (9p tag host0) on /mnt/host, runs
# /mnt/host/run.sh (written by scripts/run-ipvs-vm.sh), prints "IPVSVM-RESULT: rc=N",
# writes N to /mnt/host/guest-rc and powers off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /run/netns && mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mkdir -p /run/netns
mount -t tmpfs tmpfs /tmp
up() { cut -d' ' -f1 /proc/uptime; }
arg() { for w in $(cat /proc/cmdline); do case $w in "$1"=*) echo "${w#*=}";; esac; done; }
echo "IPVSVM: init started (guest uptime $(up)s, kernel $(uname -r))"

ok=0; bad=0
while read -r m; do
  if insmod "$m" 2>/tmp/insmod.err; then ok=$((ok+1))
  else bad=$((bad+1)); echo "IPVSVM: insmod $m failed: $(cat /tmp/insmod.err)"; fi
done < /etc/modules.load
echo "IPVSVM: modules loaded ok=$ok failed=$bad (uptime $(up)s)"
ip link set lo up

rc=97
if mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 host0 /mnt/host; then
  if [ -f /mnt/host/run.sh ]; then
    echo "IPVSVM: running /mnt/host/run.sh (uptime $(up)s)"
    (cd /mnt/host && HOME=/tmp bash /mnt/host/run.sh); rc=$?
  else
    echo "IPVSVM: no /mnt/host/run.sh"; rc=98
  fi
else
  echo "IPVSVM: 9p mount of host0 FAILED"
fi
echo "IPVSVM-RESULT: rc=$rc (guest uptime $(up)s)"
grep -q " /mnt/host 9p " /proc/mounts && echo "$rc" > /mnt/host/guest-rc
if [ "$(arg ipvsvm_shell)" = 1 ]; then
  setsid cttyhack bash
fi
sync
poweroff -f
