#!/usr/bin/env bash
# The newcomer's demo: programs examples/ into a throwaway node namespace with kproxy and
# shows connections to a ClusterIP (from a pod) and to a NodePort (from outside) reaching
# backend pods. Leaves nothing behind.
#
#   external (192.168.50.1) --- node-a (192.168.50.2, bridge cbr0 10.244.1.1/24)
#                                  |-- web-0  10.244.1.10:8080
#                                  |-- web-1  10.244.1.11:8080
#                                  `-- client 10.244.1.100
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

P=kpdemo
NODE=$P-node EXT=$P-ext CLIENT=$P-client
teardown() {
    for ns in $P-web0 $P-web1 $CLIENT $EXT $NODE; do
        if ip netns list | grep -qw "$ns"; then
            ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
            ip netns del "$ns"
        fi
    done
}
trap teardown EXIT
teardown

echo "==> building kproxy"
cargo build -q -p kproxy
KPROXY=$PWD/target/debug/kproxy

echo "==> creating node-a, two web pods, a client pod and an external client"
ip netns add $NODE
ip -n $NODE link set lo up
ip netns exec $NODE sysctl -qw net.ipv4.ip_forward=1
ip -n $NODE link add cbr0 type bridge
ip -n $NODE addr add 10.244.1.1/24 dev cbr0
ip -n $NODE link set cbr0 up
ip netns exec $NODE sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true
ip netns add $EXT
ip -n $NODE link add eth0 type veth peer name eth0 netns $EXT
ip -n $NODE addr add 192.168.50.2/24 dev eth0 && ip -n $NODE link set eth0 up
ip -n $EXT addr add 192.168.50.1/24 dev eth0 && ip -n $EXT link set eth0 up
pod() { # name ip
    ip netns add "$P-$1"
    ip -n "$P-$1" link set lo up
    ip -n $NODE link add "v$1" type veth peer name eth0 netns "$P-$1"
    ip -n $NODE link set "v$1" master cbr0 up
    ip -n "$P-$1" addr add "$2/24" dev eth0
    ip -n "$P-$1" link set eth0 up
    ip -n "$P-$1" route add default via 10.244.1.1
}
pod web0 10.244.1.10
pod web1 10.244.1.11
pod client 10.244.1.100
for i in 0 1; do
    ip netns exec $P-web$i socat TCP-LISTEN:8080,fork,reuseaddr \
        SYSTEM:"echo web-$i answered \$SOCAT_PEERADDR" &
done
sleep 0.3

echo "==> kproxy --once (iptables mode) in node-a"
ip netns exec $NODE "$KPROXY" --proxy-mode iptables --manifests examples \
    --hostname-override node-a --cluster-cidr 10.244.0.0/16 --once

echo "==> KUBE-SERVICES in node-a's nat table"
ip netns exec $NODE iptables -t nat -L KUBE-SERVICES -n | sed 's/^/    /'

echo "==> client pod -> ClusterIP 10.96.0.10:80 (service demo/web), 6 connections"
for _ in 1 2 3 4 5 6; do
    echo "    $(ip netns exec $CLIENT socat -T2 - TCP:10.96.0.10:80,connect-timeout=2)"
done
echo "==> external client -> NodePort 192.168.50.2:30080 (masqueraded to the node)"
echo "    $(ip netns exec $EXT socat -T2 - TCP:192.168.50.2:30080,connect-timeout=2)"
echo "==> done: cleaning up"
