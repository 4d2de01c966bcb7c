#!/usr/bin/env bash
# `make vm-deb-test`: the Debian package (make deb, issue #20) on a real
# Debian 12 guest: install, a cluster formed through the unit, upgrade,
# remove, purge (deploy/vm/guest-deb.sh says what each step checks).
#
# Two packages (common.sh's build_debs: the debug build unless
# WEFT_DEB_BIN_DIR says otherwise): the workspace's version and an earlier
# one (`<version>~prev`), so the upgrade runs the real maintainer scripts
# from one version to the next. Boots one guest from the cached
# image (make vm-image), runs the guest script over ssh and removes the
# guest, its overlay and its namespace on every exit. State: target/vm/deb/.
set -euo pipefail
# shellcheck source=deploy/vm/common.sh
. "$(dirname "$0")/common.sh"

DIR=$VM_DIR/deb
VM_MEM=${WEFT_VM_TEST_MEM:-1024}

main() {
  [ "$(id -u)" = 0 ] || die "vm-deb-test needs root (namespaces, taps)"
  T0=$(now_ms)
  teardown "$DIR" || true
  mkdir -p "$DIR/debs"
  trap teardown_trap EXIT
  trap 'exit 130' INT TERM
  build_debs "$DIR/debs"
  one_guest_test "$DIR" vm-deb-test "WEFT_OLD=$DEB_OLD WEFT_NEW=$DEB_NEW bash /mnt/weft/guest-deb.sh" \
    "$DIR/debs/weft_old.deb" "$DIR/debs/weft_new.deb" "$REPO/deploy/vm/guest-deb.sh"
}

main "$@"
