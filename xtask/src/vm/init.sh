#!/bin/busybox sh
# /init of the VM matrix guests (busybox). It runs the suites /pt.conf asks for and marks
# each on the console for the host to read:
#   @@pt begin SECTION  ...libtest output...  @@pt end SECTION rc=N   and finally @@pt done
/bin/busybox --install -s /bin
export PATH=/bin
# /tmp stays on the initramfs itself: the tracer may live under /tmp (its build path).
mkdir -p /proc /sys /dev /tmp /run
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# Pseudo-terminals: a test drives the tracer's text output through one.
mkdir -p /dev/pts
mount -t devpts devpts /dev/pts
mkdir -p /sys/kernel/tracing /sys/fs/bpf /sys/fs/cgroup
mount -t tracefs nodev /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 none /sys/fs/cgroup
ip link set lo up
# sock_diag (the tracer's dump of sockets held at start) is modular on Debian.
for m in /mods/*.ko; do
  [ -e "$m" ] && { insmod "$m" || echo "@@pt warning: insmod $m failed"; }
done
. /pt.conf
echo "@@pt kernel $(uname -r)"
export RUST_BACKTRACE=1
# Tests of userspace alone (output, namespaces' ranges) skip here: the host runs them.
export PORT_TRACER_IN_VM=1
run() {
  name=$1; shift
  echo "@@pt begin $name"
  "$@" --test-threads=1 $PT_FILTER 2>&1
  echo "@@pt end $name rc=$?"
}
[ "$PT_LIB" = 1 ] && run lib /lib_test
for tier in $PT_TIERS; do
  export PORT_TRACER_TEST_ATTACH=$tier
  run "$tier" /kernel_test
done
unset PORT_TRACER_TEST_ATTACH
if [ -n "$PT_EQUIVALENCE" ]; then
  export PORT_TRACER_TEST_TIERS=$PT_EQUIVALENCE
  run equivalence /tiers_test
fi
echo "@@pt done"
poweroff -f
