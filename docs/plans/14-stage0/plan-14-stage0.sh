#!/usr/bin/env bash
# Stage 0 of plan-14: a private containerd + runc, run by hand. Root only.
# Everything lives under one temp dir; the EXIT trap tears it all down even on failure.
set -euo pipefail
T=$(mktemp -d /tmp/weft-s0.XXXXXX)
SOCK=$T/containerd.sock
NS=weft-test
CG=/weft-s0-$$                 # per-run cgroup parent in every v1 hierarchy
CTR=(ctr -a "$SOCK" -n "$NS")
RUNC_ROOT=$T/runc
CPID=""
log() { printf '\n### %s\n' "$*"; }
ms() { date +%s%3N; }

cleanup() {
  local rc=$?
  set +e
  log "cleanup (exit status $rc)"
  if [ -S "$SOCK" ]; then
    for c in $("${CTR[@]}" tasks ls -q 2>/dev/null); do
      "${CTR[@]}" tasks kill -s SIGKILL "$c" 2>/dev/null
      for _ in $(seq 50); do "${CTR[@]}" tasks ls 2>/dev/null | grep -q "^$c .*RUNNING" || break; sleep 0.1; done
      "${CTR[@]}" tasks delete "$c" || echo "task delete $c failed"
    done
    for c in $("${CTR[@]}" containers ls -q 2>/dev/null); do
      "${CTR[@]}" containers delete "$c" || echo "container delete $c failed"
    done
    for i in $("${CTR[@]}" images ls -q 2>/dev/null); do "${CTR[@]}" images rm "$i" >/dev/null; done
  fi
  if [ -n "$CPID" ] && kill -0 "$CPID" 2>/dev/null; then
    kill -TERM "$CPID"
    for _ in $(seq 100); do kill -0 "$CPID" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$CPID" 2>/dev/null && { echo "containerd ignored SIGTERM, SIGKILL"; kill -KILL "$CPID"; }
    wait "$CPID" 2>/dev/null
  fi
  # Shims outlive containerd by design: kill any that is left.
  for f in $(find "$T/state" -name shim.pid 2>/dev/null); do
    p=$(cat "$f"); echo "leftover shim $p ($f)"; kill -KILL "$p" 2>/dev/null
  done
  for h in /sys/fs/cgroup/*/; do
    [ -d "$h$CG" ] || continue
    find "$h$CG" -depth -type d -exec rmdir {} \; 2>/dev/null || echo "cannot rmdir $h$CG"
  done
  # Deepest mounts first.
  findmnt -rn -o TARGET | grep "^$T" | sort -r | while read -r m; do umount -l "$m" || echo "umount $m failed"; done
  rm -rf "$T" || echo "rm -rf $T failed"
  log "after cleanup"
  echo "leftover mounts under $T: $(findmnt -rn -o TARGET | grep -c "^$T" || true)"
  echo "leftover cgroups: $(ls -d /sys/fs/cgroup/*$CG 2>/dev/null | wc -l)"
  echo "/run/containerd: $(find /run/containerd 2>/dev/null | tr '\n' ' ')"
  exit $rc
}
trap cleanup EXIT

log "versions"
uname -r; containerd --version; runc --version | head -1; ctr --version; umoci --version; skopeo --version
file -L /bin/busybox | cut -d, -f1,5
echo "/run/containerd before: $(ls -A /run/containerd 2>&1)"

log "config"
mkdir -p "$T/root" "$T/state" "$T/opt" "$RUNC_ROOT" "$T/fifo"
cat > "$T/config.toml" <<EOF
version = 2
root  = "$T/root"
state = "$T/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$T/opt"
EOF
cat "$T/config.toml"

log "start containerd"
t0=$(ms)
containerd --config "$T/config.toml" >"$T/containerd.log" 2>&1 &
CPID=$!
until "${CTR[@]}" version >/dev/null 2>&1; do
  kill -0 "$CPID" 2>/dev/null || { echo "containerd died:"; cat "$T/containerd.log"; exit 1; }
  [ $(( $(ms) - t0 )) -lt 20000 ] || { echo "containerd did not answer in 20 s"; exit 1; }
  sleep 0.05
done
echo "containerd pid $CPID answered Version after $(( $(ms) - t0 )) ms"
"${CTR[@]}" version
echo "daemon RSS: $(awk '/VmRSS/{print $2, $3}' /proc/$CPID/status)"
"${CTR[@]}" plugins ls | awk 'NR==1 || /overlayfs|runc|cri|snapshotter.*(native|overlay)/'
echo "/run/containerd after start: $(find /run/containerd 2>/dev/null | tr '\n' ' ')"

log "busybox image, offline (umoci + skopeo)"
L=$T/layout; B=$T/bundle
umoci init --layout "$L"
umoci new --image "$L:latest"
umoci unpack --image "$L:latest" "$B"
install -D -m0755 /bin/busybox "$B/rootfs/bin/busybox"
for a in sh ls cat echo sleep httpd wget ps id kill nc mount grep head seq yes dd true false ip; do
  ln -s busybox "$B/rootfs/bin/$a"; done
mkdir -p "$B/rootfs/etc" "$B/rootfs/tmp" "$B/rootfs/proc" "$B/rootfs/sys" "$B/rootfs/dev"
chmod 1777 "$B/rootfs/tmp"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$B/rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$B/rootfs/etc/group"
umoci repack --image "$L:latest" "$B"
umoci config --image "$L:latest" --os linux --architecture amd64 \
  --config.env PATH=/bin --config.workingdir / --config.cmd /bin/sh
tar -C "$L" -cf "$T/busybox-oci.tar" .
P=$T/policy.json; echo '{"default":[{"type":"insecureAcceptAnything"}]}' >"$P"
TMPDIR=$T skopeo --policy "$P" copy "oci:$L:latest" \
  "docker-archive:$T/busybox-docker.tar:weft-test/busybox:latest"
ls -l "$T"/*.tar

log "import both archives"
"${CTR[@]}" images import "$T/busybox-docker.tar"
"${CTR[@]}" images import --index-name weft-test/busybox:oci "$T/busybox-oci.tar"
"${CTR[@]}" images ls
"${CTR[@]}" snapshots ls
IMG=docker.io/weft-test/busybox:latest

log "ctr run: hello"
t0=$(ms)
out=$("${CTR[@]}" run --rm --fifo-dir "$T/fifo" --runc-root "$RUNC_ROOT" --cgroup "$CG/hello" \
  "$IMG" hello echo hello)
echo "output: '$out' in $(( $(ms) - t0 )) ms (create+start+exit+delete)"
[ "$out" = hello ] || { echo "FAIL: expected hello"; exit 1; }
t0=$(ms)
out=$("${CTR[@]}" run --rm --fifo-dir "$T/fifo" --runc-root "$RUNC_ROOT" --cgroup "$CG/hello2" \
  --seccomp "$IMG" hello2 sh -c 'grep -E "^(Seccomp|CapEff|NoNewPrivs)" /proc/self/status; id')
echo "with --seccomp, $(( $(ms) - t0 )) ms:"; echo "$out"
echo "$out" | grep -q 'Seccomp:.*2' || { echo "FAIL: seccomp filter not on"; exit 1; }

log "binary:// logger (a shell script: stdout on fd 3, stderr on fd 4, closing fd 5 = ready)"
cat > "$T/logger.sh" <<'EOL'
#!/bin/sh
# containerd-shim logging binary protocol; the output dir is the one the script lives in.
d=$(dirname "$0")
exec 5>&-
cat <&3 > "$d/$CONTAINER_NAMESPACE-$CONTAINER_ID.out" &
cat <&4 > "$d/$CONTAINER_NAMESPACE-$CONTAINER_ID.err" &
wait
EOL
chmod +x "$T/logger.sh"
"${CTR[@]}" run --rm --fifo-dir "$T/fifo" --runc-root "$RUNC_ROOT" --cgroup "$CG/logged" \
  --log-uri "binary://$T/logger.sh" "$IMG" logged sh -c 'echo to-stdout; echo to-stderr >&2; exit 0'
for _ in $(seq 40); do [ -s "$T/$NS-logged.err" ] && break; sleep 0.05; done
echo "logger stdout: $(cat "$T/$NS-logged.out")  stderr: $(cat "$T/$NS-logged.err")"
[ "$(cat "$T/$NS-logged.out")" = to-stdout ] && [ "$(cat "$T/$NS-logged.err")" = to-stderr ] \
  || { echo "FAIL: binary logger"; exit 1; }

log "a network namespace made without ip netns add"
mkdir -p "$T/netns"; touch "$T/netns/n1"
unshare --net="$T/netns/n1" true
nsenter --net="$T/netns/n1" ip link set lo up
nsenter --net="$T/netns/n1" ip addr add 198.18.77.1/32 dev lo
NSINO=$(stat -L -c %i "$T/netns/n1")
echo "pin $T/netns/n1 inode $NSINO"

log "ctr run -d in that netns, trapping SIGTERM"
t0=$(ms)
"${CTR[@]}" run -d --fifo-dir "$T/fifo" --runc-root "$RUNC_ROOT" --cgroup "$CG/c2" \
  --with-ns "network:$T/netns/n1" --log-uri "file://$T/c2.log" "$IMG" c2 \
  sh -c 'trap "echo got TERM; exit 7" TERM; echo started; ip -o addr; while true; do sleep 0.2; done'
echo "run -d returned after $(( $(ms) - t0 )) ms"
"${CTR[@]}" tasks ls
PID=$("${CTR[@]}" tasks ls | awk '$1=="c2"{print $2}')
for _ in $(seq 50); do grep -q 198.18.77.1 "$T/c2.log" 2>/dev/null && break; sleep 0.1; done
echo "--- c2.log:"; cat "$T/c2.log"
echo "container pid $PID net ns inode $(stat -L -c %i /proc/$PID/ns/net) (pin $NSINO)"
[ "$(stat -L -c %i /proc/$PID/ns/net)" = "$NSINO" ] || { echo "FAIL: not in the pinned netns"; exit 1; }
for n in mnt pid uts ipc; do
  [ "$(readlink /proc/$PID/ns/$n)" != "$(readlink /proc/self/ns/$n)" ] && echo "own $n ns" || echo "SHARED $n ns"
done
echo "--- /proc/$PID/cgroup:"; cat /proc/$PID/cgroup
for h in memory pids cpu; do
  echo "$h: $(cat /sys/fs/cgroup/$h$CG/c2/cgroup.procs 2>/dev/null | tr '\n' ' ')"
done
echo "--- shim and runtime files:"
SHIM=$(ps -o ppid= -p "$PID" | tr -d ' ')
echo "shim pid $SHIM: $(tr '\0' ' ' </proc/$SHIM/cmdline)"
echo "shim RSS: $(awk '/VmRSS/{print $2, $3}' /proc/$SHIM/status); containerd RSS: $(awk '/VmRSS/{print $2, $3}' /proc/$CPID/status)"
echo "shim cgroup: $(grep memory /proc/$SHIM/cgroup)"
echo "shim sockets: $(ls -l /proc/$SHIM/fd 2>/dev/null | grep -c socket)"
find /run/containerd -maxdepth 3 2>/dev/null | sed 's/^/  /'
find "$T/state" -maxdepth 5 | sed "s|$T|\$T|; s/^/  /"
ls "$RUNC_ROOT" "$RUNC_ROOT"/* | sed 's/^/  runc root: /'
findmnt -rn -o TARGET,FSTYPE | grep "^$T" | sed "s|$T|\$T|; s/^/  mount: /"

log "SIGTERM"
t0=$(ms)
"${CTR[@]}" tasks kill -s SIGTERM c2
for _ in $(seq 100); do "${CTR[@]}" tasks ls | grep -q '^c2 .*STOPPED' && break; sleep 0.05; done
echo "stopped after $(( $(ms) - t0 )) ms"
"${CTR[@]}" tasks ls
cat "$T/c2.log"
grep -q 'got TERM' "$T/c2.log" || { echo "FAIL: trap did not run"; exit 1; }
"${CTR[@]}" tasks delete c2 | sed 's/^/delete: /'
"${CTR[@]}" containers delete c2
echo "/run/containerd/s after delete: $(ls /run/containerd/s 2>/dev/null | wc -l) entries"
log "ALL OK"
