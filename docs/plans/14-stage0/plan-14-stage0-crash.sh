#!/usr/bin/env bash
# Stage 0, part 2: containerd SIGKILLed with a task running. What is left, and how to clean it.
set -uo pipefail
T=$(mktemp -d /tmp/weft-s0k.XXXXXX); SOCK=$T/c.sock; CG=/weft-s0k-$$
CTR=(ctr -a "$SOCK" -n weft-test)
cat > "$T/config.toml" <<EOC
version = 2
root = "$T/root"
state = "$T/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$SOCK"
EOC
containerd --config "$T/config.toml" >"$T/containerd.log" 2>&1 & CPID=$!
until "${CTR[@]}" version >/dev/null 2>&1; do sleep 0.05; done
# A rootfs without an image: --rootfs with the busybox binary only.
mkdir -p "$T/rfs/bin" "$T/rfs/proc" "$T/rfs/dev" "$T/rfs/sys"; cp /bin/busybox "$T/rfs/bin/"; ln -s busybox "$T/rfs/bin/sh"; ln -s busybox "$T/rfs/bin/sleep"
"${CTR[@]}" run -d --rootfs --null-io --fifo-dir "$T/fifo" --runc-root "$T/runc" --cgroup "$CG/k1" "$T/rfs" k1 /bin/sleep 1000
PID=$("${CTR[@]}" tasks ls | awk '$1=="k1"{print $2}')
kill -KILL $CPID; wait $CPID 2>/dev/null
echo "containerd SIGKILLed; task pid $PID alive: $(kill -0 $PID 2>/dev/null && echo yes || echo no)"
SHIMS=$(for p in /proc/[0-9]*; do tr '\0' ' ' < $p/cmdline 2>/dev/null | grep -q -- "-address $SOCK " && basename $p; done)
echo "shims found by '-address \$SOCK' in /proc/*/cmdline: $SHIMS"
echo "mounts under \$T: $(findmnt -rn -o TARGET | grep -c "^$T")"; echo "/run/containerd/s: $(ls /run/containerd/s | wc -l)"
# Restart containerd on the same root/state: does it reconnect to the shim?
containerd --config "$T/config.toml" >>"$T/containerd.log" 2>&1 & CPID=$!
until "${CTR[@]}" version >/dev/null 2>&1; do sleep 0.05; done
echo "after restart:"; "${CTR[@]}" tasks ls
# Teardown the hard way: kill the cgroup's processes, then the shim, then containerd.
for h in /sys/fs/cgroup/*/; do [ -f "$h$CG/k1/cgroup.procs" ] && cat "$h$CG/k1/cgroup.procs"; done | sort -u | xargs -r kill -KILL
sleep 0.3; "${CTR[@]}" tasks delete k1; "${CTR[@]}" containers delete k1
kill -TERM $CPID; wait $CPID
for _ in $(seq 20); do kill -0 $SHIMS 2>/dev/null || break; sleep 0.1; done
for s in $SHIMS; do kill -0 $s 2>/dev/null && { echo "shim $s still alive after task delete, killing"; kill -KILL $s; }; done
for h in /sys/fs/cgroup/*/; do [ -d "$h$CG" ] && find "$h$CG" -depth -type d -exec rmdir {} \; ; done
findmnt -rn -o TARGET | grep "^$T" | sort -r | xargs -r -n1 umount -l
echo "left: mounts $(findmnt -rn -o TARGET | grep -c "^$T"), cgroups $(ls -d /sys/fs/cgroup/*$CG 2>/dev/null | wc -l), /run/containerd/s $(ls /run/containerd/s | wc -l)"
rm -rf "$T"
