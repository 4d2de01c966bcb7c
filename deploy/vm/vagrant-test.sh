#!/usr/bin/env bash
# `make vagrant-test`: `vagrant up --provider=libvirt` of deploy/vagrant (3
# managers, 2 workers) from the box of `make vagrant-box`, then checks that
# the five nodes formed one cluster, and destroys it all.
#
# libvirt runs here as a daemon of the test's own, in a network and mount
# namespace of its own: its bridges, dnsmasq and firewall rules live and die
# in that namespace, and its state (/etc/libvirt, /var/lib/libvirt,
# /run/libvirt, /var/log/libvirt) is a directory of the run, so nothing of
# the host's libvirt, if it has one, is used or changed. QEMU runs as root
# without a security driver there (a throwaway rig).
#
# The accelerator is WEFT_VM_ACCEL (tcg unless set to kvm, as in the VM rig).
# The weft binary is WEFT_VM_BINARY (default target/debug/weft), stripped.
set -euo pipefail
# shellcheck source=deploy/vm/common.sh
. "$(dirname "$0")/common.sh"

DIR=$VM_DIR/vagrant-test
BOX=$VM_DIR/vagrant/weft-debian12.box
T0=$(now_ms)
# Under TCG, five guests booting at once on two cores take minutes each.
export WEFT_VM_BOOT_TIMEOUT=${WEFT_VM_BOOT_TIMEOUT:-900}

# The namespace holder: a new network and mount namespace whose libvirt
# directories are the run's own, mounted before it sleeps.
ns_up() {
  local d
  mkdir -p /run/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt
  for d in etc lib run log cache; do mkdir -p "$DIR/$d"; done
  cp -a /etc/libvirt/. "$DIR/etc/"
  cat >> "$DIR/etc/qemu.conf" <<'CONF'
# weft's vagrant-test: a throwaway rig in a namespace of its own.
user = "root"
group = "root"
security_driver = "none"
CONF
  # shellcheck disable=SC2016 # the inner shell's variables
  setsid -f unshare --net --mount --propagation private sh -c '
    set -e
    d=$1
    mount --bind "$d/etc" /etc/libvirt
    mount --bind "$d/lib" /var/lib/libvirt
    mount --bind "$d/run" /run/libvirt
    mount --bind "$d/log" /var/log/libvirt
    mount --bind "$d/cache" /var/cache/libvirt
    ip link set lo up
    echo $$ > "$d/netns.pid"
    exec sleep infinity' sh "$DIR" </dev/null >/dev/null 2>&1
  wait_for 5 "the namespace holder" netns_pid "$DIR"
}

# in_vns CMD...: CMD in the run's network and mount namespaces.
in_vns() {
  local pid
  pid=$(netns_pid "$DIR") || die "no namespace holder in $DIR"
  nsenter -t "$pid" -n -m -- "$@"
}

# vg ARGS...: vagrant on deploy/vagrant, with the run's Vagrant home and
# machine state, against the run's libvirtd.
vg() {
  # (entering a mount namespace moves to its root: VAGRANT_CWD says where)
  in_vns env VAGRANT_CWD="$REPO/deploy/vagrant" VAGRANT_HOME="$DIR/home" VAGRANT_DOTFILE_PATH="$DIR/dot" \
    VAGRANT_DEFAULT_PROVIDER=libvirt LIBVIRT_DEFAULT_URI=qemu:///system \
    WEFT_VM_ACCEL="$ACCEL" WEFT_BIN="$DIR/bin/weft" vagrant "$@"
}

# ns_procs NS: the pids of the processes in network namespace NS but the holder.
ns_procs() {
  local p holder
  holder=$(netns_pid "$DIR" || true)
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/ns/net" 2>/dev/null)" = "$1" ] || continue
    [ "${p#/proc/}" = "$holder" ] || echo "${p#/proc/}"
  done
}

cleanup() {
  local rc=$? ns p holder
  set +e
  if holder=$(netns_pid "$DIR"); then
    [ ! -d "$DIR/dot" ] || vg destroy -f >/dev/null 2>&1 || { log "vagrant destroy failed"; rc=1; }
    ns=$(readlink "/proc/$holder/ns/net")
    # libvirtd, virtlogd, dnsmasq, any qemu left: every process of the
    # namespace, asked to stop, then killed after 20 s.
    # shellcheck disable=SC2046 # a list of pids
    kill $(ns_procs "$ns") 2>/dev/null
    # shellcheck disable=SC2046 # a list of pids
    wait_for 20 "the namespace's processes to stop" test -z "$(ns_procs "$ns")" ||
      kill -9 $(ns_procs "$ns") 2>/dev/null
    kill "$holder"
    wait_for 10 "the namespace holder to exit" test ! -e "/proc/$holder"
  fi
  rm -rf "$DIR" || rc=1
  log "vagrant-test: $( [ "$rc" = 0 ] && echo PASS || echo FAIL ) in $(secs $(( $(now_ms) - T0 )))s ($ACCEL)"
  exit "$rc"
}

main() {
  [ "$(id -u)" = 0 ] || die "vagrant-test needs root (its own libvirtd in namespaces)"
  command -v vagrant >/dev/null || die "vagrant is missing: make vagrant-deps"
  [ -x /usr/sbin/libvirtd ] || die "libvirtd is missing: make vagrant-deps"
  [ -s "$BOX" ] || die "no box at $BOX: make vagrant-box"
  [ ! -e "$DIR" ] || die "$DIR exists: another vagrant-test running, or a stale one (remove it)"
  mkdir -p "$DIR/bin"
  trap cleanup EXIT
  strip --strip-debug -o "$DIR/bin/weft" "$(weft_binary)"
  ns_up
  # Pid files in the run's directory, not the host's /run, and no D-Bus:
  # the host's libvirt (if any) keeps its locks, and no firewalld or
  # machined of the host hears of this one's networks and guests.
  in_vns env DBUS_SYSTEM_BUS_ADDRESS=unix:path=/nonexistent virtlogd -d -p "$DIR/run/virtlogd.pid"
  in_vns env DBUS_SYSTEM_BUS_ADDRESS=unix:path=/nonexistent libvirtd -d -p "$DIR/run/libvirtd.pid"
  wait_for 30 "libvirtd" in_vns virsh -c qemu:///system version
  vg box add --name weft/debian12 "$BOX" >/dev/null
  log "vagrant up --provider=libvirt (accelerator: $ACCEL)"
  local t
  t=$(now_ms)
  # (--no-tty: no progress bars in the log)
  vg up --provider=libvirt --no-tty
  log "vagrant up took $(secs $(( $(now_ms) - t )))s"
  local ls ready
  ls=$(vg ssh m1 -c 'sudo weft node ls' 2>/dev/null)
  echo "$ls"
  ready=$(grep -c ' Ready ' <<<"$ls" || true)
  [ "$ready" = 5 ] || die "node ls on m1 shows $ready Ready nodes, not 5"
  ls=$(vg ssh m3 -c 'sudo weft node ls' 2>/dev/null)
  [ "$(grep -c ' Ready ' <<<"$ls" || true)" = 5 ] || die "node ls on m3 does not show 5 Ready nodes"
  log "5 nodes Ready, seen from m1 and m3"
}

main "$@"
