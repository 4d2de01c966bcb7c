#!/usr/bin/env bash
# The checks are functions run through until_ok and wait_for:
# shellcheck disable=SC2317
# `make vm-rig-test`: weft as an operator runs it, on five Debian 12 QEMU
# guests (3 managers, 2 workers) installed from the .deb (issue #20):
#
#   1. every guest installs weft_<version>~prev.deb; the cluster forms
#      through the packaged unit;
#   2. an encrypted overlay and a 3-replica service; a client task on w2
#      asks http://web/ (the VIP, by name) every half second; the private
#      bridge carries WireGuard and no VXLAN;
#   3. w1 reboots: its node comes back by itself, the service runs 3;
#   4. the leader (m1) reboots: a new leader is elected, writes resume, m1
#      comes back as a follower;
#   5. rolling upgrade, one node at a time, to weft_<version>.deb with
#      `apt install`, while the client keeps asking: no failed request
#      beyond the node being upgraded (one running the client or a replica:
#      its WireGuard pauses while its daemon restarts), and `node ls` shows
#      every node at the new version;
#   6. a node running a replica loses power (QEMU killed): it is marked
#      Down and the service runs 3 again elsewhere (timed).
#
# The old package is built from WEFT_VM_OLD_BIN_DIR (a previous release's
# weft and weft-task-logger, packed as version WEFT_VM_OLD_VERSION) when
# set; otherwise from this tree built with WEFT_VERSION=<version>~prev, so
# nodes report the old version (this project has no release tag yet). When
# the old release predates a command of the new one (0.1.x: IPv6 networks),
# the upgrade also checks the version gate: refused while an old manager
# remains, accepted once all are new. The new one from the debug build
# (WEFT_DEB_BIN_DIR). Prints a PASS/FAIL table and the timings; removes the
# guests, overlays and namespace on every exit. State: target/vm/rigtest/.
set -euo pipefail
# shellcheck source=deploy/vm/common.sh
. "$(dirname "$0")/common.sh"
# shellcheck source=deploy/vm/guest-lib.sh
. "$REPO/deploy/vm/guest-lib.sh"

DIR=$VM_DIR/rigtest
BOOT_TIMEOUT=${WEFT_VM_BOOT_TIMEOUT:-900}
RESULTS=()
FAILS=0
TIMINGS=()
GUESTS=("m1 198.18.0.11" "m2 198.18.0.12" "m3 198.18.0.13" "w1 198.18.0.21" "w2 198.18.0.22")

on() { vm_ssh "$DIR" "$@"; }
elapsed() { secs $(( $(now_ms) - $1 )); }

# The old binaries: a previous release's, or this tree stamped <version>~prev.
old_bins() {
  if [ -n "${WEFT_VM_OLD_BIN_DIR:-}" ]; then return 0; fi
  local v
  v=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/Cargo.toml" | head -1)
  log "building this tree as weft $v~prev (the old version of the upgrade)"
  (cd "$REPO" && WEFT_VERSION="$v~prev" cargo build -q -p weft -p weft-worker --bins)
  mkdir -p "$DIR/prev"
  cp "$REPO/target/debug/weft" "$REPO/target/debug/weft-task-logger" "$DIR/prev/"
  (cd "$REPO" && cargo build -q -p weft -p weft-worker --bins)
  export WEFT_VM_OLD_BIN_DIR=$DIR/prev
}

# install NAME DEB: apt install of the data disk's DEB, then weft answers.
install() {
  on "$1" "systemctl disable --now weft >/dev/null 2>&1 || true
    rm -f /etc/systemd/system/weft.service /usr/local/bin/weft
    systemctl daemon-reload
    cp /mnt/weft/$2 /tmp/ && DEBIAN_FRONTEND=noninteractive apt-get install -y /tmp/$2 >/tmp/apt.log 2>&1 || { tail -n 5 /tmp/apt.log; exit 1; }
    for i in \$(seq 1 360); do weft info >/dev/null 2>&1 && exit 0; sleep 0.5; done
    echo 'weft does not answer'; exit 1"
}

