#!/usr/bin/env bash
# Provisions one node of the weft Vagrant rig (see Vagrantfile):
#   provision.sh NAME ROLE IP FIRST_MANAGER_IP [BINARY_NAME]
# 1. installs the host packages, the weft binary and its systemd unit, and
#    (re)starts the daemon;
# 2. m1 creates the cluster and publishes the join tokens on the private
#    network (http://FIRST_MANAGER_IP:4380/{worker,manager}, for 30 minutes:
#    this is a development rig on a host-only network);
#    the other nodes fetch their token and join through m1.
# Every node advertises IP, its private-network address. Idempotent: a
# node that is already a member is left as it is (re-provisioning after a
# rebuild just installs the new binary and restarts the daemon).
set -euo pipefail

NAME=${1:?node name}
ROLE=${2:?manager or worker}
IP=${3:?private-network address}
FIRST=${4:?first manager address}
BIN=${5:-weft}
PORT=4377
BOOTSTRAP_PORT=4380
BOOTSTRAP_DIR=/run/weft-bootstrap

log() { echo "[$NAME] $*"; }

case "$IP" in
  10.0.2.15|192.168.121.*) echo "refusing to advertise the NAT address $IP" >&2; exit 1 ;;
esac

# --- packages -----------------------------------------------------------
missing=""
for t in nft:nftables ip:iproute2 curl:curl; do
  command -v "${t%%:*}" >/dev/null 2>&1 || missing="$missing ${t##*:}"
done
# The token server is python3's http.server, which python3-minimal lacks.
python3 -c 'import http.server' >/dev/null 2>&1 || missing="$missing python3"
if [ -n "$missing" ]; then
  log "installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq $missing >/dev/null
fi

# --- weft and its unit ----------------------------------------------------
src=/opt/weft/bin/$BIN
if [ ! -x "$src" ]; then
  echo "no weft binary at $src: build it on the host first (cargo build --release -p weft -p weft-worker --bins)" >&2
  exit 1
fi
install -m 0755 "$src" /usr/local/bin/weft
# The containers' log program (optional: without it weft logs in logger mode,
# at about 5 MB more per container).
if [ -x "$(dirname "$src")/weft-task-logger" ]; then
  install -m 0755 "$(dirname "$src")/weft-task-logger" /usr/local/bin/weft-task-logger
fi
install -m 0644 /opt/weft/deploy/systemd/weft.service /etc/systemd/system/weft.service
systemctl daemon-reload
systemctl enable weft >/dev/null 2>&1
systemctl restart weft

for _ in $(seq 1 120); do
  weft info >/dev/null 2>&1 && break
  sleep 0.5
done
if ! weft info >/dev/null 2>&1; then
  journalctl -u weft --no-pager -n 30 >&2
  echo "the weft daemon did not come up" >&2
  exit 1
fi

state=$(weft info | awk '/^Cluster:/ {print $2; exit}')

publish_tokens() {
  install -d -m 0755 "$BOOTSTRAP_DIR"
  weft join-token -q worker >"$BOOTSTRAP_DIR/worker"
  weft join-token -q manager >"$BOOTSTRAP_DIR/manager"
  systemctl stop weft-bootstrap >/dev/null 2>&1 || true
  systemctl reset-failed weft-bootstrap >/dev/null 2>&1 || true
  systemd-run --quiet --unit=weft-bootstrap --property=RuntimeMaxSec=1800 \
    python3 -m http.server "$BOOTSTRAP_PORT" --bind "$IP" --directory "$BOOTSTRAP_DIR"
  # The other nodes wait for it: say so here if it does not serve.
  for _ in $(seq 1 60); do
    curl -fsS --max-time 2 -o /dev/null "http://$IP:$BOOTSTRAP_PORT/worker" && return 0
    sleep 1
  done
  journalctl -u weft-bootstrap --no-pager -n 20 >&2
  echo "the join-token server on $IP:$BOOTSTRAP_PORT did not start" >&2
  exit 1
}

if [ "$NAME" = m1 ]; then
  if [ "$state" = inactive ]; then
    log "creating the cluster, advertising $IP"
    weft init --advertise-addr "$IP"
  else
    log "already a member ($state)"
  fi
  publish_tokens
  weft node ls
  exit 0
fi

if [ "$state" != inactive ]; then
  log "already a member ($state)"
  exit 0
fi

# Machines may come up in parallel (vagrant-libvirt does): wait for m1.
token=""
for _ in $(seq 1 300); do
  token=$(curl -fsS --max-time 2 "http://$FIRST:$BOOTSTRAP_PORT/$ROLE" 2>/dev/null || true)
  [ -n "$token" ] && break
  sleep 2
done
if [ -z "$token" ]; then
  echo "no $ROLE join token from $FIRST:$BOOTSTRAP_PORT; is m1 up? (vagrant up m1)" >&2
  exit 1
fi

# Managers joining at the same moment are serialised by Raft; retry.
for attempt in $(seq 1 10); do
  if weft join --token "$token" --advertise-addr "$IP" "$FIRST:$PORT"; then
    log "joined as a $ROLE, advertising $IP"
    exit 0
  fi
  log "join attempt $attempt failed; retrying"
  sleep $((attempt * 2))
done
echo "could not join $FIRST:$PORT" >&2
exit 1
