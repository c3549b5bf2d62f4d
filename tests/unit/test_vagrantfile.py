"""The Vagrantfile: valid for both providers, and its VMs are exactly the hosts of its inventory.

`vagrant validate` needs a usable provider. libvirt's config validates without a running libvirtd; VirtualBox is
not installed on the build machines, so its check puts a stub `VBoxManage` (it only answers `--version`) first on
PATH: Vagrant then validates the VirtualBox settings of every VM, which is what this test is for. The machines'
list comes from `vagrant status` under that stub, with Vagrant's state in a throwaway directory
(VAGRANT_DOTFILE_PATH), so no VM of a running cluster is touched or locked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from labkit import REPO, inventory



@pytest.fixture(autouse=True)
def _vagrant_is_installed():
    """make setup installs Vagrant; without it these tests fail (a skip would read as a pass)."""
    assert shutil.which("vagrant"), "vagrant is not installed (make setup installs it)"

VAGRANT_INVENTORY = REPO / "inventory" / "vagrant"


@pytest.fixture
def vagrant_env(tmp_path: Path) -> dict[str, str]:
    stub = tmp_path / "bin" / "VBoxManage"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\necho 7.0.14r161095\n")
    stub.chmod(0o755)
    # Vagrant's state (.vagrant) in its own directory: nothing here can lock or touch the VMs of a running cluster.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAGRANT_", "LABKIT_VAGRANT_"))}
    env.update(PATH=f"{stub.parent}{os.pathsep}{env['PATH']}", VAGRANT_CWD=str(REPO),
               VAGRANT_DOTFILE_PATH=str(tmp_path / "dot-vagrant"),
               LABKIT_VAGRANT_INVENTORY=str(VAGRANT_INVENTORY), VAGRANT_CHECKPOINT_DISABLE="1")
    return env


def vagrant(env: dict[str, str], *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["vagrant", *args], cwd=env["VAGRANT_CWD"], env={**env, **extra}, capture_output=True,
                          text=True, timeout=120)


def machines(env: dict[str, str], **extra: str) -> list[str]:
    proc = vagrant(env, "status", "--machine-readable", VAGRANT_DEFAULT_PROVIDER="virtualbox", **extra)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [line.split(",")[1] for line in proc.stdout.splitlines() if line.split(",")[2:3] == ["state"]]


@pytest.mark.parametrize("provider", ["libvirt", "virtualbox"])
def test_vagrantfile_validates_for_provider(vagrant_env, provider):
    proc = vagrant(vagrant_env, "validate", VAGRANT_DEFAULT_PROVIDER=provider)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validated successfully" in proc.stdout


def test_vagrantfile_defines_exactly_the_inventory_hosts(vagrant_env):
    inv = inventory.load(VAGRANT_INVENTORY)
    assert machines(vagrant_env) == [h.name for h in inv.hosts]


def test_host_added_to_the_inventory_becomes_a_vm(vagrant_env, tmp_path):
    copy = tmp_path / "inventory"
    shutil.copytree(VAGRANT_INVENTORY, copy)
    hosts = copy / "hosts.yml"
    text = hosts.read_text()
    worker2 = "        worker2: {ansible_host: 192.168.56.12}\n"
    assert worker2 in text
    hosts.write_text(text.replace(worker2, worker2 + "        worker3: {ansible_host: 192.168.56.13}\n"))
    names = machines(vagrant_env, LABKIT_VAGRANT_INVENTORY=str(copy))
    assert names == [h.name for h in inventory.load(copy).hosts]
    assert names.index("worker3") == names.index("worker2") + 1


def test_vagrant_inventory_has_the_netns_groups():
    vms, netns = inventory.load(VAGRANT_INVENTORY), inventory.load(REPO / "inventory" / "netns")
    assert vms.backend == "vagrant"
    assert vms.groups == netns.groups
    assert vms.subnet is not None and vms.subnet.subnet_of(inventory.ipaddress.IPv4Network("192.168.56.0/21"))


def test_the_libvirt_names_fab_down_looks_for_are_the_ones_the_vagrantfile_gives():
    """`fab down` removes the domains vagrant lost by name (labkit.backends.vagrant.lost; make vm-test makes one
    and sees it removed); a prefix or pool changed in the Vagrantfile alone would make it look in vain."""
    from labkit.backends import vagrant

    text = (REPO / "Vagrantfile").read_text()
    assert 'libvirt.default_prefix = "labkit-#{cluster}-"' in text
    assert "storage_pool_name" not in text and "libvirt.uri" not in text  # libvirt's pool "default", qemu:///system
    names = vagrant.libvirt_names(inventory.load(VAGRANT_INVENTORY))
    assert names["client"] == ("labkit-vm-client", "labkit-vm-client.img")
    assert len(names) == 8


@pytest.mark.parametrize("change, says", [
    (("192.168.56.", "8.8.8."), "labkit: {inv}: labkit_subnet 8.8.8.0/24 is not private address space"),
    (("worker2: {ansible_host: 192.168.56.12}", "worker2: {ansible_host: 192.168.56.11}"),
     "labkit: {inv}: hosts worker1 and worker2 have the same address 192.168.56.11"),
])
def test_vagrant_refuses_an_inventory_against_labkits_rules_before_making_anything(vagrant_env, tmp_path, change, says):
    """libvirt makes the VMs' network on this box and routes it there: 8.8.8.0/24 would have hidden Google's DNS
    servers from the box. The same check runs first at `vagrant up` (the Vagrantfile's list of commands)."""
    copy = tmp_path / "inventory"
    shutil.copytree(VAGRANT_INVENTORY, copy)
    hosts = copy / "hosts.yml"
    assert change[0] in hosts.read_text()
    hosts.write_text(hosts.read_text().replace(*change))
    proc = vagrant(vagrant_env, "validate", VAGRANT_DEFAULT_PROVIDER="libvirt", LABKIT_VAGRANT_INVENTORY=str(copy))
    assert proc.returncode == 1 and "Message: RuntimeError: " + says.format(inv=copy) in proc.stderr, proc.stderr
    assert not (tmp_path / "dot-vagrant" / "machines" / "broker" / "libvirt").exists()


@pytest.mark.parametrize("args, words", [
    (["--phase", "lab"], "--phase goes with --from-kept"),
    (["--from-kept", "/nonexistent", "--phase", "faults"], "is not the directory of a run that kept its VMs"),
    (["--from-kept", "/tmp", "--phase", "later"], "invalid choice: 'later'"),
])
def test_vm_test_refuses_a_resume_it_cannot_do_before_touching_a_vm(args, words):
    """`scripts/vm-test.py --from-kept DIR --phase PHASE` goes on with kept VMs; a wrong pair is refused by the
    parser, before any vagrant or fab command (the argument checks come first in main()). PATH holds no vagrant,
    so that a check gone missing fails here at `vagrant box list` instead of starting VMs."""
    env = {**os.environ, "PATH": "/nonexistent"}
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "scripts/vm-test.py", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2 and words in proc.stderr and proc.stdout == "", proc
