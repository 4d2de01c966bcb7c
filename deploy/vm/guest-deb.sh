#!/usr/bin/env bash
# Runs inside the vm-deb-test guest, as root, with weft_old.deb and
# weft_new.deb on its data disk (/mnt/weft): installs, upgrades, removes
# and purges the package as a Debian user would, and checks each step on
# the system itself (systemd, dpkg, the files, nftables, links). Prints a
# table of checks; exits non-zero on any FAIL.
set -Eeuo pipefail

RESULTS=()
FAILS=0
# shellcheck source=/dev/null
. /mnt/weft/vm.env
OLD=${WEFT_OLD:?}
NEW=${WEFT_NEW:?}
export DEBIAN_FRONTEND=noninteractive

# shellcheck source=deploy/vm/guest-lib.sh
. /mnt/weft/guest-lib.sh
ok() { "$@" >/dev/null 2>&1 && echo 0 || echo 1; }
summary() {
  printf '\n%s\n' "${RESULTS[@]}"
  printf '\n%d checks, %d failed\n' "${#RESULTS[@]}" "$FAILS"
  [ "$FAILS" = 0 ]
}
# What the host's kernel holds outside weft's own runtime: nftables and links.
kernel_state() {
  { nft list ruleset; ip -o link show | sed 's/^[0-9]*: //; s/ state .*//'; } 2>&1
}

# The VM image links the data disk's binary and unit for the other rigs;
# this guest uses only the package's.
systemctl disable --now weft.service >/dev/null 2>&1 || true
rm -f /etc/systemd/system/weft.service /usr/local/bin/weft
systemctl daemon-reload
before=$(kernel_state)

# --- install ------------------------------------------------------------------
cp /mnt/weft/weft_old.deb /mnt/weft/weft_new.deb /tmp/
out=$(apt-get install -y /tmp/weft_old.deb 2>&1) && r=0 || r=1
check "apt install ./weft_$OLD.deb" "$r" "$(tail -n 1 <<<"$out")"
check "the unit is enabled" "$(ok systemctl is-enabled weft.service)" "$(systemctl is-enabled weft.service 2>&1)"
until_ok 120 weft info && r=0 || r=1
check "the daemon runs and answers weft info" "$r" "$(systemctl is-active weft.service 2>&1)"
check "the unit runs /usr/bin/weft" "$(ok grep -q '^ExecStart=/usr/bin/weft daemon' /lib/systemd/system/weft.service)" \
  "$(grep '^ExecStart' /lib/systemd/system/weft.service)"
check "/etc/weft/daemon.json is a conffile" "$(ok dpkg-query --control-show weft conffiles)" \
  "$(dpkg-query --control-show weft conffiles 2>&1 | tr '\n' ' ')"
check "bash completion installed" "$(ok test -s /usr/share/bash-completion/completions/weft)" "/usr/share/bash-completion/completions/weft"
pages=$(find /usr/share/man/man1 -name 'weft*.1.gz' | wc -l)
[ "$pages" -gt 50 ] && r=0 || r=1
check "man pages installed" "$r" "$pages pages, e.g. $(ls /usr/share/man/man1/weft-service-create.1.gz 2>&1)"

# --- a cluster through the unit -------------------------------------------------
out=$(weft init --advertise-addr "$VM_IP" 2>&1) && r=0 || r=1
check "weft init through the packaged daemon" "$r" "$(head -n 1 <<<"$out")"
weft network create --driver overlay debnet >/dev/null 2>&1 && r=0 || r=1
check "weft network create" "$r" "debnet"
node_id=$(weft info -f '{{.Swarm.NodeID}}' 2>/dev/null || true)
until_ok 60 sh -c 'nft list tables | grep -q weft' && r=0 || r=1
[ "$r" = 0 ] && [ "$(kernel_state)" != "$before" ] && r=0 || r=1
check "the daemon made its tables and links" "$r" "$(nft list tables 2>&1 | grep weft | tr '\n' ' ')" 
pid_old=$(systemctl show -p MainPID --value weft.service)

# --- upgrade ------------------------------------------------------------------
out=$(apt-get install -y /tmp/weft_new.deb 2>&1) && r=0 || r=1
check "apt install ./weft_$NEW.deb (upgrade)" "$r" "$(grep -m1 -i 'unpacking' <<<"$out" || tail -n 1 <<<"$out")"
v=$(dpkg-query -W -f '${Version}' weft)
[ "$v" = "$NEW" ] && r=0 || r=1
check "dpkg has the new version" "$r" "$v"
until_ok 120 weft info && r=0 || r=1
pid_new=$(systemctl show -p MainPID --value weft.service)
[ "$r" = 0 ] && [ "$pid_new" != "$pid_old" ] && [ "$pid_new" != 0 ] && r=0 || r=1
check "the daemon was restarted by the upgrade" "$r" "pid $pid_old -> $pid_new"
until_ok 60 sh -c 'weft network ls | grep -q debnet' && r=0 || r=1
check "state survived the upgrade" "$r" "node $(weft info -f '{{.Swarm.NodeID}}' 2>&1) (was $node_id), debnet listed"
[ -s /var/lib/weft/format.json ] && r=0 || r=1
check "the data dir is stamped" "$r" "$(cat /var/lib/weft/format.json 2>&1)"

# --- remove, then purge -------------------------------------------------------
out=$(apt-get remove -y weft 2>&1) && r=0 || r=1
check "apt remove weft" "$r" "$(tail -n 1 <<<"$out")"
systemctl is-active -q weft.service && r=1 || r=0
check "remove stops the daemon" "$r" "$(systemctl is-active weft.service 2>&1)"
[ -d /var/lib/weft ] && [ -e /etc/weft/daemon.json ] && [ ! -e /usr/bin/weft ] && r=0 || r=1
check "remove keeps /var/lib/weft and the settings" "$r" "$(find /var/lib/weft -mindepth 1 -maxdepth 1 -printf '%f ' 2>&1)"
out=$(apt-get purge -y weft 2>&1) && r=0 || r=1
check "apt purge weft" "$r" "$(tail -n 1 <<<"$out")"
left=""
for p in /usr/bin/weft /usr/bin/weft-task-logger /lib/systemd/system/weft.service /var/lib/weft /etc/weft /run/weft; do
  [ -e "$p" ] && left="$left $p"
done
[ -z "$left" ] && r=0 || r=1
check "purge removes the binary, unit, state and settings" "$r" "${left:-nothing left}"
dpkg-query -W weft >/dev/null 2>&1 && st=$(dpkg-query -W -f '${db:Status-Status}' weft) || st=not-installed
[ "$st" = not-installed ] && r=0 || r=1
check "dpkg forgets the package" "$r" "$st"
after=$(kernel_state)
if [ "$before" = "$after" ]; then r=0; d="nftables and links as before install"; else r=1; d=$(diff <(echo "$before") <(echo "$after") | head -n 8 | tr '\n' ' '); fi
check "the kernel is as it was before install" "$r" "$d"

summary
