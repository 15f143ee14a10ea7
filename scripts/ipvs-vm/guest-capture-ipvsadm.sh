#!/bin/bash
# In the guest: records the generic-netlink traffic of ipvsadm (strace -xx of sendmsg and
# recvmsg) for the test vectors of dataplane/tests/ipvs_netlink_vectors.rs.
# Usage (from the host): scripts/run-ipvs-vm.sh --cmd 'bash /guest/guest-capture-ipvsadm.sh'
# Output: /mnt/host/out/<step>.strace, copied back to the host's target/ipvs-vm/share/out.
set -u
OUT=/mnt/host/out
mkdir -p "$OUT"
cap() { local name=$1; shift; strace -e trace=sendmsg,recvmsg -xx -s 65535 -o "$OUT/$name.strace" ipvsadm "$@"; }
cap add-service -A -t 10.96.0.10:80 -s rr
cap add-dest -a -t 10.96.0.10:80 -r 10.244.0.11:8080 -m -w 1
cap add-dest2 -a -t 10.96.0.10:80 -r 10.244.0.12:8080 -m -w 3
cap edit-dest -e -t 10.96.0.10:80 -r 10.244.0.11:8080 -m -w 0
cap edit-service -E -t 10.96.0.10:80 -s sh -p 10800
cap list -Ln
cap del-dest -d -t 10.96.0.10:80 -r 10.244.0.11:8080
cap add-service6 -A -u [fd00:96::53]:53 -s mh
cap add-dest6 -a -u [fd00:96::53]:53 -r [fd00:244::11]:5353 -m
cap list6 -Ln
cap del-service -D -t 10.96.0.10:80
cap flush -C
ls -l "$OUT"
