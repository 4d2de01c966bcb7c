#!/usr/bin/env bash
# bench/containers.sh — what a node spends per idle container (issue #14):
# weft's share (the shim containerd starts for each container, weft's log
# process beside it, and what the weft daemon and containerd grow by)
# against Docker's (its shim, and what dockerd and containerd grow by), on
# one private containerd that both use, in the same run.
#
#   bash bench/containers.sh            (make bench runs it)
#
# Each round starts BENCH_TASKS (20) idle containers of the same busybox
# image (`sleep`), network none for both, waits until all run, lets them
# settle, sums the proportional set size (PSS, /proc/PID/smaps_rollup) of
# every process involved, removes them and does the same with Docker.
# Per container = (sum with the containers - sum before) / BENCH_TASKS. The
# processes share pages (weft's log process is the weft binary), so the
# rows for single kinds of process give their private memory (USS) instead.
# BENCH_ROUNDS (3) rounds; the medians go to bench/results-containers.md.
# Then the time of service create and scale 3 → 6 with containers
# (tests/bench_containers.rs, BENCH_CONVERGENCE=0 skips it), and right after
# it the same for Docker Swarm 20.10 on the same rig with the same probes
# (tests/bench_swarm.rs: four dockerd, each in its own network and mount
# namespaces under $WORK; BENCH_SWARM=0 skips it), with weft / Swarm per row.
# Both take WEFT_BENCH_LAT_ROUNDS rounds (5). After the Swarm rounds the
# script checks, apart from the test's own teardown, that nothing of them is
# left: no process, mount, cgroup, link or file.
# Needs root, containerd, dockerd and docker (docker.io), umoci and skopeo
# (installed when missing) and a release build of weft (built unless
# BENCH_SKIP_BUILD=1).
set -euo pipefail
BENCH_TAG=containers
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

TASKS=${BENCH_TASKS:-20}
ROUNDS=${BENCH_ROUNDS:-3}
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${BENCH_OUT:-$REPO/bench/results-containers.md}
IMAGE=weft-demo/busybox:latest

[ "$(id -u)" = 0 ] || die "needs root"
bench_tools containerd:containerd dockerd:docker.io umoci:umoci skopeo:skopeo runc:runc
# The Swarm reference drives Debian's client, the daemon's version (another
# `docker` may come first on PATH).
[ -x /usr/bin/docker ] || bench_tools /usr/bin/docker:docker.io
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  log "building weft (release)"
  (cd "$REPO" && cargo build --release -q -p weft -p weft-worker --bins)
fi
WEFT=${WEFT:-$REPO/target/release/weft}
[ -x "$WEFT" ] || die "no weft binary at $WEFT"

WORK=$(mktemp -d /tmp/weft-bench-containers.XXXXXX)
CTRD=$WORK/containerd
SOCK=$CTRD/containerd.sock
LAB=bc$$
export WEFT_LAB_ROOT=$WORK/labs
CGROUP=/weft-bench-$$
CTRD_PID=
DOCKERD_PID=
# The Swarm reference's namespaces, cgroups (/sys/fs/cgroup/*/$SWARM_TAG-*)
# and files (under $SWARM_DIR).
SWARM_TAG=wbsw-$$
SWARM_DIR=$WORK/swarm

bench_extra_cleanup() {
  "$WEFT" lab down "$LAB" --force >/dev/null 2>&1 || true
  # The memory rounds' dockerd was started in a subshell (round_docker):
  # found by its pid file, not a child to wait for.
  [ -n "$DOCKERD_PID" ] || DOCKERD_PID=$(cat "$WORK/docker.pid" 2>/dev/null || true)
  if [ -n "$DOCKERD_PID" ]; then
    docker -H "unix://$WORK/docker.sock" rm -f $(docker -H "unix://$WORK/docker.sock" ps -aq 2>/dev/null) >/dev/null 2>&1 || true
    kill "$DOCKERD_PID" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$DOCKERD_PID" 2>/dev/null || true
  fi
  if [ -n "$CTRD_PID" ]; then
    local ns id
    for ns in weft moby; do
      for id in $(ctr -a "$SOCK" -n "$ns" tasks ls -q 2>/dev/null); do
        ctr -a "$SOCK" -n "$ns" tasks kill -s KILL "$id" >/dev/null 2>&1 || true
      done
      sleep 0.5
      for id in $(ctr -a "$SOCK" -n "$ns" containers ls -q 2>/dev/null); do
        ctr -a "$SOCK" -n "$ns" tasks rm -f "$id" >/dev/null 2>&1 || true
        ctr -a "$SOCK" -n "$ns" containers rm "$id" >/dev/null 2>&1 || true
      done
    done
    kill "$CTRD_PID" 2>/dev/null || true
    wait "$CTRD_PID" 2>/dev/null || true
    pkill -KILL -f "containerd-shim-runc-v2 .*-address $SOCK" 2>/dev/null || true
  fi
  find /sys/fs/cgroup -depth -type d -path "*$CGROUP*" -exec rmdir {} \; 2>/dev/null || true
  swarm_clear
  grep -o " $WORK[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
}
trap bench_cleanup EXIT INT TERM

