"""The Vagrant backend: each inventory host is a VM that the repository's Vagrantfile makes (libvirt or VirtualBox).

The Vagrantfile reads the inventory's hosts.yml; this module drives `vagrant` for fab and finishes what
`vagrant up` starts:

    up      `vagrant up` (the Vagrantfile's trigger then runs `after-up` below, without site.yml: fab up provisions)
    down    removes what vagrant lost of the hosts' VMs (libvirt: `lost`), `vagrant destroy -f`, forgets the VMs
    status  `vagrant status`: a running VM whose sshd answers is up, a running one whose sshd does not is broken

`python -m labkit.backends.vagrant check INVENTORY` is what the Vagrantfile runs first at `vagrant up`, `reload`,
`provision` and `validate`: the inventory with every rule of labkit.inventory, and its labkit_subnet private
(inventory.check_box_subnet), since libvirt makes that network on this box and routes it to the VMs.

`python -m labkit.backends.vagrant after-up INVENTORY [--provision]` is what the Vagrantfile's trigger runs on the
last VM once it is up: it waits until every VM accepts SSH with the cluster's key, collects their host keys,
writes the SSH client files (.labkit/<cluster>/), records the inventory as active, and runs site.yml the first
time (or with --provision). Waiting for *every* VM here is what makes one provisioning after all VMs correct
when vagrant-libvirt brings them up in parallel.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from labkit import REPO, STATE, LabkitError, inventory, ssh, stop_child
from labkit.backends import shown

UP_HINT = "vagrant up"
BOOT_TIMEOUT = 1200.0  # s: under software emulation 8 VMs take minutes to boot
VAGRANT_CLEANUP = 300.0  # s: after a Ctrl-C, how long vagrant may take to undo a VM half made
LIBVIRT_URI = "qemu:///system"  # vagrant-libvirt's default, which the Vagrantfile keeps
SKIP_SITE_ENV = "LABKIT_VAGRANT_SKIP_SITE"  # set by up(): the caller (fab up) provisions itself


class VagrantError(LabkitError):
    """vagrant failed, or the VMs cannot be reached; the message says which."""


def _env(inv, **extra: str) -> dict[str, str]:
    return {**os.environ, "VAGRANT_CWD": str(REPO), "LABKIT_VAGRANT_INVENTORY": str(inv.path), **extra}


def _vagrant(inv, *args: str, capture: bool = False, **extra: str) -> subprocess.CompletedProcess:
    """Run vagrant; after a Ctrl-C let it finish its own clean-up first (labkit.stop_child): killed half-way through
    `vagrant up`, it can leave a libvirt domain that it no longer knows is its own."""
    pipe = subprocess.PIPE if capture else None
    try:
        proc = subprocess.Popen(["vagrant", *args], cwd=REPO, env=_env(inv, **extra), text=True, stdout=pipe,
                                stderr=pipe, stdin=subprocess.DEVNULL, process_group=0)
    except FileNotFoundError:
        raise VagrantError("vagrant is not installed: run `make setup`") from None
    try:
        out, err = proc.communicate()
    except KeyboardInterrupt:
        stop_child(proc, grace=VAGRANT_CLEANUP)
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _provisioned_marker(inv) -> Path:
    return STATE / inv.cluster / "vagrant-provisioned"


def ssh_hosts(inv, host_keys: dict[str, str] | None = None) -> list[ssh.SshHost]:
    keys = host_keys or {}
    return [ssh.SshHost(h.name, h.address, h.user or "vagrant", keys.get(h.name)) for h in inv.hosts]


def _keyscan(address: str) -> str | None:
    proc = subprocess.run(["ssh-keyscan", "-T", "5", "-t", "ed25519", address], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    for line in proc.stdout.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[1] == "ssh-ed25519":
            return f"{fields[1]} {fields[2]}"
    return None


def collect_host_keys(inv, timeout: float = BOOT_TIMEOUT) -> dict[str, str]:
    """Each VM's ed25519 host key, read from its sshd on the cluster network (an isolated network made for it)."""
    def scan(host) -> tuple[str, str | None]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ssh.sshd_open(host.address):
                key = _keyscan(host.address)
                if key:
                    return host.name, key
            time.sleep(2)
        return host.name, None

    with ThreadPoolExecutor(max_workers=min(32, len(inv.hosts))) as pool:
        found = dict(pool.map(scan, inv.hosts))
    missing = [f"{h.name} ({h.address})" for h in inv.hosts if not found[h.name]]
    if missing:
        raise VagrantError(f"vagrant {inv.cluster}: no SSH host key from {', '.join(missing)} after {timeout:.0f}s "
                           "(is the VM running? `vagrant status`)")
    return found


