#!/usr/bin/env bash
# bench/overlay.sh — data-path and convergence benchmarks (issues 3, 4 and 18).
#
# Runs the ignored tests of tests/bench_overlay.rs in release mode, one at a
# time, on real daemons in namespace hosts (underlays in 198.18.0.0/15 only,
# inside namespaces the tests create; the host namespace is never touched):
#
#   overlay_throughput   iperf3 task to task across two hosts, next to kernel
#                        VXLAN built by hand with ip/bridge and to raw veth
#   overlay_throughput_ipv6
#                        the same on a dual-stack network: iperf3 over IPv6
#                        and over IPv4 between the same two tasks, next to a
#                        hand-built kernel VXLAN carrying IPv6 (and IPv4)
#                        inner traffic (issue 18)
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
# service_convergence; a substring, so overlay_throughput selects both
# throughput benchmarks), BENCH_OUT (results file; "-" prints instead),
# BENCH_SKIP_BUILD=1 (use the test binary already built), BENCH_KEEP=1
# (keep the fragments), BENCH_REV (the revision to name in the results).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

OUT=${BENCH_OUT:-$ROOT/bench/results-overlay.md}
ONLY=${BENCH_ONLY:-}

BENCH_TAG=bench-overlay
. "$ROOT/bench/lib.sh"

[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
bench_tools iperf3:iperf3 nsenter:util-linux nft:nftables busybox:busybox ip:iproute2 ss:iproute2
bench_build bench_overlay
bench_workdir overlay

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
bench_results "Overlay and service benchmarks (issues 3, 4 and 18)" \
  "Run of $START on $(nproc) vCPU ($(bench_cpu)), kernel $(uname -r), $(iperf3 --version | head -n 1 | cut -d' ' -f1-2). \
weft $(bench_rev) (release build). Load average $LOAD_BEFORE before, $LOAD_AFTER after: the machine is shared, \
so every benchmark measures its own reference in the same run, and the figures are medians. \
Produced by \`bench/overlay.sh\` (tests/bench_overlay.rs)."
