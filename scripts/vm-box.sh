#!/usr/bin/env bash
# Builds a Debian 12 Vagrant box for the libvirt provider from Debian's package mirror only, and adds it to
# Vagrant as $LABKIT_BOX_NAME (default labkit/bookworm64). For machines that reach no box catalogue.
#
# How: debootstrap a root tree with every distribution package the roles need (so provisioning installs nothing
# from the network), make an ext4 image of it with `mkfs.ext4 -d` (no loop mount), convert it to qcow2, and pack
# it with the kernel and initrd: the box boots them directly (no boot loader, no partition table; the box's own
# Vagrantfile points libvirt at them). SSH host keys are made on each VM's first boot, never in the box. The
# vagrant user logs in first with Vagrant's public insecure key (the box carries only the public half); labkit's
# Vagrantfile then installs the cluster's own key, and labkit connects with that one.
#
# Usage: scripts/vm-box.sh [--force]     (root; needs debootstrap, e2fsprogs, qemu-utils, vagrant)
set -euo pipefail
cd "$(dirname "$0")/.."

BOX_NAME=${LABKIT_BOX_NAME:-labkit/bookworm64}
MIRROR=${LABKIT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
DISK_SIZE=${LABKIT_BOX_DISK:-8G}
WORK=${LABKIT_BOX_WORK:-build/vm-box}
# Distribution packages on every VM: what the roles use (common_packages, Ansible's apt module) and what Vagrant
# needs from a Debian guest (ifupdown for its private network, sudo, a DHCP client on the first NIC).
BASE_PACKAGES="linux-image-amd64,systemd-sysv,udev,dbus,ifupdown,isc-dhcp-client,iproute2,netbase,procps,sudo,
python3,python3-venv,python3-apt,ca-certificates,less,iptables"
# Packages whose install scripts start a daemon: installed in a second step, with services held off (a chroot on
# the build machine must not start a Redis there).
SERVICE_PACKAGES="openssh-server supervisor redis-server"

if [ "$(id -u)" != 0 ]; then echo "vm-box: run as root (debootstrap)" >&2; exit 1; fi
if [ "${1:-}" != --force ] && vagrant box list 2>/dev/null | grep -q "^$BOX_NAME .*libvirt"; then
  echo "vm-box: $BOX_NAME is already added (scripts/vm-box.sh --force rebuilds it)"
  exit 0
fi

start=$(date +%s)
root="$WORK/root"
# The root tree with every package installed is kept in $WORK for the next build (the download is the slow part).
want_packages="$BASE_PACKAGES $SERVICE_PACKAGES"
if [ -f "$WORK/packages-done" ] && [ "$(cat "$WORK/packages-done")" = "$want_packages" ]; then
  echo "vm-box: reusing the package tree in $root (rm -rf $WORK to start afresh)"
elif [ -f "$WORK/packages-done" ]; then
  echo "vm-box: the package list changed: installing it into the kept package tree"
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
  chmod +x "$root/usr/sbin/policy-rc.d"
  { chroot "$root" apt-get update -q && chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
      --no-install-recommends $(echo "$BASE_PACKAGES" | tr ',\n' '  ') $SERVICE_PACKAGES; } > "$WORK/apt.log" 2>&1 \
    || { tail -n 30 "$WORK/apt.log" >&2; exit 1; }
  rm -f "$root/usr/sbin/policy-rc.d"
  chroot "$root" apt-get clean
  echo "$want_packages" > "$WORK/packages-done"
else
rm -rf "$WORK"
mkdir -p "$WORK"
echo "vm-box: debootstrap bookworm from $MIRROR"
debootstrap --variant=minbase --include="$(echo "$BASE_PACKAGES" | tr -d '\n ')" \
  bookworm "$root" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 \
  || { tail -n 30 "$WORK/debootstrap.log" >&2; exit 1; }

printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"
echo "vm-box: installing $SERVICE_PACKAGES"
chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
  $SERVICE_PACKAGES > "$WORK/apt.log" 2>&1 || { tail -n 30 "$WORK/apt.log" >&2; exit 1; }
rm -f "$root/usr/sbin/policy-rc.d"
chroot "$root" apt-get clean
echo "$want_packages" > "$WORK/packages-done"
fi

echo "vm-box: configuring"
cat > "$root/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb http://security.debian.org/debian-security bookworm-security main
EOF
echo labkit-box > "$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 labkit-box\n' > "$root/etc/hosts"
echo '/dev/vda / ext4 defaults,noatime 0 1' > "$root/etc/fstab"
cat > "$root/etc/network/interfaces" <<'EOF'
# The first NIC is Vagrant's management network (DHCP); Vagrant adds the cluster network (eth1) below.
auto lo
iface lo inet loopback

auto eth0
iface eth0 inet dhcp
EOF
# dhclient's defaults give up after 60 s and wait 300 s before trying again; with 8 emulated VMs booting on two
# cores one VM missed its lease that way and vagrant-libvirt (which waits 10 minutes for it) destroyed it. Keep
# asking, at least every 5 s, for as long as Vagrant waits.
cat >> "$root/etc/dhcp/dhclient.conf" <<'EOF'
timeout 600;
retry 5;
initial-interval 1;
backoff-cutoff 5;
EOF
# No timers that reach the network or churn the disk in a lab VM, and no e2scrub_reap at boot (minutes of
# looking for LVM snapshots under emulation, on a disk that has no LVM).
for t in apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer; do
  ln -sf /dev/null "$root/etc/systemd/system/$t"
done
# The distribution's Redis service stays off: the redis role runs Redis under supervisord (and disables it
# where it finds it enabled, as on a public box).
chroot "$root" systemctl disable --quiet redis-server.service
# A small initrd with what mounts the root disk (virtio, ext4): under emulation every MB of it costs boot time.
echo MODULES=list > "$root/etc/initramfs-tools/conf.d/labkit-modules"
printf '%s\n' virtio_pci virtio_blk virtio_net ext4 > "$root/etc/initramfs-tools/modules"
chroot "$root" update-initramfs -u -k all > "$WORK/initramfs.log" 2>&1 || { tail -n 20 "$WORK/initramfs.log" >&2; exit 1; }
# SSH host keys: none in the box; each VM makes its own on first boot, before sshd starts.
rm -f "$root"/etc/ssh/ssh_host_*
cat > "$root/etc/systemd/system/labkit-ssh-host-keys.service" <<'EOF'
[Unit]
Description=Generate this VM's SSH host keys (first boot)
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
# ed25519 only: an RSA key costs tens of seconds of boot under emulation, and labkit trusts the ed25519 key
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key

[Install]
WantedBy=multi-user.target
EOF
ln -sf /etc/systemd/system/labkit-ssh-host-keys.service \
  "$root/etc/systemd/system/multi-user.target.wants/labkit-ssh-host-keys.service"
# No DNS lookups of the client's address on login (no resolver on an offline network: each login would wait).
printf 'UseDNS no\nHostKey /etc/ssh/ssh_host_ed25519_key\n' > "$root/etc/ssh/sshd_config.d/labkit.conf"
# The vagrant user: Vagrant's public insecure key for the first login, password-less sudo.
chroot "$root" id vagrant >/dev/null 2>&1 || chroot "$root" useradd --create-home --shell /bin/bash vagrant
echo 'vagrant:vagrant' | chroot "$root" chpasswd
echo 'vagrant ALL=(ALL) NOPASSWD: ALL' > "$root/etc/sudoers.d/vagrant"
chmod 0440 "$root/etc/sudoers.d/vagrant"
install -d -m 0700 -o 1000 -g 1000 "$root/home/vagrant/.ssh"
insecure_pub=$(find /usr/share/rubygems-integration /usr/lib/ruby /opt/vagrant -path '*/keys/vagrant.pub' 2>/dev/null | head -n1 || true)
[ -n "$insecure_pub" ] || { echo "vm-box: Vagrant's keys/vagrant.pub not found" >&2; exit 1; }
install -m 0600 -o 1000 -g 1000 "$insecure_pub" "$root/home/vagrant/.ssh/authorized_keys"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log
: > "$root/etc/machine-id"  # each VM gets its own on first boot

echo "vm-box: making the disk image"
box="$WORK/box"
mkdir -p "$box"
cp "$(readlink -f "$root/vmlinuz")" "$box/vmlinuz"
cp "$(readlink -f "$root/initrd.img")" "$box/initrd.img"
truncate -s "$DISK_SIZE" "$WORK/root.raw"
mkfs.ext4 -q -L labkit-root -d "$root" "$WORK/root.raw"
qemu-img convert -O qcow2 "$WORK/root.raw" "$box/box.img"
rm -f "$WORK/root.raw"
size_gb=$(( $(qemu-img info --output=json "$box/box.img" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])') / 1024 / 1024 / 1024 ))
printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %s}\n' "$size_gb" > "$box/metadata.json"
cat > "$box/Vagrantfile" <<'EOF'
# Box built by labkit's scripts/vm-box.sh: the VM boots this box's kernel and initrd directly (no boot loader).
# libvirt's QEMU runs as an unprivileged user that cannot read Vagrant's home, so both are copied once into
# libvirt's boot directory, named by their checksum.
require "digest"
require "fileutils"
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    boot_dir = "/var/lib/libvirt/boot"
    files = %w[vmlinuz initrd.img].map do |name|
      src = File.join(__dir__, name)
      dest = File.join(boot_dir, "labkit-#{Digest::SHA256.file(src).hexdigest[0, 16]}-#{name}")
      if File.writable?(boot_dir) && !File.exist?(dest)
        FileUtils.cp(src, "#{dest}.tmp")
        File.chmod(0o644, "#{dest}.tmp")
        File.rename("#{dest}.tmp", dest)
      end
      File.exist?(dest) ? dest : src
    end
    libvirt.kernel = files[0]
    libvirt.initrd = files[1]
    libvirt.cmd_line = "root=/dev/vda rw console=ttyS0 net.ifnames=0 quiet"
  end
end
EOF
echo "vm-box: packing"
tar -C "$box" -cf "$WORK/labkit-bookworm64.box" metadata.json Vagrantfile box.img vmlinuz initrd.img
vagrant box add --force --name "$BOX_NAME" --provider libvirt "$WORK/labkit-bookworm64.box"
size=$(du -h "$WORK/labkit-bookworm64.box" | cut -f1)
rm -f "$WORK/labkit-bookworm64.box" "$box/box.img"
echo "vm-box: $BOX_NAME added in $(( $(date +%s) - start )) s ($size)"