# upgrade NAME DEB: what an operator runs to upgrade a node (the package's
# postinst restarts the daemon), then weft answers.
upgrade() {
  on "$1" "cp /mnt/weft/$2 /tmp/ && DEBIAN_FRONTEND=noninteractive apt-get install -y /tmp/$2 >/tmp/apt.log 2>&1 || { tail -n 5 /tmp/apt.log; exit 1; }
    for i in \$(seq 1 360); do weft info >/dev/null 2>&1 && exit 0; sleep 0.5; done
    echo 'weft does not answer'; exit 1"
}

# nodes FROM: "HOSTNAME|STATUS|MANAGER-STATUS|VERSION" per node, from FROM
# (a worker's manager status is empty).
nodes() {
  on "$1" "weft node ls --format '{{.Hostname}}|{{.Status}}|{{.ManagerStatus}}|{{.EngineVersion}}'"
}
# ready FROM N: FROM lists N nodes, all Ready.
ready() {
  local out
  out=$(nodes "$1") || return 1
  [ "$(awk -F'|' '$2 == "Ready"' <<<"$out" | wc -l)" -ge "$2" ] && [ -z "$(awk -F'|' '$2 != "Ready"' <<<"$out")" ]
}
# running FROM SERVICE N [NODE]: N tasks of SERVICE running (on nodes
# other than NODE, when given).
running() {
  local out
  out=$(on "$1" "weft service ps $2") || return 1
  out=$(grep ' running ' <<<"$out" || true)
  [ -z "${4:-}" ] || out=$(grep -v " $4 " <<<"$out" || true)
  [ "$(grep -c . <<<"$out" || true)" -ge "$3" ]
}
# row FROM NAME: NAME's line of nodes.
row() { nodes "$1" | awk -F'|' -v n="$2" '$1 == n'; }
# leader_of FROM: the leader's hostname, as FROM sees it.
leader_of() { nodes "$1" | awk -F'|' '$3 == "Leader" { print $1 }'; }
new_leader() {
  local l
  l=$(leader_of m2) && [ -n "$l" ] && [ "$l" != m1 ]
}
# at_new FROM NAME: every node Ready and NAME at the new version.
at_new() { ready "$1" 5 && [ "$(row "$1" "$2" | awk -F'|' '{ print $4 }')" = "$DEB_NEW" ]; }
# client_lines: the client's log lines ("EPOCH ok|fail"), from w2.
client_lines() { on w2 'weft logs client 2>/dev/null' | grep -E '^[0-9]+ (ok|fail)$' || true; }
client_ok() { client_lines | grep -q ok; }

# reboot NAME: reboots the guest (QEMU ends: -no-reboot) and boots it again.
reboot() {
  local p
  p=$(vm_pid "$DIR" "$1") || return 1
  on "$1" 'systemd-run --on-active=1 /bin/systemctl reboot' >/dev/null 2>&1 || true
  wait_for 300 "$1 to go down" test ! -e "/proc/$p" || return 1
  vm_launch "$DIR" "$1"
  vm_wait "$DIR" "$1" >/dev/null
}

