"""The lab backend: real machines listed in an inventory (a room of Debian 12 machines with sshd and a sudo user).

labkit neither creates nor destroys these machines. They are reached as Ansible reaches them: `ansible_host`,
`ansible_user` and `ansible_port` from the inventory, keys and known hosts from the user's own ~/.ssh.

    up      waits until every host accepts SSH (and, with ansible_become, runs sudo without a password), then
            records the inventory as the active one
    down    removes what labkit put on the hosts (playbooks/remove.yml), nothing else
    status  a host is up when its SSH port answers
"""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from labkit import REPO, LabkitError, inventory, ssh

UP_HINT = "fab up -i {inventory}"
SSH_TIMEOUT = 30.0  # s, for every machine's sshd to answer


def _port(host) -> int:
    return int(host.vars.get("ansible_port", 22))


def _login(host) -> str | None:
    """None if the machine accepts our login (the user's own ssh settings) and, where the inventory logs in as
    another user with ansible_become, sudo without a password; else the reason it does not."""
    target = f"{host.user}@{host.address}" if host.user else host.address
    proc = subprocess.run(["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-p", str(_port(host)), target,
                           "sudo -n true" if host.sudo else "true"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    if proc.returncode == 0:
        return None
    why = (proc.stderr.strip().splitlines() or ["ssh failed"])[-1]
    if host.sudo and why.startswith("sudo:"):  # logged in; sudo refused (Ansible would stop at "Missing sudo password")
        return ssh.sudo_refused(host.user, why)
    return why


def up(inv, echo=print) -> None:
    """Wait until every machine accepts SSH; record the inventory as active."""
    def probe(host):
        deadline = time.monotonic() + SSH_TIMEOUT
        while not ssh.sshd_open(host.address, _port(host)):
            if time.monotonic() > deadline:
                return f"{host.name} ({host.address}): no SSH server answers on port {_port(host)}"
            time.sleep(0.5)
        err = _login(host)
        return f"{host.name} ({host.address}): {err}" if err else None

    with ThreadPoolExecutor(max_workers=min(32, len(inv.hosts))) as pool:
        failures = [f for f in pool.map(probe, inv.hosts) if f]
    if failures:
        raise LabkitError(f"lab {inv.cluster}: cannot log in to {'; '.join(failures)} "
                          "(each machine needs sshd, the inventory's ansible_user and your key)")
    inventory.record_active(inv.path)
    echo(f"lab {inv.cluster}: {len(inv.hosts)} machines answer SSH")


def down(inv, echo=print) -> None:
    """Remove labkit's programs, files and service user from the machines (playbooks/remove.yml)."""
    from labkit import provision
    playbook = REPO / "playbooks" / "remove.yml"
    if not playbook.exists():
        raise LabkitError(f"{playbook} is missing: labkit cannot remove itself from lab machines")
    provision.provision(inv.path, playbook=playbook, quiet=True, cluster=inv.cluster)
    echo(f"lab {inv.cluster}: labkit removed from {len(inv.hosts)} machines")


def status(inv) -> list[dict]:
    with ThreadPoolExecutor(max_workers=min(32, len(inv.hosts))) as pool:
        answers = list(pool.map(lambda h: ssh.sshd_open(h.address, _port(h)), inv.hosts))
    return [{"host": h.name, "address": h.address, "state": "up" if ok else "down",
             "problem": "" if ok else f"no SSH server answers on port {_port(h)}"}
            for h, ok in zip(inv.hosts, answers, strict=True)]
