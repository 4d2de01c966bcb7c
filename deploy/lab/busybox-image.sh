#!/usr/bin/env bash
# Builds the small test/demo image, an OCI image archive of this machine's
# busybox-static, offline with umoci:
#
#   bash deploy/lab/busybox-image.sh ARCHIVE
#
# Used by `make demo` (deploy/lab/demo.sh) and `make vm-test` (deploy/vm/test.sh).
set -euo pipefail

ARCHIVE=$1
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
(
  cd "$t"
  umoci init --layout layout
  umoci new --image layout:latest
  umoci unpack --image layout:latest bundle
  mkdir -p bundle/rootfs/bin bundle/rootfs/etc bundle/rootfs/tmp bundle/rootfs/proc \
    bundle/rootfs/sys bundle/rootfs/dev bundle/rootfs/var/www
  chmod 1777 bundle/rootfs/tmp
  cp /bin/busybox bundle/rootfs/bin/busybox
  for a in $(/bin/busybox --list); do
    [ "$a" = busybox ] || ln -sf busybox "bundle/rootfs/bin/$a"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > bundle/rootfs/etc/passwd
  printf 'root:x:0:\nnogroup:x:65534:\n' > bundle/rootfs/etc/group
  umoci repack --image layout:latest bundle
  umoci config --image layout:latest --os linux --architecture amd64 \
    --config.env PATH=/bin --config.workingdir / --config.cmd /bin/sh
  tar -C layout -cf image.tar .
) >/dev/null
mkdir -p "$(dirname "$ARCHIVE")"
mv "$t/image.tar" "$ARCHIVE"
