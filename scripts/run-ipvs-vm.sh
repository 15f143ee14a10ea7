#!/bin/bash
# Runs kproxy's IPVS tests inside a qemu (TCG) guest booting Debian's stock 6.1 kernel,
# because the host kernel has no IP_VS (see ../../shared/IPVS-VM.md for the facts).
#
#   scripts/run-ipvs-vm.sh                      # build + run the dataplane ipvs_* tests
#                                               #   and the rig's e2e suite in IPVS mode
#   scripts/run-ipvs-vm.sh --test ipvs_guest    # only these dataplane test targets
#   scripts/run-ipvs-vm.sh --e2e 'ipvs::udp'    # only the e2e tests matching a filter
#   scripts/run-ipvs-vm.sh --cmd 'ipvsadm -Ln'  # extra shell command(s) run in the guest
#   scripts/run-ipvs-vm.sh --run 'target/release/deps/sync-X --modes ipvs'  # a host program
#   scripts/run-ipvs-vm.sh --shell              # interactive shell afterwards (Ctrl-A x)
#
# The kernel and initramfs are built once and cached under target/ipvs-vm/ (rebuilt when
# scripts/ipvs-vm/* changes). The test binaries (and target/debug/kproxy when it exists)
# are shared with the guest over 9p (target/ipvs-vm/share -> /mnt/host). The guest runs
# share/run.sh and the script exits with its status. Marker lines on the console:
# "IPVSVM-TEST: <name> rc=N" per binary, "IPVSVM-RESULT: rc=N" at the end.
#
# Options: --test NAME (repeatable; default: every dataplane/tests/ipvs_*.rs), --e2e FILTER
#   (netns-tests' e2e target, built with --features ipvs-guest, run with FILTER; default
#   when no --test/--bin/--cmd is given: "ipvs"), --filter F (a test name filter passed to
#   every other test binary), --bin PATH
#   (repeatable: an extra host test binary to run), --run 'PATH ARGS' (repeatable: a host
#   program copied into the guest and run with ARGS), --cmd LINE (repeatable), --env NAME=VALUE
#   (repeatable: exported in the guest), --no-build,
#   --timeout SECONDS (default 1200), --smp N (2), --mem MB (1024), --shell, --verbose.
# Needs: qemu-system-x86 cpio xz-utils busybox-static kmod binutils ipvsadm ipset conntrack
#   iproute2 iptables nftables strace (apt package names).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${IPVS_VM_CACHE:-$ROOT/target/ipvs-vm}
SHARE=$CACHE/share
TIMEOUT=1200 SMP=2 MEM=1024 SHELL_AFTER=0 BUILD=1 QUIET=quiet
TESTS=() BINS=() CMDS=() RUNS=() ENVS=() FILTER="" E2E=""
# Guest waits for kproxy are stretched by this factor (qemu TCG is ~10x slower).
TIME_SCALE=${KPROXY_TEST_TIME_SCALE:-12}
while [ $# -gt 0 ]; do
  case $1 in
    --test) TESTS+=("$2"); shift;;
    --bin) BINS+=("$2"); shift;;
    --cmd) CMDS+=("$2"); shift;;
    --run) RUNS+=("$2"); shift;;
    --filter) FILTER="$2"; shift;;
    --e2e) E2E="$2"; shift;;
    --env) ENVS+=("$2"); shift;;
    --no-build) BUILD=0;;
    --timeout) TIMEOUT=$2; shift;;
    --smp) SMP=$2; shift;;
    --mem) MEM=$2; shift;;
    --shell) SHELL_AFTER=1;;
    --verbose) QUIET="";;
    -h|--help) sed -n '2,29p' "$0"; exit 0;;
    *) echo "run-ipvs-vm.sh: unknown option $1" >&2; exit 2;;
  esac; shift
done
t_start=${EPOCHREALTIME/./}
elapsed() { local t=$(( ${EPOCHREALTIME/./} - t_start )); printf '%d.%03d' $((t/1000000)) $(((t/1000)%1000)); }

