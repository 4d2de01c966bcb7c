#!/usr/bin/env bash
# `make demo`: a weft cluster on this machine in under a minute.
#
#   bash deploy/lab/demo.sh [path/to/weft]
#
# Brings up lab `demo` (3 managers, 2 workers, each a real `weft daemon` in
# its own namespaces on the underlay 198.18.0.0/24), shows the cluster from
# m1, runs a web service of containers from a small image it builds offline
# (busybox-static, with umoci), and leaves it running to explore. Installs
# nothing (make does that). Needs root and a containerd: the machine's
# (started here when it is installed but not running), or the one
# WEFT_DEMO_CONTAINERD_SOCKET names (with WEFT_DEMO_RUNC_ROOT and
# WEFT_DEMO_CGROUP_PARENT, as the demo's test gives its private one). Each
# step is a function; later steps slot in at the end of main.
set -euo pipefail

WEFT=${1:-target/debug/weft}
LAB=${WEFT_DEMO_LAB:-demo}
MANAGERS=${WEFT_DEMO_MANAGERS:-3}
WORKERS=${WEFT_DEMO_WORKERS:-2}
IMAGE=weft-demo/busybox:latest
CONTAINERD_SOCKET=${WEFT_DEMO_CONTAINERD_SOCKET:-}

if [ -t 1 ]; then B=$'\e[1m'; D=$'\e[2m'; R=$'\e[0m'; else B=; D=; R=; fi
step() { printf '\n%s==> %s%s\n' "$B" "$*" "$R"; }
run() { printf '%s$ %s%s\n' "$D" "$*" "$R"; "$@"; }
now_ms() { date +%s%3N; }
# Runs a command on a node of the lab, as `weft lab exec` does for a user.
on() { local node=$1; shift; run "$WEFT" lab exec "$LAB" "$node" -- "$@"; }

preflight() {
  if [ "$(id -u)" != 0 ]; then
    echo "error: the demo needs root (each node is a set of namespaces); run: sudo make demo" >&2
    exit 1
  fi
  if [ ! -x "$WEFT" ]; then
    echo "error: no weft binary at $WEFT; build it first (make build)" >&2
    exit 1
  fi
  # Hints show the path as given (e.g. target/debug/weft); commands run
  # the absolute one.
  SHOW=$WEFT
  WEFT=$(cd "$(dirname "$WEFT")" && pwd)/$(basename "$WEFT")
  IMAGE_DIR=${WEFT_DEMO_IMAGE_DIR:-$(dirname "$(dirname "$WEFT")")/demo-image}
}

# The machine's containerd answering on its socket, or the one given.
containerd_up() {
  if [ -n "$CONTAINERD_SOCKET" ]; then
    ctr --address "$CONTAINERD_SOCKET" version >/dev/null
    return
  fi
  if ctr version >/dev/null 2>&1; then return; fi
  if ! command -v containerd >/dev/null; then
    echo "error: containerd is not installed; run make deps (make demo does)" >&2
    exit 1
  fi
  step "Starting containerd (installed, not running)"
  if [ -d /run/systemd/system ]; then
    run systemctl start containerd
  else
    # No systemd: run it as its unit would, in the background, logging to a file.
    printf '%s$ containerd >/var/log/weft-demo-containerd.log 2>&1 &%s\n' "$D" "$R"
    setsid containerd >/var/log/weft-demo-containerd.log 2>&1 < /dev/null &
  fi
  for _ in $(seq 1 100); do
    ctr version >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "error: containerd did not answer on /run/containerd/containerd.sock; see /var/log/weft-demo-containerd.log or journalctl -u containerd" >&2
  exit 1
}

# An OCI image archive of busybox-static, built once with umoci (offline).
build_image() {
  ARCHIVE=$IMAGE_DIR/busybox-oci.tar
  [ -s "$ARCHIVE" ] && return
  step "Building the demo image $IMAGE from this machine's busybox-static (umoci, offline)"
  bash "$(dirname "${BASH_SOURCE[0]}")/busybox-image.sh" "$ARCHIVE" \
    || { echo "error: building the demo image failed (umoci; make deps installs it)" >&2; exit 1; }
}

fresh_lab() {
  if "$WEFT" lab status "$LAB" >/dev/null 2>&1 || [ -e "${WEFT_LAB_ROOT:-/run/weft-lab}/$LAB" ]; then
    step "Removing the previous $LAB lab"
    run "$WEFT" lab down "$LAB"
  fi
}

