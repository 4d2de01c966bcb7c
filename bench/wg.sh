#!/usr/bin/env bash
# bench/wg.sh — encrypted overlay throughput benchmark (issue 5).
#
# Runs the ignored test of tests/bench_wg.rs in release mode: a real 2-node
# cluster (daemons in namespace hosts on an underlay in 198.18.0.0/15, all
# inside namespaces the test creates; the host namespace is never touched)
# with an `-o encrypted` network and a task on each host, and iperf3 TCP
# between the tasks, next to references between the same two host
# namespaces in the same run:
#
#   raw            the underlay (veth → bridge → veth)
#   wireguard-go   Debian's wireguard-go between the two host namespaces
#   weft           weft's encrypted overlay, batched WireGuard device
#   weft-stock     the same on a second cluster running boringtun's stock
#                  device (WEFT_WG_DEVICE=stock), for reference
#
# with CPU (whole machine, /proc/stat) per run, and writes
# bench/results-wg.md (run date, machine, commit, medians, ratios, every
# run). Everything lives under one work directory (TMPDIR for the test);
# on exit — also on failure or interrupt — any namespace pin left under it
# is cleared (its processes killed, unmounted), wireguard-go instances the
# test started are gone with their namespaces, and the directory removed.
#
# Knobs (environment): BENCH_ROUNDS (3), BENCH_SECS (iperf3 seconds, 10),
# BENCH_OUT (results file; "-" prints instead), BENCH_SKIP_BUILD=1,
# BENCH_KEEP=1 (keep the work dir), BENCH_REV (revision to name).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

OUT=${BENCH_OUT:-$ROOT/bench/results-wg.md}

log() { printf '[bench-wg] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"

# --- host tools ---------------------------------------------------------------
missing=""
for t in iperf3:iperf3 wireguard-go:wireguard-go wg:wireguard-tools nsenter:util-linux \
         nft:nftables busybox:busybox ip:iproute2 ss:iproute2; do
  bin=${t%%:*}; pkg=${t##*:}
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  log "installing:$missing"
  apt-get update -qq
  echo "iperf3 iperf3/start_daemon boolean false" | debconf-set-selections 2>/dev/null || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

# --- build --------------------------------------------------------------------
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  log "building weft and the benchmark harness (release)"
  cargo test --release -q --test bench_wg --no-run 2>&1 | grep -v '^\s*Executable' >&2 || true
fi

# --- work dir and teardown ----------------------------------------------------
WORK=$(mktemp -d /tmp/weft-bench-wg.XXXXXX)
FRAG=$WORK/fragments
mkdir -p "$FRAG"

# Pins (nsfs mounts) left under $WORK by an interrupted test: kill what lives
# in them (by pid: daemons, iperf3, wireguard-go), unmount them.
clear_pins() {
  local pins pin ino pid
  pins=$(awk -v w="$WORK/" '{ for (i = 7; i < NF; i++) if ($i == "-") {
      if ($(i + 1) == "nsfs" && index($5, w) == 1) print $5; break } }' /proc/self/mountinfo | sort -ru)
  [ -n "$pins" ] || return 0
  for pin in $pins; do
    ino=$(stat -L -c %i "$pin" 2>/dev/null) || continue
    for pid in $(ls /proc | grep -E '^[0-9]+$'); do
      [ "$(stat -L -c %i "/proc/$pid/ns/net" 2>/dev/null)" = "$ino" ] && kill -KILL "$pid" 2>/dev/null || true
    done
  done
  for pin in $pins; do umount -l "$pin" 2>/dev/null || true; done
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  clear_pins
  # wireguard-go's control sockets are files, not namespace objects.
  rm -f /var/run/wireguard/wggoa.sock /var/run/wireguard/wggob.sock 2>/dev/null || true
  if [ "${BENCH_KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- run ------------------------------------------------------------------------
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
START=$(date -u '+%Y-%m-%d %H:%M UTC')
log "running the benchmark (work dir $WORK)"
TMPDIR=$WORK WEFT_BENCH_OUT=$FRAG \
  WEFT_BENCH_ROUNDS=${BENCH_ROUNDS:-3} WEFT_BENCH_SECS=${BENCH_SECS:-10} \
  cargo test --release -q --test bench_wg -- --ignored --test-threads=1 --nocapture \
  2> >(tee "$WORK/test.log" >&2) >&2
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report -----------------------------------------------------------------------
CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
if [ -n "${BENCH_REV:-}" ]; then
  REV=$BENCH_REV
else
  REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
  if [ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ]; then REV+=" + local changes"; fi
fi
WGGO=$(dpkg-query -W -f '${Version}' wireguard-go 2>/dev/null || echo unknown)
{
  echo "# Encrypted overlay benchmark (issue 5)"
  echo
  echo "Run of $START on $(nproc) vCPU ($CPU), kernel $(uname -r), $(iperf3 --version | head -n 1 | cut -d' ' -f1-2)," \
    "wireguard-go $WGGO. weft $REV (release build). Load average $LOAD_BEFORE before, $LOAD_AFTER after:" \
    "the machine is shared, so every path is measured in the same run, and the figures are medians." \
    "Produced by \`bench/wg.sh\` (tests/bench_wg.rs)."
  echo
  for f in "$FRAG"/*.md; do
    [ -f "$f" ] && cat "$f"
  done
} >"$WORK/results.md"

if [ "$OUT" = - ]; then
  cat "$WORK/results.md"
else
  cp "$WORK/results.md" "$OUT"
  log "wrote $OUT"
fi