def after_up(inv, *, provision: bool = False, echo=print, timeout: float = BOOT_TIMEOUT) -> None:
    """Wait for every VM, write the SSH client files, record the inventory; provision the first time."""
    t0 = time.monotonic()
    echo(f"labkit: waiting until all {len(inv.hosts)} VMs of cluster {inv.cluster} accept SSH")
    keys = collect_host_keys(inv, timeout)
    hosts = ssh_hosts(inv, keys)
    ssh.write_client_config(inv.cluster, hosts, writer="vagrant up")
    ssh.wait_for_sshd(inv.cluster, hosts, timeout=max(60.0, timeout - (time.monotonic() - t0)),
                      hint="the VM's first provisioning step installs the cluster key (`vagrant provision NAME`)")
    inventory.record_active(inv.path)
    echo(f"labkit: all VMs accept SSH ({time.monotonic() - t0:.0f}s); {shown(inv.path)} is the active "
         "inventory")
    if os.environ.get(SKIP_SITE_ENV):
        return
    marker = _provisioned_marker(inv)
    if provision or not marker.exists():
        from labkit import provision as prov
        report = prov.provision(inv.path, cluster=inv.cluster)
        marker.write_text(f"{time.time():.0f}\n")
        changed = sum(r["changed"] for r in report["hosts"].values())
        echo(f"labkit: provisioned in {report['seconds']:.0f}s ({changed} changes); try: . .venv/bin/activate; "
             "fab run-ring")
    else:
        echo("labkit: already provisioned (`vagrant provision` runs site.yml again)")


def forget(inv) -> None:
    """Forget how to reach the VMs (after destroy): SSH client files, open connections, the provisioned mark."""
    ssh.remove_client_config(inv.cluster)
    _provisioned_marker(inv).unlink(missing_ok=True)
    if inv.subnet is not None:
        ssh.close_connections([inv.subnet], [ssh.control_dir(inv.cluster), *ssh.ansible_control_dirs()])


def check(inv) -> None:
    """What a Vagrant inventory must be beyond inventory.load's rules: one network, labkit_subnet, that is private
    address space (libvirt gives this box an address in it and routes it to the VMs: a public subnet would hide
    those addresses of the internet from the box). The Vagrantfile runs it before Vagrant makes anything."""
    if inv.backend != "vagrant":
        raise VagrantError(f"{shown(inv.path)} is a {inv.backend} inventory, not a vagrant one")
    if inv.subnet is None:
        raise VagrantError(f"{shown(inv.path)}: labkit_subnet is not set (the VMs' network, a private /24)")
    try:
        inventory.check_box_subnet(inv.subnet, "labkit_subnet")
    except LabkitError as exc:
        raise VagrantError(f"{shown(inv.path)}: {exc}") from None


def up(inv, echo=print) -> None:
    """`vagrant up` the inventory's VMs; return when all accept SSH (site.yml is left to the caller)."""
    check(inv)
    echo(f"vagrant {inv.cluster}: vagrant up ({len(inv.hosts)} VMs)")
    proc = _vagrant(inv, "up", **{SKIP_SITE_ENV: "1"})
    if proc.returncode != 0:
        try:
            found = [name for things in lost(inv).values() for name in things]
        except VagrantError:  # vagrant status failing too: the output above says more than this would
            found = []
        why = (f"; in its way: {', '.join(found)}, which vagrant lost track of (`fab down -i {shown(inv.path)}` "
               "removes them)" if found else " (its output is above)")
        raise VagrantError(f"vagrant {inv.cluster}: `vagrant up` exited {proc.returncode}{why}")
    if not ssh.config_path(inv.cluster).exists():  # e.g. a Vagrantfile without the trigger: do its part here
        after_up(inv, echo=echo)
    inventory.record_active(inv.path)


def down(inv, echo=print) -> None:
    """Destroy the inventory's VMs (`vagrant destroy -f`), and any of them vagrant lost; safe to repeat."""
    gone = remove_lost(inv)  # first: `vagrant destroy` itself stops at such a domain ("already taken")
    proc = _vagrant(inv, "destroy", "-f")
    forget(inv)
    if proc.returncode != 0:
        raise VagrantError(f"vagrant {inv.cluster}: `vagrant destroy -f` exited {proc.returncode}")
    echo(f"vagrant {inv.cluster}: VMs destroyed"
         + (f"; also removed {', '.join(gone)}, which vagrant had lost track of" if gone else ""))


def libvirt_names(inv) -> dict[str, tuple[str, str]]:
    """host -> (libvirt domain, its disk volume), as the Vagrantfile names them: libvirt.default_prefix
    "labkit-<cluster>-", then the host; the disk is the domain's name + ".img" in the pool "default"."""
    return {h.name: (f"labkit-{inv.cluster}-{h.name}", f"labkit-{inv.cluster}-{h.name}.img") for h in inv.hosts}


