#!/usr/bin/env bash
# `make deb`: builds weft_<version>_<arch>.deb with dpkg-deb from a staged
# tree (no debhelper, no cargo-deb: nothing beyond dpkg, which every Debian
# host has).
#
#   bash deploy/deb/build.sh [OUT_DIR]
#
#   WEFT_DEB_BIN_DIR   where weft and weft-task-logger are (default
#                      target/release; `make deb` builds them there)
#   WEFT_DEB_VERSION   the package version (default: the workspace's)
#
# The package: /usr/bin/weft and /usr/bin/weft-task-logger (the daemon starts
# containers' loggers from beside its own binary), the systemd unit
# (deploy/systemd/weft.service with /usr/bin paths), /etc/weft/daemon.json
# (a conffile), bash/zsh/fish completions, one man page per command (`weft
# man`), README.Debian and the copyright file. Maintainer scripts (beside
# this file): enable and start the unit on install, restart it on upgrade
# (tasks run under their own shims and survive it), stop it on remove,
# remove /var/lib/weft and /run/weft only on purge.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$REPO/deploy/deb
OUT=${1:-$REPO/target/deb}
BIN=${WEFT_DEB_BIN_DIR:-$REPO/target/release}
VERSION=${WEFT_DEB_VERSION:-$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/Cargo.toml" | head -1)}
ARCH=$(dpkg --print-architecture)

die() { echo "deb: $*" >&2; exit 1; }
command -v dpkg-deb >/dev/null || die "dpkg-deb is missing (apt-get install dpkg)"
[ -n "$VERSION" ] || die "no version in Cargo.toml"
case $VERSION in
  [0-9]*) ;;
  *) die "version '$VERSION' does not start with a digit" ;;
esac
for b in weft weft-task-logger; do
  [ -x "$BIN/$b" ] || die "no $BIN/$b: cargo build --release (or set WEFT_DEB_BIN_DIR)"
done

mkdir -p "$OUT"
STAGE=$(mktemp -d "$OUT/.stage.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
chmod 0755 "$STAGE"

# Files.
install -D -m 0755 "$BIN/weft" "$STAGE/usr/bin/weft"
install -D -m 0755 "$BIN/weft-task-logger" "$STAGE/usr/bin/weft-task-logger"
strip --strip-unneeded "$STAGE/usr/bin/weft" "$STAGE/usr/bin/weft-task-logger" 2>/dev/null || true
install -d -m 0755 "$STAGE/lib/systemd/system"
sed -e 's#/usr/local/bin/weft#/usr/bin/weft#g' \
    -e 's#^\# Install: the binary as /usr/bin/weft, this file as$#\# Installed by the weft package (apt install ./weft_VERSION_ARCH.deb). By hand: the binary as /usr/bin/weft, this file as#' \
    "$REPO/deploy/systemd/weft.service" > "$STAGE/lib/systemd/system/weft.service"
chmod 0644 "$STAGE/lib/systemd/system/weft.service"
grep -q '^ExecStart=/usr/bin/weft daemon' "$STAGE/lib/systemd/system/weft.service" \
  || die "the unit's ExecStart does not run /usr/bin/weft"
install -D -m 0644 "$HERE/daemon.json" "$STAGE/etc/weft/daemon.json"

"$STAGE/usr/bin/weft" completion bash > "$STAGE/.bash"
"$STAGE/usr/bin/weft" completion zsh > "$STAGE/.zsh"
"$STAGE/usr/bin/weft" completion fish > "$STAGE/.fish"
install -D -m 0644 "$STAGE/.bash" "$STAGE/usr/share/bash-completion/completions/weft"
install -D -m 0644 "$STAGE/.zsh" "$STAGE/usr/share/zsh/vendor-completions/_weft"
install -D -m 0644 "$STAGE/.fish" "$STAGE/usr/share/fish/vendor_completions.d/weft.fish"
rm -f "$STAGE/.bash" "$STAGE/.zsh" "$STAGE/.fish"

"$STAGE/usr/bin/weft" man "$STAGE/usr/share/man/man1" >/dev/null
gzip -9n "$STAGE"/usr/share/man/man1/*.1
chmod 0644 "$STAGE"/usr/share/man/man1/*.1.gz

DOC=$STAGE/usr/share/doc/weft
install -D -m 0644 "$HERE/README.Debian" "$DOC/README.Debian"
install -m 0644 "$HERE/copyright" "$DOC/copyright"
{
  echo "weft ($VERSION) unstable; urgency=medium"
  echo
  echo "  * Built from $(git -C "$REPO" describe --always --dirty 2>/dev/null || echo 'a source tree')."
  echo
  echo " -- weft maintainers <maintainers@weft.invalid>  $(date -R -d "@${SOURCE_DATE_EPOCH:-$(date +%s)}")"
} | gzip -9n > "$DOC/changelog.Debian.gz"
chmod 0644 "$DOC/changelog.Debian.gz"

# Control.
install -d -m 0755 "$STAGE/DEBIAN"
SIZE=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@SIZE@/$SIZE/" \
    "$HERE/control" > "$STAGE/DEBIAN/control"
echo /etc/weft/daemon.json > "$STAGE/DEBIAN/conffiles"
for s in postinst prerm postrm; do
  install -m 0755 "$HERE/$s" "$STAGE/DEBIAN/$s"
done
(cd "$STAGE" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z \
  | xargs -0 md5sum) > "$STAGE/DEBIAN/md5sums"
chmod 0644 "$STAGE/DEBIAN/control" "$STAGE/DEBIAN/conffiles" "$STAGE/DEBIAN/md5sums"

DEB=$OUT/weft_${VERSION}_${ARCH}.deb
dpkg-deb --root-owner-group -Zxz --build "$STAGE" "$DEB" >/dev/null
echo "$DEB"
