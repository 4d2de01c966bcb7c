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

BENCH_TAG=bench-wg
. "$ROOT/bench/lib.sh"

[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
bench_tools iperf3:iperf3 wireguard-go:wireguard-go wg:wireguard-tools nsenter:util-linux \
  nft:nftables busybox:busybox ip:iproute2 ss:iproute2
bench_build bench_wg
bench_workdir wg

# wireguard-go's control sockets are files, not namespace objects.
bench_extra_cleanup() {
  rm -f /var/run/wireguard/wggoa.sock /var/run/wireguard/wggob.sock 2>/dev/null || true
}

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
WGGO=$(dpkg-query -W -f '${Version}' wireguard-go 2>/dev/null || echo unknown)
bench_results "Encrypted overlay benchmark (issue 5)" \
  "Run of $START on $(nproc) vCPU ($(bench_cpu)), kernel $(uname -r), $(iperf3 --version | head -n 1 | cut -d' ' -f1-2), \
wireguard-go $WGGO. weft $(bench_rev) (release build). Load average $LOAD_BEFORE before, $LOAD_AFTER after: \
the machine is shared, so every path is measured in the same run, and the figures are medians. \
Produced by \`bench/wg.sh\` (tests/bench_wg.rs)."