# What the Swarm rounds left, if anything (the test tears down after itself,
# also when it fails; this is for an interrupted run): processes started
# from $SWARM_DIR (dockerd, containerd, shims; by pid), then what is left in
# their cgroups (the containers), then the cgroups. Pins were cleared and
# mounts detached before (bench_clear_pins, the umount above).
swarm_pids() {
  local p
  for p in /proc/[0-9]*; do
    { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -q -- "$SWARM_DIR/" && echo "${p#/proc/}"
  done
  return 0
}
swarm_cgroups() { find /sys/fs/cgroup -mindepth 2 -maxdepth 2 -type d -name "$SWARM_TAG-*" 2>/dev/null || true; }
swarm_clear() {
  local pid d cgroups
  for pid in $(swarm_pids); do kill -KILL "$pid" 2>/dev/null || true; done
  cgroups=$(swarm_cgroups)
  [ -n "$cgroups" ] || return 0
  swarm_cgroup_procs() { for d in $cgroups; do find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null; done; }
  for pid in $(swarm_cgroup_procs); do kill -KILL "$pid" 2>/dev/null || true; done
  # A killed process leaves its cgroup a moment later.
  for _ in $(seq 1 50); do [ -z "$(swarm_cgroup_procs)" ] && break; sleep 0.1; done
  for d in $cgroups; do find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true; done
}
# Checks, with the kernel's own views, that nothing of the Swarm rounds is
# left: processes, mounts, cgroups, links in this namespace (against
# LINKS_BEFORE), files. Prints what is, and fails.
swarm_check_clean() {
  local left="" p m c l f
  p=$(swarm_pids | tr '\n' ' ')
  [ -z "$p" ] || left+=" processes: $p;"
  m=$(grep -c -- " $SWARM_DIR/" /proc/self/mountinfo || true)
  [ "$m" = 0 ] || left+=" $m mounts under $SWARM_DIR;"
  c=$(swarm_cgroups | tr '\n' ' ')
  [ -z "$c" ] || left+=" cgroups: $c;"
  l=$(comm -13 <(echo "$LINKS_BEFORE") <(ip -o link show | awk -F': ' '{ print $2 }' | sort))
  [ -z "$l" ] || left+=" links: $(echo "$l" | tr '\n' ' ');"
  f=$(find "$SWARM_DIR" -mindepth 1 2>/dev/null | head -n 5 | tr '\n' ' ')
  [ -z "$f" ] || left+=" files: $f;"
  [ -z "$left" ] || die "the Swarm rounds left behind:$left"
  log "Swarm cleanup checked: no process from $SWARM_DIR, no mount under $SWARM_DIR, no $SWARM_TAG-* cgroup, no new link, no file left"
}

start_containerd() {
  mkdir -p "$CTRD"/{root,state,runc}
  cat > "$CTRD/config.toml" <<EOF
version = 2
root = "$CTRD/root"
state = "$CTRD/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  address = "$CTRD/debug.sock"
[metrics]
  address = ""
EOF
  containerd --config "$CTRD/config.toml" >"$CTRD/log" 2>&1 &
  CTRD_PID=$!
  for _ in $(seq 1 200); do
    ctr -a "$SOCK" version >/dev/null 2>&1 && return
    sleep 0.05
  done
  die "containerd did not start: $(tail -5 "$CTRD/log")"
}

# The image: the demo's (built with umoci from busybox-static), as an OCI
# archive for weft and a docker-save archive for Docker.
build_image() {
  local t=$WORK/image
  mkdir -p "$t" && cd "$t"
  umoci init --layout layout >/dev/null
  umoci new --image layout:latest >/dev/null
  umoci unpack --image layout:latest bundle >/dev/null
  mkdir -p bundle/rootfs/{bin,etc,tmp,proc,sys,dev}
  cp /bin/busybox bundle/rootfs/bin/busybox
  ln -s busybox bundle/rootfs/bin/sh
  ln -s busybox bundle/rootfs/bin/sleep
  umoci repack --image layout:latest bundle >/dev/null
  umoci config --image layout:latest --os linux --architecture amd64 \
    --config.env PATH=/bin --config.cmd /bin/sh >/dev/null
  tar -C layout -cf oci.tar .
  skopeo --insecure-policy copy -q oci:layout:latest "docker-archive:$t/docker.tar:$IMAGE" >/dev/null
  cd "$REPO"
}

# mem FIELDS PIDS...: the sum (kB) of the smaps_rollup fields matching the
# regex FIELDS over the given pids.
mem() {
  local fields=$1 p sum=0 v
  shift
  for p in "$@"; do
    v=$(awk -v f="^($fields):" '$0 ~ f { s += $2 } END { print s + 0 }' "/proc/$p/smaps_rollup" 2>/dev/null || true)
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}
# Proportional set size: shared pages split among their users.
pss() { mem Pss "$@"; }
# Private memory (USS): what each costs alone, whatever it shares.
uss() { mem 'Private_Clean|Private_Dirty' "$@"; }
shims() { pgrep -f "containerd-shim-runc-v2 -namespace $1 .*-address $SOCK\$" || true; }

weft_pids() {
  echo "$CTRD_PID" $(pgrep -f "^$WEFT_LAB_ROOT/$LAB/nodes/m1/.*weft-task-logger" || true) $(shims weft) \
    $(pgrep -f "weft daemon --hostname m1 .*$WEFT_LAB_ROOT/$LAB/" || true)
}
docker_pids() { echo "$CTRD_PID" "$DOCKERD_PID" $(shims moby); }

wait_count() { # wait_count N CMD...: until CMD prints N lines
  local n=$1; shift
  for _ in $(seq 1 600); do
    [ "$("$@" 2>/dev/null | grep -c .)" -ge "$n" ] && return
    sleep 0.1
  done
  die "timed out waiting for $n: $*"
}

round_weft() {
  "$WEFT" lab up --name "$LAB" --managers 1 --workers 0 --containerd-socket "$SOCK" \
    --runc-root "$CTRD/runc" --cgroup-parent "$CGROUP" >/dev/null
  local on=("$WEFT" lab exec "$LAB" m1 --)
  "${on[@]}" weft image load -i "$WORK/image/oci.tar" --tag "$IMAGE" >/dev/null
  sleep 2
  local before after i
  before=$(pss $(weft_pids))
  for i in $(seq 1 "$TASKS"); do
    "${on[@]}" weft run -d --network none --name "idle$i" "$IMAGE" sleep 1000000 >/dev/null
  done
  wait_count "$TASKS" shims weft
  wait_count "$TASKS" "${on[@]}" weft ps -q
  sleep 5
  after=$(pss $(weft_pids))
  echo $(( (after - before) / TASKS )) "$(uss $(shims weft))" \
    "$(uss $(pgrep -f "^$WEFT_LAB_ROOT/$LAB/nodes/m1/.*weft-task-logger" || true))"
  "$WEFT" lab down "$LAB" >/dev/null
}

round_docker() {
  local d=(docker -H "unix://$WORK/docker.sock")
  # Each round runs in a subshell (`< <(round_docker)`), so DOCKERD_PID
  # set by the first does not reach the next: the daemon it started is
  # found again by its pid file (its memory counts in every round).
  if [ -f "$WORK/docker.pid" ] && kill -0 "$(cat "$WORK/docker.pid")" 2>/dev/null; then
    DOCKERD_PID=$(cat "$WORK/docker.pid")
  else
    mkdir -p "$WORK/docker" "$WORK/docker-exec"
    dockerd --data-root "$WORK/docker" --exec-root "$WORK/docker-exec" -H "unix://$WORK/docker.sock" \
      --pidfile "$WORK/docker.pid" --containerd "$SOCK" --bridge none --iptables=false \
      --ip-masq=false --ip-forward=false --cgroup-parent "$CGROUP-docker" >"$WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 1 300); do "${d[@]}" version >/dev/null 2>&1 && break; sleep 0.1; done
    "${d[@]}" version >/dev/null || die "dockerd did not start: $(tail -5 "$WORK/dockerd.log")"
    "${d[@]}" load -q -i "$WORK/image/docker.tar" >/dev/null
  fi
  sleep 2
  local before after i
  before=$(pss $(docker_pids))
  for i in $(seq 1 "$TASKS"); do
    "${d[@]}" run -d --network none --name "idle$i" "$IMAGE" sleep 1000000 >/dev/null
  done
  wait_count "$TASKS" shims moby
  sleep 5
  after=$(pss $(docker_pids))
  echo $(( (after - before) / TASKS )) "$(uss $(shims moby))"
  "${d[@]}" rm -f $("${d[@]}" ps -aq) >/dev/null
}

median() { tr ' ' '\n' | grep . | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

start_containerd
build_image
W=() D=() WS=() WL=() DS=()
for r in $(seq 1 "$ROUNDS"); do
  read -r w ws wl < <(round_weft)
  read -r d ds < <(round_docker)
  log "round $r: weft $w kB per container (shims $ws kB, loggers $wl kB for $TASKS); docker $d kB (shims $ds kB)"
  W+=("$w") D+=("$d") WS+=("$ws") WL+=("$wl") DS+=("$ds")
done
mw=$(echo "${W[@]}" | median)
md=$(echo "${D[@]}" | median)
{
  echo "| kB per idle container ($TASKS containers, median of $ROUNDS rounds) | weft | Docker |"
  echo "|---|---:|---:|"
  echo "| everything (PSS growth of the daemon, containerd and the per-container processes) | $mw | $md |"
  echo "| a shim's own memory (containerd-shim-runc-v2, USS) | $(( $(echo "${WS[@]}" | median) / TASKS )) | $(( $(echo "${DS[@]}" | median) / TASKS )) |"
  echo "| a log process's own memory (weft-task-logger, USS) | $(( $(echo "${WL[@]}" | median) / TASKS )) | — (dockerd writes the log) |"
  echo
  echo "weft / Docker: $(awk -v a="$mw" -v b="$md" 'BEGIN { printf "%.2f", a / b }'). Every round (weft, Docker): $(paste -d, <(printf '%s\n' "${W[@]}") <(printf '%s\n' "${D[@]}") | tr '\n' ' ')"
} | tee "$OUT"

# Time, with the image already on every node: service create → all replicas
# answer through the VIP, and scale 3 → 6 (tests/bench_containers.rs, the
# probes of the process-task benchmark). BENCH_CONVERGENCE=0 skips it.
if [ "${BENCH_CONVERGENCE:-1}" = 1 ]; then
  log "service create and scale with containers (tests/bench_containers.rs)"
  cd "$REPO"
  bench_build bench_containers
  WEFT_BENCH_OUT=$WORK/fragments cargo test --release -q --test bench_containers -- \
    --ignored --test-threads=1 --nocapture >&2
  { echo; cat "$WORK/fragments/containers-convergence.md"; } | tee -a "$OUT"

  # Docker Swarm on the same rig, right after: the reference of the same run.
  if [ "${BENCH_SWARM:-1}" = 1 ]; then
    log "the same with Docker Swarm $(dockerd --version | awk '{ print $3 }' | tr -d ,) (tests/bench_swarm.rs)"
    mkdir -p "$SWARM_DIR"
    LINKS_BEFORE=$(ip -o link show | awk -F': ' '{ print $2 }' | sort)
    bench_build bench_swarm
    TMPDIR=$SWARM_DIR WEFT_BENCH_SWARM_TAG=$SWARM_TAG WEFT_BENCH_OUT=$WORK/fragments \
      cargo test --release -q --test bench_swarm -- --ignored --test-threads=1 --nocapture >&2
    swarm_check_clean
    { echo; cat "$WORK/fragments/swarm-convergence.md"; } | tee -a "$OUT"
  fi
fi
