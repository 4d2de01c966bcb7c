#!/usr/bin/env bash
# `make vm-test`: weft's container resource limits on a real cgroup v2
# kernel, in one QEMU guest (this machine's own kernel may be cgroup v1).
#
# Boots one guest from the cached image (make vm-image), with the weft
# binary, the busybox test image (deploy/lab/busybox-image.sh, built here)
# and deploy/vm/guest-test.sh on its data disk, runs that script in it over
# ssh (it prints the PASS/FAIL table) and removes the guest, its overlay
# and its namespace on every exit, failed or not. State: target/vm/test/.
set -euo pipefail
# shellcheck source=deploy/vm/common.sh
. "$(dirname "$0")/common.sh"

DIR=$VM_DIR/test
VM_MEM=${WEFT_VM_TEST_MEM:-1024}

main() {
  [ "$(id -u)" = 0 ] || die "vm-test needs root (namespaces, taps)"
  local t0 archive
  t0=$(now_ms)
  # A test of an earlier run that was killed before its trap ran.
  teardown "$DIR" || true
  mkdir -p "$DIR"
  trap teardown_trap EXIT
  trap 'exit 130' INT TERM
  archive=$VM_DIR/busybox-oci.tar
  [ -s "$archive" ] || bash "$REPO/deploy/lab/busybox-image.sh" "$archive"
  netns_up "$DIR"
  bridge_up "$DIR"
  keys_up "$DIR"
  log "booting the test guest (accelerator: $ACCEL, ${VM_MEM} MiB, 1 vCPU)"
  vm_start "$DIR" t1 198.18.0.11 "$archive" "$REPO/deploy/vm/guest-test.sh"
  local ms
  ms=$(vm_wait "$DIR" t1) || die "the test guest did not boot"
  log "t1 booted in $(secs "$ms")s (qemu start to ssh, $ACCEL)"
  local rc=0
  vm_ssh "$DIR" t1 'bash /mnt/weft/guest-test.sh' || rc=$?
  log "vm-test: $( [ "$rc" = 0 ] && echo PASS || echo FAIL ) in $(secs $(( $(now_ms) - t0 )))s (boot $(secs "$ms")s, $ACCEL)"
  return "$rc"
}

main "$@"
