#!/usr/bin/env bash
# bench/run.sh — the control-plane benchmark (`make bench`).
#
# Committed writes per second and p50/p99 commit latency of a 3-manager weft
# group next to a 3-member etcd cluster, in the same run, on the same disk,
# with fsync on for both (weft's Raft log commits are durable; etcd's default).
# 1 and 64 concurrent clients, several rounds alternating the systems; the
# medians go into BENCHMARKS.md (between markers; the rest of the file stays).
#
# Everything runs on loopback: weft managers on 127.0.0.1-3, etcd members on
# 127.0.0.11-13. Every process started here is stopped on exit, failure or
# interrupt, and the work directory is removed.
#
# Knobs (environment): BENCH_ROUNDS (3), BENCH_WARMUP (2 s), BENCH_DURATION
# (10 s), BENCH_CLIENTS ("1 64"), BENCH_CHANNELS (4 HTTP/2 connections shared
# by the clients), BENCH_TARGET (leader | all), BENCH_TMPDIR (/var/tmp; must
# be a real disk, not tmpfs), BENCH_OUT (BENCHMARKS.md; "-" prints instead),
# BENCH_LOG_AB (1: also a weft group with its Raft log in redb, the log
# backend A/B; 0 skips it), BENCH_READS (1: also linearizable reads, weft
# `GetNode` against etcd `KV.Range`, clients spread over all members; 0
# skips them),
# BENCH_KEEP=1 keeps the work directory and its logs, BENCH_SKIP_BUILD=1 uses
# the release binaries already built.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

ROUNDS=${BENCH_ROUNDS:-3}
WARMUP=${BENCH_WARMUP:-2}
DURATION=${BENCH_DURATION:-10}
CLIENTS=${BENCH_CLIENTS:-"1 64"}
CHANNELS=${BENCH_CHANNELS:-4}
TARGET=${BENCH_TARGET:-leader}
TMPBASE=${BENCH_TMPDIR:-/var/tmp}
OUT=${BENCH_OUT:-$ROOT/BENCHMARKS.md}
KEEP=${BENCH_KEEP:-0}
LOG_AB=${BENCH_LOG_AB:-1}
READS=${BENCH_READS:-1}

WEFT_IPS=(127.0.0.1 127.0.0.2 127.0.0.3)
REDB_IPS=(127.0.0.4 127.0.0.5 127.0.0.6)
WEFT_PORT=47377
ETCD_IPS=(127.0.0.11 127.0.0.12 127.0.0.13)
ETCD_CLIENT_PORT=47379
ETCD_PEER_PORT=47380