# 1. kernel + initramfs (cached)
INITRD=$CACHE/initramfs.cpio
if [ ! -s "$INITRD" ] || [ -n "$(find "$ROOT/scripts/ipvs-vm" -newer "$INITRD" -type f)" ]; then
  "$ROOT/scripts/ipvs-vm/build-initramfs.sh" "$CACHE" || { echo "run-ipvs-vm.sh: guest build failed" >&2; exit 1; }
fi
KERNEL=$(ls "$CACHE"/vmlinux-* 2>/dev/null | head -n1)
[ -s "$KERNEL" ] || { echo "run-ipvs-vm.sh: no vmlinux in $CACHE" >&2; exit 1; }

# 2. test binaries
if [ ${#TESTS[@]} -eq 0 ] && [ ${#BINS[@]} -eq 0 ] && [ ${#CMDS[@]} -eq 0 ] && [ ${#RUNS[@]} -eq 0 ] \
   && [ -z "$E2E" ]; then
  for f in "$ROOT"/dataplane/tests/ipvs_*.rs; do [ -e "$f" ] && TESTS+=("$(basename "$f" .rs)"); done
  E2E=ipvs
fi
test_exe() { grep '"test":true' | grep -o '"executable":"[^"]*"' | cut -d'"' -f4; }
if [ $BUILD = 1 ]; then
  # The same feature set as test.sh's build, so nothing is rebuilt there.
  (cd "$ROOT" && cargo build --workspace --all-targets) || { echo "run-ipvs-vm.sh: cargo build of kproxy failed" >&2; exit 1; }
fi
E2E_BIN=""
if [ -n "$E2E" ]; then
  offline=(); [ $BUILD = 1 ] || offline=(--offline --frozen)
  E2E_BIN=$(cd "$ROOT" && cargo test -p kproxy-netns-tests --features ipvs-guest --test e2e \
    --no-run "${offline[@]}" --message-format=json | grep '"kind":\["test"\]' | test_exe | head -n1)
  [ -n "$E2E_BIN" ] || { echo "run-ipvs-vm.sh: cargo build of the e2e suite failed" >&2; exit 1; }
fi
if [ ${#TESTS[@]} -gt 0 ]; then
  args=(); for t in "${TESTS[@]}"; do args+=(--test "$t"); done
  if [ $BUILD = 1 ]; then
    json=$(cd "$ROOT" && cargo test -p kproxy-dataplane --features ipvs-guest "${args[@]}" --no-run --message-format=json) \
      || { echo "run-ipvs-vm.sh: cargo build of the tests failed" >&2; exit 1; }
  else
    json=$(cd "$ROOT" && cargo test -p kproxy-dataplane --features ipvs-guest "${args[@]}" --no-run --offline --frozen --message-format=json 2>/dev/null)
  fi
  while read -r exe; do [ -n "$exe" ] && BINS+=("$exe"); done < <(printf '%s\n' "$json" | test_exe)
fi

# 3. the share: binaries, their libraries, run.sh
rm -rf "$SHARE"; mkdir -p "$SHARE/bin" "$SHARE/lib" "$SHARE/out"
copy_libs() { ldd "$1" 2>/dev/null | awk '/=>/ {print $3}' | while read -r l; do [ -e "$l" ] && cp -Ln "$l" "$SHARE/lib/" 2>/dev/null; done; }
[ -x "$ROOT/target/debug/kproxy" ] && { cp "$ROOT/target/debug/kproxy" "$SHARE/bin/kproxy"; copy_libs "$SHARE/bin/kproxy"; }
{
  echo "export PATH=/mnt/host/bin:\$PATH LD_LIBRARY_PATH=/mnt/host/lib KPROXY_IPVS_VM=1 RUST_BACKTRACE=1 KPROXY_TEST_TIME_SCALE=$TIME_SCALE"
  echo '[ -x /mnt/host/bin/kproxy ] && export KPROXY_BIN=/mnt/host/bin/kproxy'
  echo 'rc=0; up() { cut -d" " -f1 /proc/uptime; }'
  for e in "${ENVS[@]}"; do printf 'export %q\n' "$e"; done
} > "$SHARE/run.sh"
add_test_bin() {   # PATH FILTER...
  local b=$1 name; shift
  name=$(basename "$b"); name=${name%-[0-9a-f]*[0-9a-f]}
  cp "$b" "$SHARE/bin/$name"; copy_libs "$b"
  cat >> "$SHARE/run.sh" <<EOS
echo "IPVSVM-TEST: $name start (uptime \$(up)s)"
/mnt/host/bin/$name --test-threads=1 --nocapture $*; r=\$?
echo "IPVSVM-TEST: $name rc=\$r (uptime \$(up)s)"; [ \$r -ne 0 ] && rc=\$r
EOS
}
for b in "${BINS[@]}"; do add_test_bin "$b" ${FILTER:-}; done
[ -n "$E2E_BIN" ] && add_test_bin "$E2E_BIN" "$E2E"
for r in "${RUNS[@]}"; do
  read -r path rargs <<< "$r"
  [ -x "$path" ] || { echo "run-ipvs-vm.sh: --run $path: not an executable" >&2; exit 2; }
  cp "$path" "$SHARE/bin/"; copy_libs "$path"
  CMDS+=("/mnt/host/bin/$(basename "$path") $rargs")
done
for c in "${CMDS[@]}"; do
  printf 'echo "IPVSVM-CMD: "%q\n(%s); r=$?; [ $r -ne 0 ] && rc=$r\n' "$c" "$c" >> "$SHARE/run.sh"
done
echo 'exit $rc' >> "$SHARE/run.sh"
echo "run-ipvs-vm.sh: prepared in $(elapsed) s: ${BINS[*]##*/} ${E2E_BIN##*/} ${CMDS[*]}"

# 4. boot
APPEND="console=ttyS0 $QUIET panic=-1 mitigations=off"
[ $SHELL_AFTER = 1 ] && APPEND+=" ipvsvm_shell=1"
# shellcheck disable=SC2054 # qemu's own comma-separated option values, not array items
QEMU=(qemu-system-x86_64 -accel tcg,thread=multi -cpu max -smp "$SMP" -m "$MEM" -nographic
      -no-reboot -nic none -kernel "$KERNEL" -initrd "$INITRD" -append "$APPEND"
      -virtfs "local,path=$SHARE,mount_tag=host0,security_model=none,id=host0")
[ $SHELL_AFTER = 1 ] && exec "${QEMU[@]}"
LOG=$CACHE/last-run.log
t_boot=${EPOCHREALTIME/./}
timeout "$TIMEOUT" "${QEMU[@]}" < /dev/null 2>&1 | while IFS= read -r l; do
  l=${l//$'\r'/}; l=${l//$'\e'[?7l/}; l=${l//$'\e'[2J/}; l=${l//$'\e'[0m/}
  t=$(( ${EPOCHREALTIME/./} - t_boot )); printf '[%4d.%03ds] %s\n' $((t/1000000)) $(((t/1000)%1000)) "$l"
done | tee "$LOG"
qrc=${PIPESTATUS[0]}
t=$(( ${EPOCHREALTIME/./} - t_boot ))
rc=$(cat "$SHARE/guest-rc" 2>/dev/null || sed -n 's/.*IPVSVM-RESULT: rc=\([0-9]*\).*/\1/p' "$LOG" | tail -n1)
[ $qrc -eq 124 ] && echo "run-ipvs-vm.sh: guest timed out after $TIMEOUT s" >&2
printf 'run-ipvs-vm.sh: qemu exit=%s guest rc=%s, boot+run %d.%03d s (total %s s)\n' \
  "$qrc" "${rc:-none}" $((t/1000000)) $(((t/1000)%1000)) "$(elapsed)"
exit "${rc:-99}"