cluster_up() {
  step "Creating lab $LAB: $MANAGERS managers, $WORKERS workers, one weft daemon each"
  local t0 t1
  t0=$(now_ms)
  local ctrd=()
  if [ -n "$CONTAINERD_SOCKET" ]; then
    ctrd=(--containerd-socket "$CONTAINERD_SOCKET")
    [ -n "${WEFT_DEMO_RUNC_ROOT:-}" ] && ctrd+=(--runc-root "$WEFT_DEMO_RUNC_ROOT")
    [ -n "${WEFT_DEMO_CGROUP_PARENT:-}" ] && ctrd+=(--cgroup-parent "$WEFT_DEMO_CGROUP_PARENT")
  fi
  run "$WEFT" lab up --name "$LAB" --managers "$MANAGERS" --workers "$WORKERS" "${ctrd[@]}"
  t1=$(now_ms)
  FORMATION_MS=$((t1 - t0))
}

show_cluster() {
  step "The cluster as m1 sees it"
  on m1 weft node ls
  step "m1's view of itself"
  on m1 weft info
  step "A worker is not a manager: it cannot list the nodes"
  on w1 weft node ls || true
}

load_image() {
  step "Loading the image on every node (as docker load; the nodes share this machine's containerd)"
  local n
  for n in $(seq 1 "$MANAGERS" | sed 's/^/m/') $(seq 1 "$WORKERS" | sed 's/^/w/'); do
    on "$n" weft image load -i "$ARCHIVE" --tag "$IMAGE"
  done
}

overlay_and_service() {
  step "An encrypted, attachable overlay network (VXLAN inside WireGuard), and a web service of 3 containers on it"
  on m1 weft network create --driver overlay --opt encrypted --attachable --subnet 10.0.9.0/24 appnet
  local t0 t1
  t0=$(now_ms)
  # Each replica serves a page with its hostname, its task's name.
  # --no-resolve-image: the image is on the nodes, not in a registry.
  on m1 weft service create --name web --replicas 3 --network appnet \
    --constraint node.role==worker --no-resolve-image "$IMAGE" \
    sh -c 'mkdir -p /tmp/www; hostname > /tmp/www/index.html; exec httpd -f -p 80 -h /tmp/www'
  t1=$(now_ms)
  SERVICE_MS=$((t1 - t0))
  on m1 weft service ps web
  on m1 weft network inspect appnet

  step "From a client task on m1, 'web' resolves to the service's VIP (embedded DNS at 127.0.0.11)"
  local client
  client=$("$WEFT" lab exec "$LAB" m1 -- weft run -d --name client --network appnet "$IMAGE" \
    sh -c 'nslookup web; nslookup tasks.web; for i in $(seq 1 30); do timeout 3 wget -qO- http://web/; done')
  VIP=$("$WEFT" lab exec "$LAB" m1 -- weft service inspect web | sed -n 's/.*"Addr": "\([0-9.]*\)".*/\1/p' | head -1)
  local t2 replicas
  t2=$(now_ms)
  for _ in $(seq 1 100); do
    replicas=$("$WEFT" lab exec "$LAB" m1 -- weft logs client 2>/dev/null | grep -c '^web\.' || true)
    [ "${replicas:-0}" -ge 30 ] && break
    sleep 0.2
  done
  on m1 weft logs client | sed -n '1,12p'
  step "30 requests to http://web/ from m1, answered by these replicas (on other nodes):"
  "$WEFT" lab exec "$LAB" m1 -- weft logs client | grep '^web\.' | sort | uniq -c
  SEEN=$("$WEFT" lab exec "$LAB" m1 -- weft logs client | grep '^web\.' | sort -u | wc -l)
  REQ_MS=$(( $(now_ms) - t2 ))
  : "$client"
}

summary() {
  step "Summary"
  printf '  lab %s: %s managers + %s workers, cluster formed in %d.%03ds (lab up, end to end)\n' \
    "$LAB" "$MANAGERS" "$WORKERS" $((FORMATION_MS / 1000)) $((FORMATION_MS % 1000))
  printf '  service web: 3 replicas (containers of %s) created and converged in %d.%03ds; VIP %s\n' \
    "$IMAGE" $((SERVICE_MS / 1000)) $((SERVICE_MS % 1000)) "$VIP"
  printf '  a client on m1 reached %s distinct replicas through http://web/\n' "$SEEN"
  cat <<EOF

  The lab is still running. Explore it:
    $SHOW lab status $LAB
    $SHOW lab exec $LAB m1 -- weft node ls     any command, on any node (m1..m$MANAGERS, w1..w$WORKERS)
    $SHOW lab exec $LAB w1                     a shell on w1
  Tear it down:
    $SHOW lab down $LAB                        (or: make demo-down)
EOF
}

main() {
  preflight
  containerd_up
  build_image
  fresh_lab
  cluster_up
  show_cluster
  load_image
  overlay_and_service
  summary
}

main "$@"