log() { printf '[bench] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- host packages ----------------------------------------------------------
if ! command -v etcd >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || die "etcd is missing: run as root, or apt-get install etcd-server"
  log "installing etcd-server"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
  # Debian enables (and under systemd starts) a default etcd on :2379; the
  # benchmark runs its own members and wants nothing else competing.
  if [ -d /run/systemd/system ]; then systemctl disable --now etcd >/dev/null 2>&1 || true; fi
fi

# --- build ------------------------------------------------------------------
if [ "${BENCH_SKIP_BUILD:-0}" = 1 ]; then
  log "BENCH_SKIP_BUILD=1: using the release binaries already built"
else
  log "building weft and the load generator (release)"
  cargo build --release -q -p weft -p weft-bench
fi
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
WEFT=$TARGET_DIR/release/weft
LOADGEN=$TARGET_DIR/release/weft-bench
[ -x "$WEFT" ] && [ -x "$LOADGEN" ] || die "release binaries not found under $TARGET_DIR"

# --- work dir and teardown --------------------------------------------------
mkdir -p "$TMPBASE"
WORK=$(mktemp -d "$TMPBASE/weft-bench.XXXXXX")
PIDS=()

cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if [ "$rc" != 0 ]; then
    for f in "$WORK"/*.log; do
      [ -f "$f" ] || continue
      log "--- last lines of $f ---"
      tail -n 20 "$f" >&2 || true
    done
  fi
  if [ "$KEEP" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

FSTYPE=$(stat -f -c %T "$WORK")
if [ "$FSTYPE" = tmpfs ] || [ "$FSTYPE" = ramfs ]; then
  die "$WORK is on $FSTYPE, where fsync is free; set BENCH_TMPDIR to a directory on disk"
fi

# What one durable log write costs on this disk before anything starts:
# fdatasync of a 4 KiB overwrite, p50 and p99 of 500.
PROBE=$("$LOADGEN" fsync-probe "$WORK")
read -r FSYNC_P50 FSYNC_P99 <<<"$PROBE"

# Waits until "$@" succeeds, up to $1 seconds (condition, not a fixed sleep).
wait_for() {
  local secs=$1 what=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${secs}s waiting for $what"
    sleep 0.2
  done
}

# --- weft: 3 managers (and 3 more with the Raft log in redb) ----------------
# Group "weft" keeps its Raft log in weft's log file (the default); group
# "weft-redb" is the same binary with WEFT_RAFT_LOG=redb (the log in a redb
# database behind the same writer thread): the log backend A/B of issue #13.
weft_sock() { echo "$WORK/weft$1/weft.sock"; }
weft_cli() { local i=$1; shift; "$WEFT" -H "unix://$(weft_sock "$i")" "$@"; }

# start_weft_group FIRST LOG_BACKEND IP... : daemons FIRST.. on those IPs, one
# group; sets GROUP_ADDRS to the comma-separated manager addresses. (Not run
# in a subshell: PIDS must reach the cleanup.)
start_weft_group() {
  local first=$1 backend=$2; shift 2
  local ips=("$@") i n=0 a addrs=""
  for ip in "${ips[@]}"; do
    i=$((first + n)); n=$((n + 1))
    mkdir -p "$WORK/weft$i"
    WEFT_LOG=warn WEFT_RAFT_LOG=$backend "$WEFT" daemon --hostname "bench-m$i" \
      --data-dir "$WORK/weft$i/data" --exec-root "$WORK/weft$i/run" \
      --socket "$(weft_sock "$i")" </dev/null >"$WORK/weft$i.log" 2>&1 &
    PIDS+=("$!")
  done
  for ((i = first; i < first + n; i++)); do wait_for 30 "weft daemon $i" weft_cli "$i" info; done
  log "forming the weft manager group $first-$((first + n - 1)) (Raft log: $backend)"
  local lead=${ips[0]}:$WEFT_PORT token
  weft_cli "$first" init --advertise-addr "$lead" --listen-addr "$lead" >/dev/null
  token=$(weft_cli "$first" join-token -q manager)
  for ((i = 1; i < n; i++)); do
    a=${ips[$i]}:$WEFT_PORT
    weft_cli "$((first + i))" join --token "$token" --advertise-addr "$a" --listen-addr "$a" "$lead" >/dev/null
  done
  for ip in "${ips[@]}"; do addrs+="$ip:$WEFT_PORT,"; done
  GROUP_ADDRS=${addrs%,}
}

start_weft_group 1 file "${WEFT_IPS[@]}"
WEFT_ADDRS=$GROUP_ADDRS
SYSTEMS=(weft etcd)
if [ "$LOG_AB" = 1 ]; then
  start_weft_group 4 redb "${REDB_IPS[@]}"
  REDB_ADDRS=$GROUP_ADDRS
  SYSTEMS=(weft weft-redb etcd)
fi
if [ "$READS" = 1 ]; then SYSTEMS+=(weft-read etcd-read); fi

# --- etcd: 3 members --------------------------------------------------------
CLUSTER=""
for i in 1 2 3; do CLUSTER+="e$i=http://${ETCD_IPS[$((i - 1))]}:$ETCD_PEER_PORT,"; done
CLUSTER=${CLUSTER%,}
for i in 1 2 3; do
  ip=${ETCD_IPS[$((i - 1))]}
  etcd --name "e$i" --data-dir "$WORK/etcd$i" \
    --listen-client-urls "http://$ip:$ETCD_CLIENT_PORT" \
    --advertise-client-urls "http://$ip:$ETCD_CLIENT_PORT" \
    --listen-peer-urls "http://$ip:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://$ip:$ETCD_PEER_PORT" \
    --initial-cluster "$CLUSTER" --initial-cluster-state new \
    --initial-cluster-token weft-bench --logger zap --log-level warn \
    </dev/null >"$WORK/etcd$i.log" 2>&1 &
  PIDS+=("$!")
done
ETCD_EPS=$(printf "%s:$ETCD_CLIENT_PORT," "${ETCD_IPS[@]}"); ETCD_EPS=${ETCD_EPS%,}

# --- load -------------------------------------------------------------------
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
run_one() { # system clients round
  local sys=$1 c=$2 r=$3 line target=$TARGET
  # Reads go to every member, so followers take their read index from the
  # leader, as for clients spread over the managers.
  case $sys in *-read) target=all ;; esac
  local common=(--clients "$c" --channels "$CHANNELS" --warmup "$WARMUP"
    --duration "$DURATION" --target "$target" --round "$r")
  case $sys in
    weft) line=$("$LOADGEN" weft --addrs "$WEFT_ADDRS" --certs "$WORK/weft1/data/certs" "${common[@]}") ;;
    weft-redb) line=$("$LOADGEN" weft --system weft-redb --addrs "$REDB_ADDRS" \
      --certs "$WORK/weft4/data/certs" "${common[@]}") ;;
    etcd) line=$("$LOADGEN" etcd --endpoints "$ETCD_EPS" "${common[@]}") ;;
    weft-read) line=$("$LOADGEN" weft --op read --addrs "$WEFT_ADDRS" \
      --certs "$WORK/weft1/data/certs" "${common[@]}") ;;
    etcd-read) line=$("$LOADGEN" etcd --op read --endpoints "$ETCD_EPS" "${common[@]}") ;;
  esac
  echo "$line" >>"$RESULTS"
  log "$line"
}

for r in $(seq "$ROUNDS"); do
  # Rotate which system goes first, so drift on a shared machine hits all.
  order=""
  for ((k = 0; k < ${#SYSTEMS[@]}; k++)); do
    order+=" ${SYSTEMS[$(((r + k) % ${#SYSTEMS[@]}))]}"
  done
  for c in $CLIENTS; do
    for sys in $order; do
      log "round $r/$ROUNDS: $sys, $c client(s)"
      run_one "$sys" "$c" "$r"
    done
  done
done

# --- report -----------------------------------------------------------------
# (No `| head` here: under pipefail a SIGPIPE upstream would fail the script.)
CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | sed -n 1p)
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ]; then REV+=" + local changes"; fi
MACHINE="Run of $(date -u '+%Y-%m-%d %H:%M UTC') on $(nproc) vCPU ($CPU), kernel $(uname -r), \
data dirs on $(df --output=source "$WORK" | tail -n 1) ($FSTYPE; fdatasync of a 4 KiB overwrite before the run: p50 ${FSYNC_P50} µs, p99 ${FSYNC_P99} µs). \
weft $REV (release build), $(etcd --version | sed -n '1s/Version: //p'). \
3 members each on loopback, fsync on for all; $ROUNDS rounds, each run ${WARMUP} s warm-up + ${DURATION} s measured, \
systems alternating. Clients share $CHANNELS HTTP/2 connections (1 for 1 client), all to the $TARGET. \
weft: \`Control.UpdateNode\` label writes over mutual TLS; etcd: \`KV.Put\` over plain gRPC; \
the same keys (one per client) and values (a counter). Reads: weft \`Control.GetNode\`, etcd a \
linearizable \`KV.Range\`, clients spread over all three members."

if [ "$OUT" = - ]; then
  "$LOADGEN" report "$RESULTS" --machine "$MACHINE"
else
  "$LOADGEN" report "$RESULTS" --machine "$MACHINE" --into "$OUT"
  log "wrote $OUT"
  "$LOADGEN" report "$RESULTS" --machine "$MACHINE" | sed -n '/^| clients/,/^$/p' >&2
fi