main() {
  [ "$(id -u)" = 0 ] || die "vm-rig-test needs root (namespaces, taps)"
  local t0 t r
  t0=$(now_ms)
  teardown "$DIR" || true
  mkdir -p "$DIR"
  trap teardown_trap EXIT
  trap 'exit 130' INT TERM
  old_bins
  build_debs "$DIR/debs"
  netns_up "$DIR"
  bridge_up "$DIR"
  keys_up "$DIR"

  # 1. Boot, install the old package, form the cluster.
  log "booting 3 managers + 2 workers (accelerator: $ACCEL, ${VM_MEM} MiB and 1 vCPU each)"
  local g
  for g in "${GUESTS[@]}"; do
    vm_start "$DIR" "${g% *}" "${g#* }" "$DIR/debs/weft_old.deb" "$DIR/debs/weft_new.deb"
  done
  for g in "${GUESTS[@]}"; do
    vm_wait "$DIR" "${g% *}" >/dev/null || die "${g% *} did not boot"
  done
  TIMINGS+=("boot of 5 guests (qemu start to ssh): $(elapsed "$t0") s")
  t=$(now_ms)
  for g in "${GUESTS[@]}"; do
    install "${g% *}" weft_old.deb || die "cannot install weft_old.deb on ${g% *}"
  done
  # shellcheck disable=SC2016 # ${Version} is dpkg-query's, on the guest
  check "weft_$DEB_OLD.deb installed on 5 guests" 0 "$(on m1 'dpkg-query -W -f "\${Version}" weft')"
  on m1 'weft init --advertise-addr 198.18.0.11' >/dev/null
  local mtok wtok
  mtok=$(on m1 'weft join-token -q manager')
  wtok=$(on m1 'weft join-token -q worker')
  for g in "${GUESTS[@]:1}"; do
    local tok=$wtok
    [[ $g == m* ]] && tok=$mtok
    on "${g% *}" "weft join --token $tok --advertise-addr ${g#* } 198.18.0.11:4377" >/dev/null
  done
  wait_for 300 "5 ready nodes" ready m1 5 && r=0 || r=1
  check "5 nodes Ready through the packaged unit" "$r" "$(nodes m1 | awk -F'|' '{ print $1, $2, $4 }' | tr '\n' ' ')"
  TIMINGS+=("install + cluster formation: $(elapsed "$t") s")
  [ "$r" = 0 ] || { summary_and_exit; }

  # 2. An encrypted overlay, a service, a client through the VIP by name.
  on m1 'weft network create --driver overlay --attachable --opt encrypted --subnet 10.60.0.0/24 appnet' >/dev/null
  t=$(now_ms)
  on m1 "weft service create -d --name web --replicas 3 --network appnet \
    -- sh -c 'mkdir -p /tmp/www; hostname > /tmp/www/index.html; exec busybox httpd -f -p 80 -h /tmp/www'" >/dev/null
  wait_for 300 "3 web tasks running" running m1 web 3 && r=0 || r=1
  check "service web: 3 replicas running" "$r" "$(on m1 'weft service ps web' | grep -c ' running ') running"
  local out
  if ! out=$(on w2 "weft run -d --name client --network appnet -- sh -c 'while :; do \
    if timeout 3 busybox wget -q -O /dev/null http://web/; then echo \$(date +%s) ok; else echo \$(date +%s) fail; fi; \
    sleep 0.5; done'" 2>&1); then
    check "a client task on w2" 1 "$out"
    summary_and_exit
  fi
  until_ok 180 client_ok && r=0 || r=1
  check "a client on w2 reaches http://web/ (VIP, by name)" "$r" "$(client_lines | grep -c ok) answers"
  TIMINGS+=("service create -> 3 running and answering through the VIP: $(elapsed "$t") s")
  # appnet's own VXLAN packets (its VNI) must never be on the bridge: they
  # travel inside WireGuard. Other VXLAN (another network's) is counted apart.
  local vni vx other wg
  vni=$(on m1 "weft network inspect -f '{{.VNI}}' appnet")
  # (Packet lines only: tcpdump ended by timeout prints an empty line.)
  vx=$(in_ns "$DIR" timeout 10 tcpdump -ni br0 -c 500 "udp port 4789 and (udp[12:4] >> 8) = $vni" 2>/dev/null | grep -c ' IP ' || true)
  other=$(in_ns "$DIR" timeout 5 tcpdump -ni br0 -c 500 "udp port 4789 and (udp[12:4] >> 8) != $vni" 2>/dev/null | grep -c ' IP ' || true)
  wg=$(in_ns "$DIR" timeout 8 tcpdump -ni br0 -c 20 'udp port 51820' 2>/dev/null | grep -c ' IP ' || true)
  [ "$vx" = 0 ] && [ "$wg" -gt 0 ] && r=0 || r=1
  check "appnet's traffic crosses the bridge only in WireGuard" "$r" "10 s: $vx VXLAN packets of VNI $vni, ${wg}+ WireGuard packets (other VNIs in 5 s: $other)"

  # 3. A worker reboots.
  t=$(now_ms)
  reboot w1 && r=0 || r=1
  check "w1 rebooted" "$r" "$(elapsed "$t") s to ssh"
  wait_for 300 "w1 back and Ready" ready m1 5 && r=0 || r=1
  check "w1's node is back by itself" "$r" "$(row m1 w1)"
  wait_for 300 "3 web tasks running" running m1 web 3 && r=0 || r=1
  check "web runs 3 after w1's reboot" "$r" "$(elapsed "$t") s after the reboot began"
  TIMINGS+=("worker reboot -> node Ready and 3 replicas running: $(elapsed "$t") s")

  # 4. The leader reboots.
  [ "$(leader_of m2)" = m1 ] && r=0 || r=1
  check "m1 leads before its reboot" "$r" "$(leader_of m2)"
  t=$(now_ms)
  local p
  p=$(vm_pid "$DIR" m1)
  on m1 'systemd-run --on-active=1 /bin/systemctl reboot' >/dev/null 2>&1 || true
  until_ok 120 new_leader && r=0 || r=1
  check "a new leader is elected" "$r" "$(leader_of m2 2>/dev/null) after $(elapsed "$t") s"
  TIMINGS+=("leader reboot -> new leader: $(elapsed "$t") s")
  on m2 'weft network create --driver overlay afterreboot' >/dev/null && r=0 || r=1
  check "writes resume without m1" "$r" "network create on m2"
  wait_for 300 "m1's qemu to end" test ! -e "/proc/$p" || true
  vm_launch "$DIR" m1
  vm_wait "$DIR" m1 >/dev/null && r=0 || r=1
  wait_for 300 "m1 back" ready m2 5 && r=0 || r=1
  local m1row
  m1row=$(row m2 m1)
  grep -q Reachable <<<"$m1row" && r=0 || r=1
  check "m1 rejoins as a follower" "$r" "$m1row"

  # 5. Rolling upgrade while the client asks.
  wait_for 120 "3 web tasks running" running m2 web 3 || true
  # The nodes whose restart may cost a request (issue #20: "no failed
  # request beyond the node being restarted"): the client's own (w2: its
  # resolver and tunnel) and those running a web replica. A daemon restart
  # pauses the node's WireGuard (it runs in the daemon) for the restart.
  local involved
  involved=" w2 $(on m2 'weft service ps web' | awk 'NR > 1 && / running / { print $0 }' \
    | grep -oE ' (m|w)[0-9] ' | tr -d ' ' | sort -u | tr '\n' ' ' || true)"
  local before fails_before total_before from
  before=$(date +%s)
  fails_before=$(client_lines | grep -c fail || true)
  total_before=$(client_lines | wc -l)
  t=$(now_ms)
  local windows=()
  for g in "${GUESTS[@]}"; do
    local n=${g% *} tn
    tn=$(now_ms)
    upgrade "$n" weft_new.deb && r=0 || r=1
    from=m2
    [ "$n" = m2 ] && from=m1
    until_ok 300 at_new "$from" "$n" || r=1
    check "$n upgraded with apt install ./weft_$DEB_NEW.deb" "$r" "$(row "$from" "$n") in $(elapsed "$tn") s"
    windows+=("$n $((tn / 1000)) $(date +%s)")
    [ "$n" != m1 ] || gate_refuses
  done
  TIMINGS+=("rolling upgrade of 5 nodes: $(elapsed "$t") s")
  sleep 5
  local fails total fails_at="" beyond=0
  fails=$(( $(client_lines | grep -c fail || true) - fails_before ))
  total=$(( $(client_lines | wc -l) - total_before ))
  # Each failure with the node whose upgrade was under way (the client's
  # clock is w2's; the guests' clocks follow the host's within a second).
  local when w at who
  for when in $(client_lines | awk -v b="$before" '$1 >= b && $2 == "fail" { print $1 }'); do
    at="between upgrades"
    who=""
    for w in "${windows[@]}"; do
      read -r n start end <<<"$w"
      if [ "$when" -ge "$start" ] && [ "$when" -le "$end" ]; then
        at="during $n's upgrade"
        who=$n
      fi
    done
    [[ $involved == *" $who "* ]] || beyond=$((beyond + 1))
    log "failed request at $(date -d "@$when" +%T), $at"
    fails_at+=" $(date -d "@$when" +%T) ($at)"
  done
  [ "$total" -gt 0 ] && [ "$beyond" = 0 ] && r=0 || r=1
  check "no failed request beyond the node being upgraded" "$r" \
    "$total requests since $(date -d "@$before" +%T), $fails failed${fails_at:+:$fails_at}; client and replicas on:$involved"
  local versions
  versions=$(nodes m1 | awk -F'|' '{ print $1 "=" $4 }' | tr '\n' ' ')
  [ "$(nodes m1 | awk -F'|' '{ print $4 }' | sort -u)" = "$DEB_NEW" ] && r=0 || r=1
  check "node ls shows every node at $DEB_NEW" "$r" "$versions"
  gate_opens
  power_cut
  summary_and_exit
}

