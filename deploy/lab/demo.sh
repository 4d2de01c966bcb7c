#!/usr/bin/env bash
# `make demo`: a weft cluster on this machine in under a minute.
#
#   bash deploy/lab/demo.sh [path/to/weft]
#
# Brings up lab `demo` (3 managers, 2 workers, each a real `weft daemon` in
# its own namespaces on the underlay 198.18.0.0/24), shows the cluster from
# m1, and leaves it running to explore. Installs nothing (make does that).
# Needs root. Each step is a function; later steps (overlay networks,
# services) slot in at the end of main.
set -euo pipefail

WEFT=${1:-target/debug/weft}
LAB=${WEFT_DEMO_LAB:-demo}
MANAGERS=${WEFT_DEMO_MANAGERS:-3}
WORKERS=${WEFT_DEMO_WORKERS:-2}

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
  run "$WEFT" lab up --name "$LAB" --managers "$MANAGERS" --workers "$WORKERS"
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

overlay_and_service() {
  step "An encrypted, attachable overlay network (VXLAN inside WireGuard), and a web service with 3 replicas on it"
  on m1 weft network create --driver overlay --opt encrypted --attachable --subnet 10.0.9.0/24 appnet
  local t0 t1
  t0=$(now_ms)
  # Each replica serves a page with its own task name (every task has its own /tmp).
  on m1 weft service create --name web --replicas 3 --network appnet \
    --constraint node.role==worker -- \
    sh -c 'mkdir -p /tmp/www; hostname > /tmp/www/index.html; exec busybox httpd -f -p 80 -h /tmp/www'
  t1=$(now_ms)
  SERVICE_MS=$((t1 - t0))
  on m1 weft service ps web
  on m1 weft network inspect appnet

  step "From a client task on m1, 'web' resolves to the service's VIP (embedded DNS at 127.0.0.11)"
  local client
  client=$("$WEFT" lab exec "$LAB" m1 -- weft run -d --name client --network appnet -- \
    sh -c 'busybox nslookup web; busybox nslookup tasks.web; for i in $(seq 1 30); do timeout 3 busybox wget -qO- http://web/; done')
  VIP=$("$WEFT" lab exec "$LAB" m1 -- weft service inspect web | sed -n 's/.*"Addr": "\([0-9.]*\)".*/\1/p' | head -1)
  local t2 replicas
  t2=$(now_ms)
  for _ in $(seq 1 100); do
    replicas=$("$WEFT" lab exec "$LAB" m1 -- weft logs client | grep -c '^web\.' || true)
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
  printf '  service web: 3 replicas created and converged in %d.%03ds; VIP %s\n' \
    $((SERVICE_MS / 1000)) $((SERVICE_MS % 1000)) "$VIP"
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
  fresh_lab
  cluster_up
  show_cluster
  overlay_and_service
  summary
}

main "$@"
