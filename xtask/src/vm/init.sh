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
# Tests that cannot run here list themselves (TEST<TAB>WHY): told to the host as skipped.
export PORT_TRACER_SKIPS=/tmp/skips
tab=$(printf '\t')
# A hang's cause, told before the host gives up on a silent console (240 s): when the
# running suite has printed nothing for 120 s, every user thread's state and kernel stack,
# and every CPU's backtrace, between "@@pt hang" and "@@pt hang end"; the host then takes
# the guest for hung. (A hung test is a wait in the kernel or a loop; a dead kernel prints
# nothing, which says that instead.)
watch_for_hang() {
  last=-1; quiet=0
  while sleep 10; do
    size=$(wc -c < /tmp/progress)
    if [ "$size" != "$last" ]; then last=$size; quiet=0; continue; fi
    quiet=$((quiet + 10))
    [ $quiet -eq 120 ] || continue
    echo "@@pt hang: nothing printed for $quiet s; the user threads:"
    for t in /proc/[0-9]*/task/[0-9]*; do
      readlink "${t%/task/*}/exe" > /dev/null 2>&1 || continue  # not a kernel thread
      echo "-- $(cat $t/comm) ${t#/proc/} $(cut -d' ' -f3 $t/stat) wchan=$(cat $t/wchan)"
      sed 's/^/   /' $t/stack 2>/dev/null
    done
    echo "-- sockets: $(grep -h TCP /proc/net/sockstat)"
    echo 1 > /proc/sys/kernel/sysrq
    echo 8 > /proc/sys/kernel/printk
    echo l > /proc/sysrq-trigger
    echo "@@pt hang end"
  done
}
run() {
  name=$1; shift
  echo "@@pt begin $name"
  : > /tmp/progress
  watch_for_hang &
  watcher=$!
  # The suite's exit status through a file: a pipeline's is tee's.
  : > /tmp/skips
  { "$@" --test-threads=1 $PT_FILTER 2>&1; echo $? > /tmp/rc; } | tee /tmp/progress
  kill $watcher
  while IFS="$tab" read -r test why; do echo "@@pt skip $test $why"; done < /tmp/skips
  echo "@@pt end $name rc=$(cat /tmp/rc)"
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
if [ -n "$PT_COST" ]; then
  # A measurement that prints its tables: not captured.
  export PORT_TRACER_TEST_TIERS=$PT_COST RUST_TEST_NOCAPTURE=1
  run cost /cost_test --ignored
fi
echo "@@pt done"
poweroff -f
