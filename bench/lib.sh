# bench/lib.sh — the pieces bench/overlay.sh and bench/wg.sh share. Sourced
# (after `set -euo pipefail`), with BENCH_TAG naming the caller in its log.
#
# Both run ignored tests of one test target in release mode under a work
# directory they own, then assemble the markdown fragments the tests wrote
# into a results file.

log() { printf '[%s] %s\n' "$BENCH_TAG" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Installs the Debian packages of the missing tools: "binary:package ...".
bench_tools() {
  local t bin pkg missing=""
  for t in "$@"; do
    bin=${t%%:*}; pkg=${t##*:}
    command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || missing="$missing $pkg"
  done
  [ -n "$missing" ] || return 0
  log "installing:$missing"
  apt-get update -qq
  # iperf3's package asks whether to start a system daemon; we do not want one.
  echo "iperf3 iperf3/start_daemon boolean false" | debconf-set-selections 2>/dev/null || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
}

# Builds the release binary of test target $1, unless BENCH_SKIP_BUILD=1.
bench_build() {
  [ "${BENCH_SKIP_BUILD:-0}" != 1 ] || return 0
  log "building weft and the benchmark harness (release)"
  cargo test --release -q --test "$1" --no-run 2>&1 | grep -v '^\s*Executable' >&2 || true
}

# Pins (nsfs mounts) left under $WORK by an interrupted test: kill what
# lives in them (by pid: daemons, iperf3, ...), unmount them. The tests' own
# guards normally leave none.
bench_clear_pins() {
  local pins pin ino pid
  pins=$(awk -v w="$WORK/" '{ for (i = 7; i < NF; i++) if ($i == "-") {
      if ($(i + 1) == "nsfs" && index($5, w) == 1) print $5; break } }' /proc/self/mountinfo | sort -ru)
  [ -n "$pins" ] || return 0
  for pin in $pins; do
    ino=$(stat -L -c %i "$pin" 2>/dev/null) || continue
    for pid in $(ls /proc | grep -E '^[0-9]+$'); do
      [ "$(stat -L -c %i "/proc/$pid/ns/net" 2>/dev/null)" = "$ino" ] && kill -KILL "$pid" 2>/dev/null || true
    done
  done
  for pin in $pins; do umount -l "$pin" 2>/dev/null || true; done
}

bench_cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  bench_clear_pins
  if declare -F bench_extra_cleanup >/dev/null; then bench_extra_cleanup; fi
  if [ "${BENCH_KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}

# Creates WORK (/tmp/weft-bench-$1.XXXXXX) with FRAG (the tests' fragments)
# in it, and cleans up on exit, failure or interrupt: pins cleared, the
# caller's bench_extra_cleanup (if it defines one) run, the directory
# removed unless BENCH_KEEP=1.
bench_workdir() {
  WORK=$(mktemp -d "/tmp/weft-bench-$1.XXXXXX")
  FRAG=$WORK/fragments
  mkdir -p "$FRAG"
  trap bench_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# The revision the results name: BENCH_REV, or HEAD (+ local changes).
bench_rev() {
  if [ -n "${BENCH_REV:-}" ]; then
    echo "$BENCH_REV"
    return
  fi
  local rev
  rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
  if [ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ]; then rev+=" + local changes"; fi
  echo "$rev"
}

bench_cpu() { sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1; }

# Writes "# $1", the paragraph $2 and every fragment to OUT ("-": stdout).
bench_results() {
  {
    echo "# $1"
    echo
    echo "$2"
    echo
    for f in "$FRAG"/*.md; do
      [ -f "$f" ] && cat "$f"
    done
  } >"$WORK/results.md"
  if [ "$OUT" = - ]; then
    cat "$WORK/results.md"
  else
    cp "$WORK/results.md" "$OUT"
    log "wrote $OUT"
  fi
}
