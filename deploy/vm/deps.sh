#!/usr/bin/env bash
# Host packages of the VM rig, installed when missing (as `make deps` does
# for the rest): QEMU, mmdebstrap, e2fsprogs (mkfs.ext4 -d), the ssh client,
# binutils (strip) and umoci (the test image).
set -euo pipefail
# shellcheck source=deploy/vm/common.sh
. "$(dirname "$0")/common.sh"

TOOLS="qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils mmdebstrap:mmdebstrap mkfs.ext4:e2fsprogs ssh:openssh-client strip:binutils umoci:umoci"
# make vagrant-deps: Vagrant, its libvirt provider, and libvirt's daemon
# (vagrant-test runs one of its own; dnsmasq serves its networks).
[ "${WEFT_VM_VAGRANT:-0}" = 0 ] ||
  TOOLS="$TOOLS vagrant:vagrant libvirtd:libvirt-daemon-system virtlogd:libvirt-daemon-system dnsmasq:dnsmasq-base rsync:rsync"
missing=""
for t in $TOOLS; do
  command -v "${t%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${t%%:*}" ] || missing="$missing ${t##*:}"
done
if [ "${WEFT_VM_VAGRANT:-0}" != 0 ]; then
  for p in vagrant-libvirt libvirt-daemon-driver-qemu; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
  done
fi
[ -n "$missing" ] || exit 0
[ "$(id -u)" = 0 ] || die "run as root, or install:$missing"
log "installing host packages:$missing"
apt-get update -qq
# shellcheck disable=SC2086 # a list of package names
if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null; then
  # A qemu-utils newer than the distribution's (e.g. from backports) blocks
  # qemu-system-x86 of the distribution: install both at its version.
  v=$(apt-cache policy qemu-utils | awk 'NF == 2 && $2 ~ /^[0-9]+$/ { print $1; exit }')
  [ -n "$v" ] || die "cannot install:$missing"
  log "retrying with qemu-utils=$v (the distribution's version)"
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --allow-downgrades $missing "qemu-utils=$v" >/dev/null
fi
