#!/usr/bin/env bash
# bench/idle.sh — what an idle node costs per task (issue #16), weft against
# Docker in the same run.
#
# Runs the ignored test of tests/bench_idle.rs in release mode: a lab of a
# manager and a worker with WEFT_BENCH_IDLE_TASKS (250) idle replicas on the
# worker, then one dockerd (Debian's docker.io) with as many idle busybox
# containers, each in namespace hosts the test creates; the CPU time of
# everything in the node's host namespace (children included) over
# WEFT_BENCH_IDLE_ROUNDS (3) windows of WEFT_BENCH_IDLE_WINDOW (20) s. Also
# how long the worker's data plane passes take after three changes: one more
# replica, a new network with one task, and a VIP added to that one task's
# namespace (the "change that touches one task namespace").
# Writes bench/results-idle.md (BENCH_OUT; "-" prints instead).
#
# Knobs: the WEFT_BENCH_IDLE_* above, WEFT_BENCH_IDLE_LOG (the daemons' log
# filter; see tests/bench_idle.rs), WEFT_BENCH_KEEP_LOGS=DIR (keeps the
# worker's log there), BENCH_DOCKER=0 (weft only),
# BENCH_SKIP_BUILD=1, BENCH_KEEP=1, BENCH_REV.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${BENCH_OUT:-$ROOT/bench/results-idle.md}

BENCH_TAG=bench-idle
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
bench_tools nft:nftables ip:iproute2 umoci:umoci skopeo:skopeo busybox:busybox-static
if [ "${BENCH_DOCKER:-1}" != 0 ]; then
  bench_tools dockerd:docker.io containerd:containerd runc:runc
  [ -x /usr/bin/docker ] || bench_tools /usr/bin/docker:docker.io
fi
bench_build bench_idle
bench_workdir idle

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
START=$(date -u '+%Y-%m-%d %H:%M UTC')
TMPDIR=$WORK WEFT_BENCH_OUT=$FRAG \
  cargo test --release -q --test bench_idle -- --ignored --test-threads=1 --nocapture >&2
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

bench_results "Idle cost per task (issue #16)" \
  "Run of $START on $(nproc) vCPU ($(bench_cpu)), kernel $(uname -r), weft $(bench_rev) (release build), Docker $(dockerd --version 2>/dev/null | cut -d' ' -f3 | tr -d , || echo -). Load average $LOAD_BEFORE before, $LOAD_AFTER after."
