#!/usr/bin/env bash
# The guest image's own files, written into the new root filesystem ($1) on
# the build host by image.sh (an mmdebstrap customize hook):
#   customize.sh ROOT vm|box
set -euo pipefail
root=$1
flavour=${2:-vm}
echo '/dev/vda / ext4 rw,errors=remount-ro 0 1' > "$root/etc/fstab"
echo weft-vm > "$root/etc/hostname"
# Root logs in on the serial console without a password (a disposable
# test guest on a private bridge); ssh only with the run's key.
chroot "$root" passwd -d root >/dev/null
cat > "$root/etc/ssh/sshd_config.d/weft-vm.conf" <<'CONF'
PermitRootLogin prohibit-password
PasswordAuthentication no
UseDNS no
CONF

# The VM rig's guests: name, address, key and binary from a data disk.
rig_guest() {
cat > "$root/usr/local/sbin/weft-vm-setup" <<'SCRIPT'
#!/bin/sh
# Reads this VM's data disk (/dev/vdb, made per run on the host): its name,
# address, the weft binary and the rig's ssh key.
set -eu
# The kernel's devtmpfs has the node as soon as the disk is probed; udev
# (dev-vdb.device) may take minutes on a loaded emulated host.
i=0
until [ -b /dev/vdb ]; do
  i=$((i + 1))
  [ "$i" -lt 600 ] || { echo "no /dev/vdb after 600 s" >&2; exit 1; }
  sleep 1
done
mkdir -p /mnt/weft
mountpoint -q /mnt/weft || mount -o ro /dev/vdb /mnt/weft
. /mnt/weft/vm.env
hostname "$VM_NAME"
echo "$VM_NAME" > /etc/hostname
printf '127.0.0.1 localhost\n%s %s\n' "$VM_IP" "$VM_NAME" > /etc/hosts
ip link set lo up
ip link set eth0 up
ip addr replace "$VM_IP/$VM_PREFIX" dev eth0
ip route replace default via "$VM_GW" dev eth0
# The binary is run from the data disk; the unit (deploy/systemd/weft.service)
# is installed from it too, but not enabled: the rig or the test starts it.
# Not where the weft package is installed (make vm-deb-test, vm-rig-test):
# its binary and unit are the ones to run, across reboots too.
if [ ! -e /lib/systemd/system/weft.service ]; then
  ln -sf /mnt/weft/weft /usr/local/bin/weft
  install -m 0644 /mnt/weft/weft.service /etc/systemd/system/weft.service
fi
install -d -m 0700 /root/.ssh
install -m 0600 /mnt/weft/authorized_keys /root/.ssh/authorized_keys
SCRIPT
chmod 0755 "$root/usr/local/sbin/weft-vm-setup"
cat > "$root/etc/systemd/system/weft-vm-setup.service" <<'UNIT'
[Unit]
Description=weft VM rig: name, address, weft binary, its unit and ssh key from /dev/vdb
DefaultDependencies=no
After=local-fs.target
Before=network-online.target network.target ssh.service
Wants=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
TimeoutStartSec=infinity
ExecStart=/usr/local/sbin/weft-vm-setup

[Install]
WantedBy=multi-user.target
UNIT
chroot "$root" systemctl enable weft-vm-setup.service >/dev/null 2>&1
}

# A Vagrant box's guest (vagrant-libvirt): the user `vagrant` with Vagrant's
# well-known insecure key (Vagrant replaces it with a key of its own at the
# first `vagrant up`) and password-less sudo; eth0 (the management network)
# by DHCP, the private network as Vagrant writes it for systemd-networkd.
vagrant_guest() {
  local key
  # (find fails on the places that do not exist)
  key=$(find /usr/share/rubygems-integration /usr/lib/ruby /opt/vagrant -path '*vagrant-*/keys/vagrant.pub' -print -quit 2>/dev/null || true)
  [ -s "$key" ] || { echo "customize.sh: no Vagrant insecure key (is vagrant installed?)" >&2; exit 1; }
  chroot "$root" useradd --create-home --shell /bin/bash vagrant
  install -d -m 0700 "$root/home/vagrant/.ssh"
  install -m 0600 "$key" "$root/home/vagrant/.ssh/authorized_keys"
  chroot "$root" chown -R vagrant:vagrant /home/vagrant/.ssh
  echo 'vagrant ALL=(ALL) NOPASSWD: ALL' > "$root/etc/sudoers.d/vagrant"
  chmod 0440 "$root/etc/sudoers.d/vagrant"
  printf '[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n' > "$root/etc/systemd/network/10-eth0.network"
  chroot "$root" systemctl enable systemd-networkd.service >/dev/null 2>&1
}

case "$flavour" in
  vm) rig_guest ;;
  box) vagrant_guest ;;
  *) echo "customize.sh: unknown flavour $flavour" >&2; exit 1 ;;
esac
# Under TCG on a loaded host, udev can take longer than systemd's default
# 90 s to announce a device (the serial console, the data disk): wait longer.
mkdir -p "$root/etc/systemd/system.conf.d"
printf '[Manager]\nDefaultDeviceTimeoutSec=600s\nDefaultTimeoutStartSec=600s\n' > "$root/etc/systemd/system.conf.d/weft-vm.conf"
# Boot faster under emulation: nothing periodic, nothing waits for a network manager.
chroot "$root" systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
  e2scrub_reap.service fstrim.timer systemd-networkd-wait-online.service >/dev/null 2>&1 || true
# containerd starts with the VM; weft only when the rig or the test asks.
chroot "$root" systemctl enable containerd.service >/dev/null 2>&1
rm -f "$root/etc/machine-id"
: > "$root/etc/machine-id"
