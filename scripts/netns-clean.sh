#!/usr/bin/env bash
# Removes what killed or crashed netns tests left behind (run as root):
#   - network namespaces named kp<pid>x<n>-... (the test rigs' and netns::unique_prefix's)
#     whose creating process <pid> is gone, and kpdemo-... (scripts/demo.sh) unless --keep-demo:
#     the processes inside are killed (TERM, then KILL), then the namespace is deleted;
#   - scratch directories /tmp/kp<pid>x<n> whose creator is gone.
# Namespaces of a live test process are left alone, so it is safe while tests run.
# Prints what it removed; running it twice is harmless.
set -euo pipefail

if [[ $EUID -ne 0 ]]; then
    echo "netns-clean.sh: needs root" >&2
    exit 1
fi

# A name of ours whose creator is gone: kp<pid>x... with no process <pid>, or kpdemo-.
ours() {
    if [[ $1 =~ ^kp([0-9]+)x ]]; then
        [[ ! -d /proc/${BASH_REMATCH[1]} ]]
    else
        [[ $1 =~ ^kpdemo- ]]
    fi
}

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
    [[ -d $dir && $name =~ ^kp[0-9]+x[0-9]+$ ]] && ours "$name" || continue
    rm -rf -- "$dir"
    echo "removed $dir"
    removed=$((removed + 1))
done

echo "netns-clean.sh: removed $removed item(s)"
