#!/usr/bin/env bash
# bench/overlay.sh — data-path and convergence benchmarks (issues 3 and 4).
#
# Runs the ignored tests of tests/bench_overlay.rs in release mode, one at a
# time, on real daemons in namespace hosts (underlays in 198.18.0.0/15 only,
# inside namespaces the tests create; the host namespace is never touched):
#
#   overlay_throughput   iperf3 task to task across two hosts, next to kernel
#                        VXLAN built by hand with ip/bridge and to raw veth
#   config_push_latency  network create + run → every node applied; run →
#                        the new task answers ping from another host
#   service_convergence  service create / scale → every replica answers
#                        through the VIP from another host; kill -9 of a
#                        worker → its endpoints leave every VIP table and DNS
#
# and assembles bench/results-overlay.md (run date, machine, commit, medians,
# every run). Everything the tests make lives under one work directory
# (TMPDIR for the tests); on exit — also on failure or interrupt — any
# namespace pin left under it is cleared (its processes killed, unmounted)
# and the directory removed.
#
# Knobs (environment): BENCH_ROUNDS (throughput rounds, 3), BENCH_LAT_ROUNDS
# (latency rounds, 5), BENCH_SECS (iperf3 seconds, 10), BENCH_DIAG (1: also
# the diagnostic VXLAN variants), BENCH_ONLY (a test-name filter, e.g.
# service_convergence), BENCH_OUT (results file; "-" prints instead),
# BENCH_SKIP_BUILD=1 (use the test binary already built), BENCH_KEEP=1
# (keep the fragments), BENCH_REV (the revision to name in the results).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

OUT=${BENCH_OUT:-$ROOT/bench/results-overlay.md}
ONLY=${BENCH_ONLY:-}

log() { printf '[bench-overlay] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"

# --- host tools ---------------------------------------------------------------
missing=""
for t in iperf3:iperf3 nsenter:util-linux nft:nftables busybox:busybox ip:iproute2 ss:iproute2; do
  bin=${t%%:*}; pkg=${t##*:}
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  log "installing:$missing"
  apt-get update -qq
  # iperf3's package asks whether to start a system daemon; we do not want one.
  echo "iperf3 iperf3/start_daemon boolean false" | debconf-set-selections 2>/dev/null || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

# --- build --------------------------------------------------------------------
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  log "building weft and the benchmark harness (release)"
  cargo test --release -q --test bench_overlay --no-run 2>&1 | grep -v '^\s*Executable' >&2 || true
fi

# --- work dir and teardown ----------------------------------------------------
WORK=$(mktemp -d /tmp/weft-bench-overlay.XXXXXX)
FRAG=$WORK/fragments
mkdir -p "$FRAG"

# Pins (nsfs mounts) left under $WORK by an interrupted test: kill what lives
# in them (by pid), unmount them. The tests' own guards normally leave none.
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
  if [ "${BENCH_KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- run ------------------------------------------------------------------------
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
START=$(date -u '+%Y-%m-%d %H:%M UTC')
log "running the benchmarks (work dir $WORK)"
TMPDIR=$WORK WEFT_BENCH_OUT=$FRAG \
  WEFT_BENCH_ROUNDS=${BENCH_ROUNDS:-3} WEFT_BENCH_LAT_ROUNDS=${BENCH_LAT_ROUNDS:-5} \
  WEFT_BENCH_SECS=${BENCH_SECS:-10} WEFT_BENCH_DIAG=${BENCH_DIAG:-1} \
  cargo test --release -q --test bench_overlay -- --ignored --test-threads=1 --nocapture $ONLY \
  2> >(tee "$WORK/test.log" >&2) >&2
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report -----------------------------------------------------------------------
CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
if [ -n "${BENCH_REV:-}" ]; then
  REV=$BENCH_REV # e.g. when run from an exported tree
else
  REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
  if [ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ]; then REV+=" + local changes"; fi
fi
{
  echo "# Overlay and service benchmarks (issues 3 and 4)"
  echo
  echo "Run of $START on $(nproc) vCPU ($CPU), kernel $(uname -r), $(iperf3 --version | head -n 1 | cut -d' ' -f1-2)." \
    "weft $REV (release build). Load average $LOAD_BEFORE before, $LOAD_AFTER after: the machine is shared," \
    "so every benchmark measures its own reference in the same run, and the figures are medians." \
    "Produced by \`bench/overlay.sh\` (tests/bench_overlay.rs)."
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
