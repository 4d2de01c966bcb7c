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
  local archive
  T0=$(now_ms)
  # A test of an earlier run that was killed before its trap ran.
  teardown "$DIR" || true
  mkdir -p "$DIR"
  trap teardown_trap EXIT
  trap 'exit 130' INT TERM
  archive=$VM_DIR/busybox-oci.tar
  [ -s "$archive" ] || bash "$REPO/deploy/lab/busybox-image.sh" "$archive"
  one_guest_test "$DIR" vm-test 'bash /mnt/weft/guest-test.sh' "$archive" "$REPO/deploy/vm/guest-test.sh"
}

main "$@"
