#!/bin/busybox sh
# /init of the kernel-matrix guest: mounts what kleakd and its tests need,
# runs /guest-tests.sh, prints its exit code on a line the host looks for,
# and powers off.
/bin/busybox --install -s /bin
# Tests name some tools by their Debian paths (/usr/bin/taskset).
for applet in $(/bin/busybox --list); do
  [ -e "/usr/bin/$applet" ] || /bin/busybox ln -s /bin/busybox "/usr/bin/$applet"
done
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# cgroup v2, unified: the stacks tests move a child into a cgroup of their own.
mount -t cgroup2 cgroup2 /sys/fs/cgroup
# /tmp stays the initramfs's own (RAM already): a tmpfs over it would hide
# a build tree that lives under /tmp.
chmod 1777 /tmp
mount -t tmpfs tmpfs /run
hostname kleak-guest
echo "KLEAK-GUEST-START $(uname -r) cpus=$(nproc)"
/guest-tests.sh
echo "KLEAK-GUEST-EXIT $?"
sync
poweroff -f
