#!/usr/bin/env bash
# Shared by the scripts that run inside test guests (sourced from the data
# disk, /mnt/weft, where vm_start puts it): the PASS/FAIL rows and waiting.
# The sourcing script declares RESULTS=() and FAILS=0.

note() { printf '[guest %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# check NAME OK(0|1) DETAIL: one row of the table.
check() {
  local r=PASS
  [ "$2" = 0 ] || { r=FAIL; FAILS=$((FAILS + 1)); }
  RESULTS+=("$(printf '%-4s  %-52s %s' "$r" "$1" "$3")")
  note "$r $1: $3"
}
# until_ok SECONDS CMD...: CMD every half second until it succeeds.
until_ok() {
  local deadline=$(( $(date +%s) + $1 ))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.5
  done
}
