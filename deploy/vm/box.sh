#!/usr/bin/env bash
# `make vagrant-box`: a Vagrant box for the libvirt provider, made from the
# VM rig's Debian 12 image (image.sh box: the same packages, plus what
# Vagrant needs of a guest), and added to Vagrant as weft/debian12:
#
#   target/vm/vagrant/weft-debian12.box   a tar of
#     metadata.json   provider libvirt, format qcow2
#     box.img         the root filesystem as qcow2 (ext4, no partition table)
#     vmlinuz, initrd.img, Vagrantfile
#                     the kernel, booted directly as in the VM rig: the box's
#                     Vagrantfile points vagrant-libvirt at them
#
# Then `cd deploy/vagrant && vagrant up --provider=libvirt` uses it.
# WEFT_BOX_ADD=0 only builds the file.
set -euo pipefail
# shellcheck source=deploy/vm/common.sh
. "$(dirname "$0")/common.sh"

BOX_NAME=${WEFT_BOX_NAME:-weft/debian12}
OUT=$VM_DIR/vagrant
BOX=$OUT/weft-debian12.box

main() {
  bash "$REPO/deploy/vm/image.sh" box
  local img=$VM_DIR/box-image stamp
  stamp=$(cat "$img/stamp")
  if [ -s "$BOX" ] && [ "$(cat "$OUT/box.stamp" 2>/dev/null)" = "$stamp" ]; then
    log "box up to date: $BOX"
  else
    local work
    work=$(mktemp -d "$VM_DIR/box.XXXXXX")
    BUILD_DIR=$work
    trap 'rm -rf "$BUILD_DIR"' EXIT
    qemu-img convert -O qcow2 "$img/base.raw" "$work/box.img"
    cp "$img/vmlinuz" "$img/initrd.img" "$work/"
    local gib
    gib=$(( ($(stat -c %s "$img/base.raw") + (1 << 30) - 1) >> 30 ))
    printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %d}\n' "$gib" > "$work/metadata.json"
    cat > "$work/Vagrantfile" <<'RUBY'
# The box's own settings (weft/debian12, built by `make vagrant-box`): its
# kernel boots directly, as in weft's VM rig; the disk has no boot loader.
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |lv|
    lv.kernel = File.join(__dir__, "vmlinuz")
    lv.initrd = File.join(__dir__, "initrd.img")
    lv.cmd_line = "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1"
    lv.disk_bus = "virtio"
  end
end
RUBY
    mkdir -p "$OUT"
    tar -C "$work" -czf "$work/box.tar.gz" metadata.json box.img vmlinuz initrd.img Vagrantfile
    mv "$work/box.tar.gz" "$BOX"
    echo "$stamp" > "$OUT/box.stamp"
    log "box built: $BOX ($(du -h "$BOX" | cut -f1))"
  fi
  [ "${WEFT_BOX_ADD:-1}" = 1 ] || return 0
  command -v vagrant >/dev/null || die "vagrant is missing: apt-get install vagrant vagrant-libvirt"
  vagrant box add --force --name "$BOX_NAME" "$BOX"
  log "added to Vagrant as $BOX_NAME: cd deploy/vagrant && vagrant up --provider=libvirt"
}

main "$@"
