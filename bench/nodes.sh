#!/usr/bin/env bash
# bench/nodes.sh — how many nodes three managers hold (issue #16).
#
# Runs the ignored test of tests/bench_nodes.rs in release mode: three weft
# managers in namespace hosts and WEFT_BENCH_NODES (1000) simulated worker
# nodes in one process on a fourth host, each joined with its own key and
# certificate and keeping a real mutual-TLS session, heartbeats and status
# reports. Measures the joins, the time until every node is Ready, each
# manager's CPU and memory over an idle window, and a service with one
# replica per ten nodes until all run. Writes bench/results-nodes.md
# (BENCH_OUT; "-" prints instead).
#
# Knobs: WEFT_BENCH_NODES, WEFT_BENCH_NODE_REPLICAS, WEFT_BENCH_IDLE_WINDOW,
# WEFT_BENCH_HEARTBEAT (the heartbeat period, seconds, 1),
# WEFT_BENCH_NODE_NETWORK (1: the service on an overlay network),
# WEFT_BENCH_NODE_PUBLISH (1: the service publishes 8080 through the
# ingress network, which every node then takes part in),
# BENCH_SKIP_BUILD=1, BENCH_KEEP=1, BENCH_REV.
#
# Past 4,996 simulated nodes (the cluster's limit is 5,000 with the three
# managers and the one that joins to make a change), the managers run with
# WEFT_UNSUPPORTED_MAX_NODES (at most 20,000), to find where they break:
# nothing past 5,000 is supported.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${BENCH_OUT:-$ROOT/bench/results-nodes.md}

BENCH_TAG=bench-nodes
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
bench_tools ip:iproute2 nft:nftables
bench_build bench_nodes
bench_workdir nodes
# One file descriptor per simulated node's connection, and as many on the
# leader: the soft limit goes up to the hard one.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NODES=${WEFT_BENCH_NODES:-1000}
if [ "$NODES" -gt 4996 ]; then
  export WEFT_UNSUPPORTED_MAX_NODES=$((NODES + 4))
  echo "bench-nodes: $NODES nodes: the managers run with WEFT_UNSUPPORTED_MAX_NODES=$WEFT_UNSUPPORTED_MAX_NODES" >&2
fi

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
START=$(date -u '+%Y-%m-%d %H:%M UTC')
TMPDIR=$WORK WEFT_BENCH_OUT=$FRAG \
  cargo test --release -q --test bench_nodes -- --ignored --test-threads=1 --nocapture >&2
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

bench_results "Scale: nodes on three managers (issue #16)" \
  "Run of $START on $(nproc) vCPU ($(bench_cpu)), kernel $(uname -r), weft $(bench_rev) (release build). Load average $LOAD_BEFORE before, $LOAD_AFTER after."