def lost(inv) -> dict[str, list[str]]:
    """host -> its libvirt domain and disk that are there while vagrant says the host's VM is not created.

    vagrant killed half-way through `vagrant up` (by SIGKILL, the OOM killer, a power cut; a Ctrl-C in fab waits
    for its clean-up: _vagrant) can leave a domain it no longer knows is its own: `vagrant status` says "not
    created", and both the next `vagrant up` and `vagrant destroy` stop at it ("Name labkit-vm-client of domain
    about to create is already taken"). Nothing to find without libvirt (VirtualBox)."""
    if not shutil.which("virsh"):
        return {}
    states = machine_states(inv)
    found = {}
    for host, (domain, disk) in libvirt_names(inv).items():
        if states.get(host) == "not_created":
            there = [domain] if virsh("dominfo", domain).returncode == 0 else []
            there += [disk] if virsh("vol-info", "--pool", "default", disk).returncode == 0 else []
            if there:
                found[host] = there
    return found


def remove_lost(inv) -> list[str]:
    """Remove what lost() finds (only names the Vagrantfile gives this inventory's hosts); return what it removed."""
    removed, names = [], libvirt_names(inv)
    for host, things in lost(inv).items():
        domain, disk = names[host]
        if domain in things:
            virsh("destroy", domain)  # fails harmlessly when it is not running
            proc = virsh("undefine", domain, "--remove-all-storage")
            if proc.returncode != 0:
                raise VagrantError(f"vagrant {inv.cluster}: could not remove {domain}, which vagrant lost: "
                                   f"{proc.stderr.strip() or proc.stdout.strip()}")
        if disk in things:
            virsh("vol-delete", "--pool", "default", disk)  # gone already if undefine took it with the domain
        removed += things
    return removed


def virsh(*args: str, text_in: str | None = None) -> subprocess.CompletedProcess:
    """virsh on the libvirt vagrant-libvirt uses (LIBVIRT_URI); its output captured."""
    return subprocess.run(["virsh", "-c", LIBVIRT_URI, *args], input=text_in, capture_output=True, text=True,
                          stdin=None if text_in is not None else subprocess.DEVNULL, timeout=120)


def machine_states(inv) -> dict[str, str]:
    """Vagrant's state of each VM (running, shutoff, not_created, poweroff, ...)."""
    proc = _vagrant(inv, "status", "--machine-readable", capture=True)
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise VagrantError(f"vagrant {inv.cluster}: `vagrant status` failed: {err}")
    states = {}
    for line in proc.stdout.splitlines():
        fields = line.split(",")
        if len(fields) >= 4 and fields[2] == "state":
            states[fields[1]] = fields[3]
    return states


def status(inv) -> list[dict]:
    try:
        states = machine_states(inv)
    except VagrantError as exc:
        return [{"host": h.name, "address": h.address, "state": "broken", "problem": str(exc)} for h in inv.hosts]
    with ThreadPoolExecutor(max_workers=min(32, len(inv.hosts))) as pool:
        answers = list(pool.map(lambda h: ssh.sshd_open(h.address), inv.hosts))
    rows = []
    for h, answers_ssh in zip(inv.hosts, answers, strict=True):
        state = states.get(h.name, "not_created")
        if state != "running":
            rows.append({"host": h.name, "address": h.address, "state": "down",
                         "problem": f"VM {state.replace('_', ' ')}"})
        elif not answers_ssh:
            rows.append({"host": h.name, "address": h.address, "state": "broken",
                         "problem": "VM running, but no SSH server answers on port 22"})
        elif not ssh.config_path(inv.cluster).exists():
            rows.append({"host": h.name, "address": h.address, "state": "broken",
                         "problem": "VM running, but no SSH client files: run `vagrant up` again"})
        else:
            rows.append({"host": h.name, "address": h.address, "state": "up", "problem": ""})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit.backends.vagrant",
                                     description="The Vagrantfile's steps (check, after up, after destroy).")
    parser.add_argument("step", choices=["check", "after-up", "after-destroy"])
    parser.add_argument("inventory", help="the Vagrant inventory directory")
    parser.add_argument("--provision", action="store_true", help="run site.yml even if it ran before")
    args = parser.parse_args(argv)
    try:
        inv = inventory.load(args.inventory)
        if args.step == "check":
            check(inv)
        elif args.step == "after-up":
            after_up(inv, provision=args.provision)
        else:
            forget(inv)
    except LabkitError as exc:
        print(f"labkit: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
