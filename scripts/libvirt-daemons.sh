#!/usr/bin/env bash
# Makes sure libvirtd and virtlogd run, for vagrant-libvirt. With systemd as init: start its units. Without (a
# container, this build machine): start both under a small reaper (scripts/reaper.py), because libvirt double-forks
# QEMU and a PID 1 that does not reap leaves every exited QEMU as a zombie, which libvirt then waits on for seconds
# at each capability probe and each VM start or stop. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then
  systemctl start libvirtd.service virtlogd.service
  exit 0
fi
if [ -S /run/libvirt/libvirt-sock ] && virsh -c qemu:///system version >/dev/null 2>&1; then
  exit 0
fi
rm -f /run/libvirtd.pid /run/virtlogd.pid
log=/var/log/labkit-libvirt-daemons.log
setsid /usr/bin/python3 scripts/reaper.py /usr/sbin/virtlogd -- /usr/sbin/libvirtd </dev/null >>"$log" 2>&1 &
for _ in $(seq 100); do
  virsh -c qemu:///system version >/dev/null 2>&1 && { echo "libvirt-daemons: libvirtd and virtlogd started (log: $log)"; exit 0; }
  sleep 0.1
done
echo "libvirt-daemons: libvirtd did not start; see $log" >&2
exit 1