# 6. A node running a replica loses power (its QEMU killed: no connection
# closes, so missed heartbeats find it): the time to Down and to 3 replicas
# running elsewhere, the VM side of the namespace rig's "silent host"
# (BENCHMARKS.md). The victim runs a web replica and is neither the client's
# node (w2) nor the leader. Each poll is an ssh command, about a second
# under TCG: the times are good to a second.
power_cut() {
  local leader victim t r down p last
  leader=$(leader_of m2)
  victim=$(on m2 'weft service ps web' | awk 'NR > 1 && / running /' | grep -oE ' (m|w)[0-9] ' \
    | tr -d ' ' | grep -vx -e w2 -e "$leader" | head -1 || true)
  [ -n "$victim" ] || { check "a node to cut off (a replica, not w2, not the leader)" 1 "none"; return; }
  local from=$leader
  p=$(vm_pid "$DIR" "$victim") || { check "$victim's qemu" 1 "not running"; return; }
  t=$(now_ms)
  kill -9 "$p"
  until_ok 60 node_is "$from" "$victim" Down && r=0 || r=1
  down=$(elapsed "$t")
  check "$victim's power cut: marked Down (from $from)" "$r" "$down s"
  until_ok 120 running "$from" web 3 "$victim" && r=0 || r=1
  local again
  again=$(elapsed "$t")
  check "web runs 3 again without $victim" "$r" "$again s after the cut"
  # The client's requests from the cut on (its clock is w2's), 10 s on.
  sleep 10
  local after
  after=$(client_lines | awk -v b="$((t / 1000))" '$1 >= b')
  last=$(awk '$2 == "fail" { l = $1 } END { print l }' <<<"$after")
  TIMINGS+=("power cut of $victim (a replica) -> Down: $down s; -> 3 replicas running elsewhere: $again s; client requests since the cut: $(grep -c . <<<"$after" || true), $(grep -c fail <<<"$after" || true) failed, the last $([ -n "$last" ] && echo "$((last - t / 1000)) s after the cut" || echo none)")
}
# node_is FROM NAME STATUS: FROM lists NAME with STATUS.
node_is() { [ "$(row "$1" "$2" | awk -F'|' '{ print $2 }')" = "$3" ]; }

