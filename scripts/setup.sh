#!/usr/bin/env bash
# Sets up this control machine (Debian 12, as root): distribution packages, then .venv with labnodes and the tools.
# Safe to re-run; it skips what is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "setup: run as root (it installs Debian packages and creates network namespaces)" >&2
  exit 1
fi

# Everything the control box and the netns hosts need (netns hosts share the box's /usr).
PACKAGES="python3 python3-venv python3-apt openssh-server openssh-client redis-server supervisor
  iperf3 iproute2 iptables procps psmisc util-linux rsync
  chromium"  # chromium: the cluster tests open the `fab check --html` report headless
# The Vagrant backend (the Vagrantfile, `make vm-box`, `make vm-test`; `vagrant validate` runs in `make test`):
# Vagrant with its libvirt provider, libvirt and QEMU, and what builds the offline box.
PACKAGES="$PACKAGES vagrant vagrant-libvirt libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils
  dnsmasq-base debootstrap e2fsprogs"
missing=$(dpkg-query -W -f '${Package} ${Status}\n' $PACKAGES 2>/dev/null | awk '$4 != "installed" {print $1}' || true)
for p in $PACKAGES; do dpkg-query -W "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "${missing// /}" ]; then
  echo "setup: installing Debian packages:" $missing
  # The box only carries these programs for the hosts: do not start the distribution's services on it.
  made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
  [ -z "$made_policy" ] || rm -f /usr/sbin/policy-rc.d
fi

# The control venv uses Debian's python3, the same interpreter the hosts run, so wheels built here fit them.
stamp=.venv/.labkit-setup
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: creating .venv"
  [ -x .venv/bin/python ] || /usr/bin/python3 -m venv .venv
  # pip's chatter goes to a log; on failure its end is shown
  if ! { .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -r requirements.txt -e '.[flower]'; } \
      > .venv/setup.log 2>&1; then
    tail -n 30 .venv/setup.log >&2
    echo "setup: pip failed; the whole log is .venv/setup.log" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
# The netns hosts' PID 1 (INIT in labkit/backends/netns.py): supervisord from PyPI, in a venv of its own where every
# host sees it (the hosts share the box's /opt, but for /opt/labnodes). Supervisor 4.3 finds its plug-ins with
# importlib.metadata, where Debian's 4.2.5 imports pkg_resources: a host's supervisord holds 14 instead of 21 MB, which
# for a class of 20 clusters of 8 hosts is 1 GB. VMs and lab machines run their distribution's supervisor under
# systemd (roles/common); the configuration files are the same, and so is supervisorctl (Debian's, on every host).
init_venv=/opt/labkit/supervisor
init_pin=supervisor==4.3.0
if [ "$(cat "$init_venv/.labkit-setup" 2>/dev/null)" != "$init_pin" ]; then
  echo "setup: creating $init_venv ($init_pin: the netns hosts' supervisord)"
  rm -rf "$init_venv"
  /usr/bin/python3 -m venv "$init_venv"
  if ! "$init_venv/bin/pip" install -q "$init_pin" > "$init_venv/setup.log" 2>&1; then
    tail -n 30 "$init_venv/setup.log" >&2
    echo "setup: pip failed; the whole log is $init_venv/setup.log" >&2
    exit 1
  fi
  echo "$init_pin" > "$init_venv/.labkit-setup"
fi
echo "setup: ready (.venv/bin has labnodes, ansible, fab, pytest)"
