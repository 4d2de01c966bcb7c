#!/usr/bin/env bash
# Runs inside the vm-test guest, as root (copied on its data disk, /mnt/weft,
# with the busybox image archive): proves weft's container resource limits
# on the guest's cgroup v2, as one single-node cluster. Prints a table of
# checks and exits non-zero on any FAIL. Every cgroup value is read from the
# kernel (/sys/fs/cgroup) for the container's pid as containerd reports it,
# not from weft.
set -Eeuo pipefail

IMG=weft-vm/busybox:latest
ARCHIVE=${WEFT_TEST_ARCHIVE:-/mnt/weft/busybox-oci.tar}
RESULTS=()
FAILS=0
r=0
# shellcheck source=/dev/null
. /mnt/weft/vm.env

# shellcheck source=deploy/vm/guest-lib.sh
. /mnt/weft/guest-lib.sh

# The container's cgroup directory, from containerd's pid of its task
# (containerd's container ID is weft's task ID, `weft inspect`'s Id).
cgroup_of() {
  local id pid rel
  id=$(weft inspect "$1" | sed -n 's/^ *"Id": "\([^"]*\)".*/\1/p' | head -1)
  [ -n "$id" ] || return 1
  pid=$(ctr -n weft task ls | awk -v id="$id" '$1 == id && $3 == "RUNNING" { print $2 }')
  [ -n "$pid" ] || return 1
  rel=$(sed -n 's/^0:://p' "/proc/$pid/cgroup")
  [ -n "$rel" ] && [ -d "/sys/fs/cgroup$rel" ] || return 1
  echo "/sys/fs/cgroup$rel"
}
# A key's value in a flat-keyed cgroup file (memory.events, pids.events).
key_of() { awk -v k="$2" '$1 == k { print $2 }' "$1"; }

t_cgroup2() {
  local fs ctl
  fs=$(stat -fc %T /sys/fs/cgroup)
  ctl=$(cat /sys/fs/cgroup/cgroup.controllers)
  [ "$fs" = cgroup2fs ] && r=0 || r=1
  check "/sys/fs/cgroup is cgroup v2" "$r" "stat -fc %T: $fs"
  local ok=0 c
  for c in cpu memory pids; do grep -qw "$c" <<<"$ctl" || ok=1; done
  check "cgroup.controllers has cpu memory pids" "$ok" "$ctl"
  [ "$fs" = cgroup2fs ] || { note "not cgroup v2: stopping"; summary; }
}

t_node() {
  systemctl daemon-reload
  systemctl start weft
  until_ok 120 weft info || { check "weft daemon answers" 1 "no answer in 120 s"; summary; }
  weft init --advertise-addr "$VM_IP" >/dev/null
  until_ok 60 weft node ls || true
  local out r
  out=$(weft image load -i "$ARCHIVE" --tag "$IMG" 2>&1) && r=0 || r=1
  check "weft image load -i (busybox-static OCI archive)" "$r" "$(tail -1 <<<"$out")"
}

