#!/usr/bin/env bash
# `make vm-rig` / `make vm-rig-down`: a weft cluster of QEMU guests.
#
#   bash deploy/vm/rig.sh up      boots WEFT_VM_MANAGERS (3) managers and
#                                 WEFT_VM_WORKERS (2) workers from the cached
#                                 image (make vm-image), forms the cluster and
#                                 leaves it running
#   bash deploy/vm/rig.sh ssh NAME [CMD...]   a command (or a shell) on a guest
#   bash deploy/vm/rig.sh down    removes every trace: guests, overlays, data
#                                 disks, taps, bridge, namespace, state dir
#
# Guests m1..mN get 198.18.0.11.., workers w1..wM 198.18.0.21.., on a bridge
# (198.18.0.1) in a network namespace held by a sleeping process of the rig
# (nothing in the host-wide netns directory). Each guest runs weft as the systemd unit of
# deploy/systemd/weft.service; m1 runs `weft init`, the others `weft join`.
# State: target/vm/rig/. Accelerator: TCG unless WEFT_VM_ACCEL=kvm.
set -euo pipefail
# shellcheck source=deploy/vm/common.sh
. "$(dirname "$0")/common.sh"

DIR=$VM_DIR/rig
MANAGERS=${WEFT_VM_MANAGERS:-3}
WORKERS=${WEFT_VM_WORKERS:-2}
# Five guests boot at once, sharing the host's cores: a longer deadline.
BOOT_TIMEOUT=${WEFT_VM_BOOT_TIMEOUT:-900}

# The guests, "NAME IP" each, managers first. Loops run over this array,
# not over a `while read` of a pipe, whose stdin ssh would swallow.
GUESTS=()
for i in $(seq 1 "$MANAGERS"); do GUESTS+=("m$i 198.18.0.$((10 + i))"); done
for i in $(seq 1 "$WORKERS"); do GUESTS+=("w$i 198.18.0.$((20 + i))"); done

# weft_up NAME: starts the daemon's unit and waits for its socket to answer.
weft_up() {
  vm_ssh "$DIR" "$1" 'systemctl daemon-reload && systemctl enable --now weft >/dev/null 2>&1'
  wait_for 120 "weft on $1" vm_ssh "$DIR" "$1" 'weft info'
}

up() {
  [ "$(id -u)" = 0 ] || die "the VM rig needs root (namespaces, taps)"
  [ "$MANAGERS" -ge 1 ] || die "WEFT_VM_MANAGERS must be at least 1"
  if [ -d "$DIR" ]; then
    die "a rig is already up ($DIR); make vm-rig-down first"
  fi
  local t0 g name ip
  t0=$(now_ms)
  mkdir -p "$DIR"
  netns_up "$DIR"
  bridge_up "$DIR"
  keys_up "$DIR"
  log "booting $MANAGERS managers + $WORKERS workers (accelerator: $ACCEL, ${VM_MEM} MiB and 1 vCPU each)"
  for g in "${GUESTS[@]}"; do
    vm_start "$DIR" "${g% *}" "${g#* }"
  done
  local boots=() ms
  for g in "${GUESTS[@]}"; do
    name=${g% *}
    ms=$(vm_wait "$DIR" "$name") || die "$name did not boot; make vm-rig-down removes the rig"
    boots+=("$name=$(secs "$ms")s")
  done
  local booted
  booted=$(now_ms)
  log "booted (qemu start to ssh, $ACCEL): ${boots[*]}"

  weft_up m1
  vm_ssh "$DIR" m1 'weft init --advertise-addr 198.18.0.11' >/dev/null
  local mtok wtok
  mtok=$(vm_ssh "$DIR" m1 'weft join-token -q manager')
  wtok=$(vm_ssh "$DIR" m1 'weft join-token -q worker')
  # Managers one at a time (each join is a Raft membership change); then the workers.
  for g in "${GUESTS[@]}"; do
    name=${g% *}
    ip=${g#* }
    [ "$name" = m1 ] && continue
    weft_up "$name"
    local tok=$wtok
    [[ $name == m* ]] && tok=$mtok
    vm_ssh "$DIR" "$name" "weft join --token $tok --advertise-addr $ip 198.18.0.11:4377" >/dev/null
  done
  local n=$((MANAGERS + WORKERS))
  wait_for 180 "$n ready nodes" ready_nodes "$n"
  local done_ms
  done_ms=$(now_ms)
  vm_ssh "$DIR" m1 'weft node ls'
  {
    echo "accel=$ACCEL managers=$MANAGERS workers=$WORKERS"
    echo "boot: ${boots[*]}"
    echo "boot_all_s=$(secs $((booted - t0))) formation_s=$(secs $((done_ms - booted))) total_s=$(secs $((done_ms - t0)))"
  } | tee "$DIR/timings"
  cat <<EOF2

The rig is running. Explore it:
  bash deploy/vm/rig.sh ssh m1 weft node ls
  bash deploy/vm/rig.sh ssh w1              a shell on w1 (console logs: $DIR/*/console.log)
Tear it down:
  make vm-rig-down
EOF2
}

# ready_nodes N: m1 lists N nodes, all Ready.
ready_nodes() {
  local out
  out=$(vm_ssh "$DIR" m1 'weft node ls') || return 1
  [ "$(grep -ci ready <<<"$out")" -ge "$1" ] && ! grep -qiE 'down|unknown' <<<"$out"
}

case "${1:-}" in
  up) up ;;
  down) teardown "$DIR" && log "rig removed" ;;
  ssh)
    shift
    [ $# -ge 1 ] || die "usage: rig.sh ssh NAME [CMD...]"
    name=$1
    shift
    if [ $# -eq 0 ]; then
      pid=$(netns_pid "$DIR") || die "no rig is up"
      exec nsenter -t "$pid" -n -- ssh -t -i "$DIR/id_ed25519" -o StrictHostKeyChecking=no \
        -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR "root@$(cat "$DIR/$name/ip")"
    fi
    vm_ssh "$DIR" "$name" "$@"
    ;;
  *) die "usage: rig.sh up|down|ssh NAME [CMD...]" ;;
esac
