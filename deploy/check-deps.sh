#!/usr/bin/env bash
# The dependency graph is the architecture (STYLE.md): fail on a forbidden edge.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
forbid() { # crate, forbidden deps...
  local crate=$1; shift
  local tree; tree=$(cargo tree -e normal --prefix none -p "$crate" --offline 2>/dev/null || cargo tree -e normal --prefix none -p "$crate")
  for dep in "$@"; do
    if grep -qE "^$dep v" <<<"$tree"; then echo "forbidden dependency: $crate -> $dep"; fail=1; fi
  done
}
# containerd's API is the worker's business: the manager and the wire format never compile it.
forbid weft-manager weft-overlay weft-worker rtnetlink nftables boringtun netlink-packet-route weft-containerd-api oci-spec
forbid weft-overlay weft-proto weft-manager weft-worker tonic openraft
forbid weft-proto weft-manager weft-worker weft-overlay openraft rtnetlink weft-containerd-api oci-spec
# A leaf: containerd's API knows nothing of weft.
forbid weft-containerd-api weft-proto weft-manager weft-worker weft-overlay openraft
forbid weft-worker weft-manager openraft
# The fault checker judges histories; it must not share code with what it judges.
forbid weft-faults weft-manager weft-worker weft-proto weft-overlay openraft
if [ $fail = 0 ]; then echo "dependency direction: ok"; fi
exit $fail