t_memory() {
  # A child of the container's shell allocates (a string doubling, towards
  # 100 MB) past the 32 MiB limit; the shell itself survives, so the
  # cgroup stays to be read.
  # shellcheck disable=SC2016 # the container's shell expands these
  weft run -d --name mem --limit-memory 32m "$IMG" \
    sh -c '(s=x; while [ ${#s} -lt 104857600 ]; do s=$s$s; done; echo survived); echo "allocating child ended: $?"; exec sleep 600' >/dev/null
  local cg=""
  until_ok 180 cgroup_of mem && cg=$(cgroup_of mem)
  local max
  max=$(cat "$cg/memory.max" 2>/dev/null || echo "no cgroup")
  [ "$max" = 33554432 ] && r=0 || r=1
  check "--limit-memory 32m: memory.max" "$r" "$max ($cg)"
  until_ok 60 sh -c "[ \"\$(awk '\$1==\"oom_kill\"{print \$2}' $cg/memory.events)\" -ge 1 ]" || true
  local kills
  kills=$(key_of "$cg/memory.events" oom_kill 2>/dev/null || echo none)
  [ "${kills:-0}" -ge 1 ] 2>/dev/null && r=0 || r=1
  check "allocation past 32m: memory.events oom_kill >= 1" "$r" "oom_kill $kills"
  until_ok 30 sh -c 'weft logs mem | grep -q "allocating child ended"' || true
  local l
  l=$(weft logs mem 2>&1 | tr '\n' ' ')
  grep -q 'ended: 137' <<<"$l" && r=0 || r=1
  check "the allocating process was SIGKILLed" "$r" "log: $l"
  weft rm -f mem >/dev/null

  # The container's own process allocates: the task ends OOM-killed.
  # shellcheck disable=SC2016
  weft run -d --name oom --limit-memory 32m "$IMG" \
    sh -c 's=x; while [ ${#s} -lt 104857600 ]; do s=$s$s; done; echo survived' >/dev/null
  until_ok 60 sh -c 'weft ps -a | grep -w oom | grep -q exited' || true
  local ps insp
  ps=$(weft ps -a | grep -w oom || true)
  insp=$(weft inspect oom | grep -E '"OOMKilled"|"ExitCode"' | tr -s ' \n' ' ')
  grep -q 'OOM killed' <<<"$ps" && grep -q '"OOMKilled": true' <<<"$insp" && r=0 || r=1
  check "task past its limit: exited, OOM killed" "$r" "ps: $(tr -s ' ' <<<"$ps" | cut -c1-70); inspect:$insp"
  weft rm -f oom >/dev/null

  # A service restarts its OOM-killed replica (on-failure). `service ps`
  # lists only the current task of a slot, so the node's own list
  # (`weft ps -a`, which keeps the ended task) is sampled: an OOM-killed
  # task of the service, then another task in its slot.
  # shellcheck disable=SC2016
  weft service create -d --name oomsvc --limit-memory 32m --restart-condition on-failure \
    --restart-delay 1s --no-resolve-image "$IMG" \
    sh -c 'sleep 2; s=x; while [ ${#s} -lt 104857600 ]; do s=$s$s; done' >/dev/null
  local seen="" oomed="" deadline line id
  deadline=$(( $(date +%s) + 180 ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    while read -r line; do
      id=${line%% *}
      [ -n "$id" ] || continue
      grep -qw "$id" <<<"$seen" || seen="$seen $id"
      if grep -q 'OOM killed' <<<"$line" && ! grep -qw "$id" <<<"$oomed"; then oomed="$oomed $id"; fi
    done < <(weft ps -a | grep -w 'oomsvc\.1\.[0-9a-f]*' || true)
    [ -n "$oomed" ] && [ "$(wc -w <<<"$seen")" -ge 2 ] && break
    sleep 1
  done
  [ -n "$oomed" ] && [ "$(wc -w <<<"$seen")" -ge 2 ] && r=0 || r=1
  check "service on-failure: OOM-killed replica restarted" "$r" "OOM-killed tasks:$oomed; tasks of slot 1 seen:$seen"
  weft service rm oomsvc >/dev/null
}

t_cpu() {
  weft run -d --name cpu --limit-cpu 0.5 "$IMG" sleep 600 >/dev/null
  local cg="" v
  until_ok 180 cgroup_of cpu && cg=$(cgroup_of cpu)
  v=$(cat "$cg/cpu.max" 2>/dev/null || echo "no cgroup")
  [ "$v" = "50000 100000" ] && r=0 || r=1
  check "--limit-cpu 0.5: cpu.max" "$r" "$v"
  weft rm -f cpu >/dev/null
}

t_pids() {
  # The container's own process only sleeps (a shell whose fork fails
  # exits), so the cgroup stays while shells exec'd into it fork.
  weft run -d --name pids --limit-pids 20 "$IMG" sleep 600 >/dev/null
  local cg="" v out
  until_ok 180 cgroup_of pids && cg=$(cgroup_of pids)
  v=$(cat "$cg/pids.max" 2>/dev/null || echo "no cgroup")
  [ "$v" = 20 ] && r=0 || r=1
  check "--limit-pids 20: pids.max" "$r" "$v"
  # 40 background sleeps: the forks past the limit fail inside.
  # shellcheck disable=SC2016
  out=$(timeout 120 weft exec pids sh -c 'i=0; while [ $i -lt 40 ]; do sleep 600 >/dev/null 2>&1 & i=$((i+1)); done; echo forked $i' 2>&1 || true)
  local cur ev
  cur=$(cat "$cg/pids.current" 2>/dev/null || echo none)
  ev=$(key_of "$cg/pids.events" max 2>/dev/null || echo none)
  [ "$cur" -le 20 ] 2>/dev/null && [ "$ev" -ge 1 ] 2>/dev/null && grep -q "can't fork" <<<"$out" && r=0 || r=1
  check "40 forks under pids.max 20 fail inside" "$r" "pids.current $cur, pids.events max $ev, exec: $(tr '\n' ' ' <<<"$out" | cut -c1-60)"
  timeout 60 weft rm -f pids >/dev/null || true

  # A fork bomb: contained, and the guest and weft carry on.
  weft run -d --name bomb --limit-pids 20 "$IMG" sleep 600 >/dev/null
  until_ok 180 cgroup_of bomb && cg=$(cgroup_of bomb)
  # shellcheck disable=SC2016
  timeout 60 weft exec bomb sh -c 'f() { f | f & }; f >/dev/null 2>&1 </dev/null' >/dev/null 2>&1 || true
  sleep 5 # the bomb runs against its limit while the guest is checked
  local t0 ok=0 other
  t0=$(date +%s%3N)
  other=$(timeout 120 weft run --rm "$IMG" echo alive 2>&1) || ok=1
  [ "$other" = alive ] || ok=1
  timeout 30 weft info >/dev/null || ok=1
  cur=$(cat "$cg/pids.current" 2>/dev/null || echo none)
  ev=$(key_of "$cg/pids.events" max 2>/dev/null || echo none)
  [ "$cur" -le 20 ] 2>/dev/null && [ "$ev" -ge 1 ] 2>/dev/null || ok=1
  check "fork bomb contained, guest fine" "$ok" "pids.current $cur, failed forks $ev; another container ran ('$other') in $(( $(date +%s%3N) - t0 )) ms"
  timeout 60 weft rm -f bomb >/dev/null && r=0 || r=1
  check "fork bomb removed" "$r" "weft rm -f bomb"
}

t_reserve() {
  local mem
  mem=$(awk '/MemTotal/ { print int($2 / 1024) }' /proc/meminfo)
  weft service create -d --name big --reserve-memory 64g --no-resolve-image "$IMG" sleep 600 >/dev/null
  until_ok 60 sh -c 'weft service ps big | grep -qi pending' || true
  local sps
  sps=$(weft service ps big)
  grep -qi pending <<<"$sps" && grep -qi memory <<<"$sps" && r=0 || r=1
  check "--reserve-memory 64g (guest: ${mem} MiB): pending" "$r" "$(tail -n +2 <<<"$sps" | tr -s ' ' | head -1 | cut -c1-110)"
  weft service rm big >/dev/null
}

summary() {
  echo
  echo "vm-test on $(uname -r), $(stat -fc %T /sys/fs/cgroup), weft $(weft --version 2>/dev/null | awk '{print $2}')"
  printf '%s\n' "${RESULTS[@]}"
  echo "$(( ${#RESULTS[@]} - FAILS )) passed, $FAILS failed"
  [ "$FAILS" = 0 ] && exit 0
  exit 1
}

main() {
  # An unexpected failure is a FAIL row, and the table is still printed.
  trap 'trap - ERR; check "no unexpected error" 1 "line $LINENO: $BASH_COMMAND"; summary' ERR
  t_cgroup2
  t_node
  t_memory
  t_cpu
  t_pids
  t_reserve
  summary
}

# Sourced (to run one check by hand in a guest), it only defines the checks.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then main "$@"; fi
