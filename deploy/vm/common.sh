#!/usr/bin/env bash
# Shared by the deploy/vm scripts (sourced, not run): paths, the accelerator,
# the guest's command line and the helpers that wait on conditions.
#
#   target/vm/
#     image/      base.raw (ext4 root, no partition table), vmlinuz, initrd.img,
#                 id_host_* (the guests' ssh host key), stamp (inputs' hash)
#     debs/       the .debs of the last build (the next build downloads only new ones)
#     rig/        state of `make vm-rig`: netns holder pid, per-VM overlay,
#                 data disk, console log, qemu pid (removed by vm-rig-down)
#     test/       the same for `make vm-test` (removed by its trap)

# shellcheck disable=SC2034 # the variables are used by the scripts sourcing this
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VM_DIR=${WEFT_VM_DIR:-$REPO/target/vm}
IMAGE_DIR=$VM_DIR/image
ACCEL=${WEFT_VM_ACCEL:-tcg}
VM_MEM=${WEFT_VM_MEM:-768}
BOOT_TIMEOUT=${WEFT_VM_BOOT_TIMEOUT:-300}

now_ms() { date +%s%3N; }
secs() { printf '%d.%01d' $(($1 / 1000)) $(($1 % 1000 / 100)); }
log() { printf '[vm %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# wait_for DEADLINE_S WHAT CMD...: runs CMD every half second until it
# succeeds; fails saying WHAT after DEADLINE_S seconds.
wait_for() {
  local deadline=$(( $(date +%s) + $1 )) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "timed out waiting for $what"
      return 1
    fi
    sleep 0.5
  done
}

# The weft binary put into guests: WEFT_VM_BINARY, or the repo's debug build.
weft_binary() {
  local b=${WEFT_VM_BINARY:-$REPO/target/debug/weft}
  [ -x "$b" ] || die "no weft binary at $b: make build, or set WEFT_VM_BINARY"
  echo "$b"
}

# build_debs OUT: OUT/weft_old.deb and OUT/weft_new.deb (deploy/deb/build.sh),
# to install one and upgrade to the other. New: version $DEB_NEW (the
# workspace's) from WEFT_DEB_BIN_DIR (default: the debug build, as the
# other guests get). Old: version $DEB_OLD (<version>~prev) from
# WEFT_VM_OLD_BIN_DIR when set (a previous release's binaries), else the
# same binaries; WEFT_VM_OLD_VERSION names that release's package version.
build_debs() {
  local out=$1 bins=${WEFT_DEB_BIN_DIR:-$REPO/target/debug}
  DEB_NEW=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/Cargo.toml" | head -1)
  DEB_OLD=${WEFT_VM_OLD_VERSION:-$DEB_NEW~prev}
  mkdir -p "$out"
  cp "$(WEFT_DEB_BIN_DIR=${WEFT_VM_OLD_BIN_DIR:-$bins} WEFT_DEB_VERSION=$DEB_OLD \
    bash "$REPO/deploy/deb/build.sh" "$out/old")" "$out/weft_old.deb"
  cp "$(WEFT_DEB_BIN_DIR=$bins bash "$REPO/deploy/deb/build.sh" "$out/new")" "$out/weft_new.deb"
}

# Holder of a network namespace: a process that only sleeps in a new netns,
# in a session of its own (no entry in the host-wide netns directory); its pid in $1/netns.pid.
netns_up() {
  local dir=$1
  rm -f "$dir/netns.pid"
  # shellcheck disable=SC2016 # $$ and $1 are the inner shell's
  setsid -f unshare --net sh -c 'echo $$ > "$1"; exec sleep infinity' sh "$dir/netns.pid" </dev/null >/dev/null 2>&1
  wait_for 5 "the namespace holder" netns_pid "$dir"
  in_ns "$dir" ip link set lo up
}
# The holder's pid, when it is still the sleeping holder.
netns_pid() {
  local p
  p=$(cat "$1/netns.pid" 2>/dev/null) || return 1
  [ "$(cat "/proc/$p/comm" 2>/dev/null)" = sleep ] || return 1
  [ "$(readlink "/proc/$p/ns/net")" != "$(readlink /proc/self/ns/net)" ] || return 1
  echo "$p"
}
# in_ns DIR CMD...: runs CMD in the rig's network namespace.
in_ns() {
  local dir=$1 pid
  shift
  pid=$(netns_pid "$dir") || die "no namespace holder in $dir"
  nsenter -t "$pid" -n -- "$@"
}

# ---- guests -----------------------------------------------------------------
#
#   host netns            rig netns (held by a sleeping process)
#   ──────────            ──────────────────────────────────────
#   make vm-rig  ─nsenter─▶ br0 198.18.0.1/24
#                           ├─ tap-m1 ── qemu m1 (eth0 198.18.0.11)
#                           ├─ tap-m2 ── qemu m2 (eth0 198.18.0.12)
#                           └─ …         ssh root@IP with the run's key

# bridge_up DIR: the private bridge the guests' taps join, in the namespace.
bridge_up() {
  in_ns "$1" ip link add br0 type bridge
  in_ns "$1" ip addr add 198.18.0.1/24 dev br0
  in_ns "$1" ip link set br0 up
}

# keys_up DIR: the run's ssh key and a stripped copy of the weft binary
# (the debug build's symbols would make every data disk ~180 MB).
keys_up() {
  local dir=$1 bin
  [ -s "$dir/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C weft-vm-rig -f "$dir/id_ed25519"
  bin=$(weft_binary)
  strip --strip-debug -o "$dir/weft" "$bin"
}

# vm_start DIR NAME IP [FILE...]: boots a guest from a copy-on-write overlay
# of the base image, with a data disk holding its name, address, the weft
# binary and unit, the ssh key and FILEs (at /mnt/weft in the guest).
vm_start() {
  vm_prepare "$@"
  vm_launch "$1" "$2"
}

# vm_prepare DIR NAME IP [FILE...]: the guest's disks and tap (vm_start).
vm_prepare() {
  local dir=$1 name=$2 ip=$3
  shift 3
  local vm=$dir/$name
  mkdir -p "$vm/data"
  [ -s "$IMAGE_DIR/base.raw" ] || die "no VM image: make vm-image"
  qemu-img create -q -f qcow2 -b "$IMAGE_DIR/base.raw" -F raw "$vm/disk.qcow2"
  printf 'VM_NAME=%s\nVM_IP=%s\nVM_PREFIX=24\nVM_GW=198.18.0.1\n' "$name" "$ip" > "$vm/data/vm.env"
  cp "$dir/weft" "$vm/data/weft"
  cp "$dir/id_ed25519.pub" "$vm/data/authorized_keys"
  cp "$REPO/deploy/systemd/weft.service" "$vm/data/weft.service"
  cp "$REPO/deploy/vm/guest-lib.sh" "$vm/data/guest-lib.sh"
  [ $# -eq 0 ] || cp "$@" "$vm/data/"
  local mb
  mb=$(( $(du -sm "$vm/data" | cut -f1) * 12 / 10 + 16 ))
  mkfs.ext4 -q -L weft-data -d "$vm/data" "$vm/data.ext4" "${mb}M"
  in_ns "$dir" ip tuntap add dev "tap-$name" mode tap
  in_ns "$dir" ip link set "tap-$name" master br0 up
  printf '52:54:00:12:%02x:%02x\n' "$(echo "$ip" | cut -d. -f3)" "$(echo "$ip" | cut -d. -f4)" > "$vm/mac"
  echo "$ip" > "$vm/ip"
}

# vm_launch DIR NAME: starts the prepared guest's QEMU; again after the
# guest rebooted (-no-reboot: a reboot inside the guest ends QEMU), with
# the same disks, so it boots from what it wrote.
vm_launch() {
  local dir=$1 name=$2
  local vm=$dir/$name
  local accel=(-accel tcg -cpu max)
  [ "$ACCEL" = kvm ] && accel=(-accel kvm -cpu host)
  date +%s%3N > "$vm/started_ms"
  in_ns "$dir" qemu-system-x86_64 -name "$name" "${accel[@]}" -machine q35 -smp 1 -m "$VM_MEM" \
    -nodefaults -display none -no-reboot \
    -kernel "$IMAGE_DIR/vmlinuz" -initrd "$IMAGE_DIR/initrd.img" \
    -append "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1 quiet" \
    -drive "file=$vm/disk.qcow2,if=virtio,format=qcow2,cache=unsafe" \
    -drive "file=$vm/data.ext4,if=virtio,format=raw,readonly=on" \
    -netdev "tap,id=n0,ifname=tap-$name,script=no,downscript=no" \
    -device "virtio-net-pci,netdev=n0,mac=$(cat "$vm/mac")" \
    -device virtio-rng-pci \
    -serial "file:$vm/console.log" \
    -daemonize -pidfile "$vm/qemu.pid"
}

# vm_pid DIR NAME: the guest's qemu pid, when it is still running.
vm_pid() {
  local p
  p=$(cat "$1/$2/qemu.pid" 2>/dev/null) || return 1
  [[ "$(cat "/proc/$p/comm" 2>/dev/null)" == qemu-system-* ]] || return 1
  echo "$p"
}

# vm_ssh DIR NAME CMD...: runs CMD (a shell command line) on the guest as root.
# ConnectTimeout also bounds the key exchange, which takes tens of seconds
# in a guest under TCG on a loaded host: a short one makes every attempt
# fail and the abandoned ones pile up in sshd until it refuses all
# (MaxStartups).
vm_ssh() {
  local dir=$1 name=$2
  shift 2
  in_ns "$dir" ssh -q -i "$dir/id_ed25519" -o BatchMode=yes -o StrictHostKeyChecking=no \
    -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=120 \
    -o ServerAliveInterval=10 -o ServerAliveCountMax=6 \
    "root@$(cat "$dir/$name/ip")" "$@"
}

# vm_wait DIR NAME: waits until the guest answers on ssh (within
# BOOT_TIMEOUT), printing the boot time in ms; shows the console's end if
# it does not.
vm_wait() {
  local dir=$1 name=$2 deadline
  deadline=$(( $(date +%s) + BOOT_TIMEOUT ))
  until vm_ssh "$dir" "$name" true 2>/dev/null; do
    if ! vm_pid "$dir" "$name" >/dev/null; then
      log "$name: qemu exited; console:"; tail -n 30 "$dir/$name/console.log" >&2; return 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "$name: no ssh after ${BOOT_TIMEOUT}s; console:"; tail -n 30 "$dir/$name/console.log" >&2; return 1
    fi
    sleep 1
  done
  echo $(( $(now_ms) - $(cat "$dir/$name/started_ms") ))
}

# one_guest_test DIR WHAT CMD FILE...: the single-guest tests' body: a
# namespace, bridge and key in DIR, guest t1 (198.18.0.11) booted with FILEs
# on its data disk, CMD run on it over ssh; logs WHAT's verdict with the
# boot and total times (since $T0, ms) and returns CMD's status.
one_guest_test() {
  local dir=$1 what=$2 cmd=$3
  shift 3
  netns_up "$dir"
  bridge_up "$dir"
  keys_up "$dir"
  log "booting the $what guest (accelerator: $ACCEL, ${VM_MEM} MiB, 1 vCPU)"
  vm_start "$dir" t1 198.18.0.11 "$@"
  local ms rc=0
  ms=$(vm_wait "$dir" t1) || die "the $what guest did not boot"
  log "t1 booted in $(secs "$ms")s (qemu start to ssh, $ACCEL)"
  vm_ssh "$dir" t1 "$cmd" || rc=$?
  log "$what: $( [ "$rc" = 0 ] && echo PASS || echo FAIL ) in $(secs $(( $(now_ms) - T0 )))s (boot $(secs "$ms")s, $ACCEL)"
  return "$rc"
}

# teardown_trap: an EXIT trap of a script whose state dir is $DIR: tears
# it down, keeping the script's exit status (1 if the cleanup failed).
teardown_trap() {
  local rc=$?
  teardown "$DIR" || { log "cleanup of $DIR incomplete"; rc=1; }
  exit "$rc"
}

# teardown DIR: stops every guest of the state dir, ends its namespace
# (the taps and the bridge go with it) and removes the dir. Keeps going
# after a failure and reports each.
teardown() {
  local dir=$1 rc=0 vm p ns
  [ -d "$dir" ] || return 0
  for vm in "$dir"/*/; do
    [ -f "$vm/qemu.pid" ] || continue
    if p=$(vm_pid "$dir" "$(basename "$vm")"); then
      kill "$p" || { log "cannot stop qemu $p"; rc=1; }
      wait_for 20 "qemu $p to exit" test ! -e "/proc/$p" || { kill -9 "$p" 2>/dev/null; rc=1; }
    fi
  done
  if ns=$(netns_pid "$dir"); then
    kill "$ns" || { log "cannot stop the namespace holder $ns"; rc=1; }
    wait_for 10 "the namespace holder to exit" test ! -e "/proc/$ns" || rc=1
  fi
  rm -rf "$dir" || rc=1
  return "$rc"
}
