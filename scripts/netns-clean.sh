#!/usr/bin/env bash
# Removes what killed or crashed netns tests left behind (run as root, not while tests run):
#   - network namespaces named kp<digits>... (the test rigs' and netns::unique_prefix's
#     kp<pid>x<n>-...) and kpdemo-... (scripts/demo.sh): the processes inside are killed
#     (TERM, then KILL), then the namespace is deleted;
#   - scratch directories /tmp/kp<pid>x<n> (manifests and logs of a rig or cluster).
# Prints what it removed; running it twice is harmless.
set -euo pipefail

if [[ $EUID -ne 0 ]]; then
    echo "netns-clean.sh: needs root" >&2
    exit 1
fi

ours() { [[ $1 =~ ^kp[0-9] || $1 =~ ^kpdemo- ]]; }

removed=0
mapfile -t namespaces < <(ip netns list 2>/dev/null | awk '{print $1}')
for ns in "${namespaces[@]}"; do
    ours "$ns" || continue
    mapfile -t pids < <(ip netns pids "$ns" 2>/dev/null || true)
    if ((${#pids[@]})); then
        echo "killing ${pids[*]} in $ns"
        kill -TERM "${pids[@]}" 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            mapfile -t pids < <(ip netns pids "$ns" 2>/dev/null || true)
            ((${#pids[@]})) || break
            sleep 0.1
        done
        if ((${#pids[@]})); then
            kill -KILL "${pids[@]}" 2>/dev/null || true
        fi
    fi
    if ip netns del "$ns" 2>/dev/null || rm -f "/run/netns/$ns"; then
        echo "deleted namespace $ns"
        removed=$((removed + 1))
    fi
done

shopt -s nullglob
for dir in /tmp/kp[0-9]*; do
    name=${dir#/tmp/}
    [[ -d $dir && $name =~ ^kp[0-9]+x[0-9]+$ ]] || continue
    rm -rf -- "$dir"
    echo "removed $dir"
    removed=$((removed + 1))
done

echo "netns-clean.sh: removed $removed item(s)"
