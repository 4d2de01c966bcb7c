#!/usr/bin/env bash
# `make vm-image`: a small Debian 12 (bookworm) guest for the VM rig, built
# with mmdebstrap from Debian's packages into target/vm/image/:
#
#   image.sh [vm|box]
#
# `box` (make vagrant-box, deploy/vm/box.sh) builds the same system with
# what Vagrant needs of a guest (a vagrant user with sudo, DHCP on eth0
# through systemd-networkd, rsync, and curl and python3 for provision.sh:
# its join-token server is python3's http.server)
# into target/vm/box-image/ instead; it has no weft-vm-setup.
#
#   base.raw     ext4 root filesystem (no partition table: root=/dev/vda),
#                the read-only backing file of every VM's qcow2 overlay
#   vmlinuz,     the cloud kernel and its initrd, booted directly
#   initrd.img   (qemu -kernel/-initrd), so the image needs no boot loader
#
# Rebuilt only when this script or customize.sh change (their hash
# is in image/stamp). The .debs of a build are kept in target/vm/debs and
# reused, so a rebuild downloads only the package index and what changed.
#
# Nothing of weft is in the image: each VM gets the weft binary, its unit,
# its address, its name and the ssh key on a small second disk (/dev/vdb,
# made per run by common.sh's vm_start), which weft-vm-setup.service reads
# at boot.
set -euo pipefail
# shellcheck source=deploy/vm/common.sh
. "$(dirname "$0")/common.sh"

MIRROR=${WEFT_VM_MIRROR:-http://deb.debian.org/debian}
# The kernel, systemd as init, and what weft needs at run time (`make deps`
# on a node: nft, nsenter, ip, containerd, runc, busybox-static), plus
# openssh-server (how the rig runs commands in a guest).
PACKAGES=linux-image-cloud-amd64,systemd-sysv,udev,kmod,procps,iproute2,nftables,util-linux,containerd,runc,busybox-static,openssh-server,iputils-ping
SIZE=${WEFT_VM_IMAGE_SIZE:-2G}
FLAVOUR=${1:-vm}
case "$FLAVOUR" in
  vm) ;;
  box)
    PACKAGES=$PACKAGES,sudo,rsync,curl,python3
    IMAGE_DIR=$VM_DIR/box-image ;;
  *) die "usage: image.sh [vm|box]" ;;
esac

inputs_hash() {
  { echo "$FLAVOUR $PACKAGES $SIZE $MIRROR"; cat "$0" "$REPO/deploy/vm/customize.sh"; } | sha256sum | cut -d' ' -f1
}

main() {
  [ "$(id -u)" = 0 ] || die "building the VM image needs root (mmdebstrap, mkfs.ext4 -d)"
  command -v mmdebstrap >/dev/null || die "mmdebstrap is missing: apt-get install mmdebstrap"
  local want
  want=$(inputs_hash)
  if [ -s "$IMAGE_DIR/base.raw" ] && [ "$(cat "$IMAGE_DIR/stamp" 2>/dev/null)" = "$want" ]; then
    log "$FLAVOUR image up to date: $IMAGE_DIR/base.raw"
    return
  fi
  local t0 work debs
  t0=$(now_ms)
  debs=$VM_DIR/debs
  mkdir -p "$VM_DIR" "$debs"
  work=$(mktemp -d "$VM_DIR/build.XXXXXX")
  BUILD_DIR=$work
  trap 'rm -rf "$BUILD_DIR"' EXIT
  log "building the Debian 12 $FLAVOUR image with mmdebstrap (mirror $MIRROR)"
  # The .debs kept by the last build are given to apt (sync-in), which then
  # downloads only what is missing, and the set is kept again (sync-out).
  mmdebstrap --variant=minbase --include="$PACKAGES" \
    --skip=download/empty \
    --setup-hook="mkdir -p \"\$1/var/cache/apt/archives/\"" \
    --setup-hook="sync-in '$debs' /var/cache/apt/archives/" \
    --customize-hook="sync-out /var/cache/apt/archives '$debs'" \
    --customize-hook="bash '$REPO/deploy/vm/customize.sh' \"\$1\" $FLAVOUR" \
    bookworm "$work/root" "$MIRROR"
  cp -L "$work/root/vmlinuz" "$work/vmlinuz"
  cp -L "$work/root/initrd.img" "$work/initrd.img"
  rm -f "$work/base.raw"
  mkfs.ext4 -q -L weft-root -d "$work/root" "$work/base.raw" "$SIZE"
  mkdir -p "$IMAGE_DIR"
  mv "$work/base.raw" "$work/vmlinuz" "$work/initrd.img" "$IMAGE_DIR/"
  echo "$want" > "$IMAGE_DIR/stamp"
  log "image built in $(secs $(( $(now_ms) - t0 )))s: $(du -h --apparent-size "$IMAGE_DIR/base.raw" | cut -f1) apparent, $(du -h "$IMAGE_DIR/base.raw" | cut -f1) used"
}

main "$@"