# The version gate, when the old release is 0.1.x (before IPv6 networks):
# with m1 new and m2, m3 old, an IPv6 network is refused, naming them...
GATED=0
gate_refuses() {
  local old out r
  old=$(row m2 m2 | awk -F'|' '{ print $4 }')
  case "$old" in
    0.1.*) ;;
    *) log "version gate not exercised: the old managers report $old"; return 0 ;;
  esac
  GATED=1
  out=$(on m1 'weft network create --driver overlay --ipv6 gated6 2>&1') && r=1 || r=0
  grep -q m2 <<<"$out" && grep -q m3 <<<"$out" || r=1
  check "version gate: an IPv6 network refused while m2, m3 run $old" "$r" "$(tr '\n' ' ' <<<"$out" | head -c 240)"
}
# ...and accepted once every manager runs the new one.
gate_opens() {
  [ "$GATED" = 1 ] || return 0
  local out r
  out=$(on m1 'weft network create --driver overlay --ipv6 gated6 2>&1') && r=0 || r=1
  check "version gate: the IPv6 network accepted with every manager at $DEB_NEW" "$r" "$(tr '\n' ' ' <<<"$out" | head -c 240)"
}

summary_and_exit() {
  echo
  printf '%s\n' "${RESULTS[@]}"
  echo
  printf '%s\n' "${TIMINGS[@]}"
  echo "$(( ${#RESULTS[@]} - FAILS )) passed, $FAILS failed ($ACCEL)"
  [ "$FAILS" = 0 ] && exit 0
  exit 1
}

main "$@"
