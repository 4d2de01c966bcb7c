#!/usr/bin/env bash
# bench/cni.sh — the CNI plugin's benchmark (issue #15).
#
# Runs the ignored test of tests/bench_cni.rs in release mode: a 2-node
# cluster (daemons in namespace hosts on an underlay in 198.18.0.0/15, all
# inside namespaces the test creates), an attachable overlay, and in the
# same run, alternating:
#
#   attach       a CNI ADD (the plugin run as a runtime runs it) to the
#                container answering TCP from a task on the other host,
#                against `weft run -d --network` of a task to the same answer
#   throughput   iperf3 (1 stream) from a task on the other host to a CNI
#                container and to a weft task beside it (target ≥ 0.95×)
#   run          `podman run -d` (Debian's podman, CNI backend, weft's plugin)
#                and `docker run -d --network` (Debian's dockerd, weft's
#                network plugin) of a busybox httpd to it answering TCP from
#                a task on the other host, against `docker run -d --network`
#                of the same on a Docker Swarm attachable overlay (two dockerd
#                in namespace hosts, tests/common/swarm.rs) to it answering
#                from a container on the other host; and iperf3 (1 stream)
#                from a task on the other host to a Docker container on weft
#                and to a weft task beside it (target ≥ 0.95×)
#
# and writes bench/results-cni.md. Everything lives under one work
# directory (TMPDIR for the test), cleared on exit, failure or interrupt.
#
# Knobs (environment): BENCH_LAT_ROUNDS (5), BENCH_ROUNDS (3), BENCH_SECS
# (iperf3 seconds, 10), BENCH_OUT (results file; "-" prints instead),
# BENCH_SKIP_BUILD=1, BENCH_KEEP=1 (keep the work dir).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

OUT=${BENCH_OUT:-$ROOT/bench/results-cni.md}

BENCH_TAG=bench-cni
. "$ROOT/bench/lib.sh"

[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
bench_tools iperf3:iperf3 nsenter:util-linux busybox:busybox ip:iproute2 ss:iproute2 \
  podman:podman conmon:conmon dockerd:docker.io umoci:umoci skopeo:skopeo
bench_build bench_cni
bench_workdir cni

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
START=$(date -u '+%Y-%m-%d %H:%M UTC')
log "running the benchmark (work dir $WORK)"
TMPDIR=$WORK WEFT_BENCH_OUT=$FRAG \
  WEFT_BENCH_LAT_ROUNDS=${BENCH_LAT_ROUNDS:-5} WEFT_BENCH_ROUNDS=${BENCH_ROUNDS:-3} \
  WEFT_BENCH_SECS=${BENCH_SECS:-10} \
  cargo test --release -q --test bench_cni -- --ignored --test-threads=1 --nocapture \
  2> >(tee "$WORK/test.log" >&2) >&2
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

bench_results "CNI and Docker plugin benchmark (issue #15)" \
  "Run of $START on $(nproc) vCPU ($(bench_cpu)), kernel $(uname -r), $(iperf3 --version | head -n 1 | cut -d' ' -f1-2). \
weft $(bench_rev) (release build). Load average $LOAD_BEFORE before, $LOAD_AFTER after: the machine is \
shared, so both sides are measured in the same run (task and CNI container alternating; the podman rounds, then \
the Docker-on-weft rounds, then the Swarm rounds on a swarm of its own), and the figures are medians. The task's attach time includes starting its process (busybox httpd); the CNI container's server listens before ADD. \
Produced by \`bench/cni.sh\` (tests/bench_cni.rs)."
