"""The example lab inventory: Ansible parses it, it names the lab backend, and it has the groups of every backend."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from labkit import REPO, backends, inventory

LAB = REPO / "inventory" / "lab.example"


@pytest.fixture(scope="module")
def lab() -> inventory.Inventory:
    return inventory.load(LAB)


def test_lab_example_uses_the_lab_backend(lab):
    assert lab.backend == "lab"
    assert backends.for_inventory(lab).__name__ == "labkit.backends.lab"


@pytest.mark.parametrize("other", ["netns", "vagrant"])
def test_lab_example_has_the_groups_and_hosts_of(lab, other):
    them = inventory.load(REPO / "inventory" / other)
    assert lab.groups == them.groups
    assert [h.name for h in lab.hosts] == [h.name for h in them.hosts]


def test_lab_example_logs_in_as_a_sudo_user(lab):
    for host in lab.hosts:
        assert host.user and host.user != "root"
        assert host.vars.get("ansible_become") is True


def test_a_sized_inventory_has_the_ring_and_workers_asked_for_each_at_its_own_address(tmp_path):
    path = inventory.new_sized(tmp_path / "big", "big", "10.77.60.0/24", ring=50, workers=47)
    inv = inventory.load(path)
    assert len(inv.hosts) == 100 and inv.backend == "netns"
    assert list(inv.groups["ring"]) == [f"pyro{i}" for i in range(1, 51)]
    assert len(inv.groups["workers"]) == 47 and list(inv.groups["nameservers"]) == ["broker"]
    assert len({h.address for h in inv.hosts}) == 100
    assert inv.hosts[0].vars["common_supervise_timeout"] == 200  # every host's programs start at once on the box


def test_a_sized_inventory_with_a_ring_of_0_has_no_ring_group_and_keeps_the_name_server(tmp_path):
    inv = inventory.load(inventory.new_sized(tmp_path / "cel", "cel", "10.77.60.0/24", ring=0, workers=2))
    assert "ring" not in inv.groups and [h.name for h in inv.hosts] == ["broker", "worker1", "worker2",
                                                                       "sockserver", "client"]
    assert list(inv.groups["nameservers"]) == ["broker"]  # every host's settings name the name server's address
    assert (inv.path / "hosts.yml").read_text().startswith("# A netns cluster made by `fab new-inventory`: no ring, "
                                                           "2 workers.\n")
    assert inventory.sized_shape(50, 1) == "a ring of 50, 1 worker"


@pytest.mark.parametrize("args, words", [
    (("BIG", "10.77.60.0/24", 3, 2), "cluster name"),
    (("big", "10.77.60.0/23", 3, 2), "use a /24"),
    (("big", "10.77.60.0/24", 3, 0), "at least one worker"),
    (("big", "10.77.60.0/24", -1, 2), "a ring of 0"),
    (("big", "10.77.60.0/24", 100, 56), "at most 155"),
    (("big", "8.8.8.0/24", 3, 2), "not private address space"),
])
def test_a_sized_inventory_that_cannot_be_made_says_why(args, words):
    with pytest.raises(inventory.InventoryError, match=words):
        inventory.sized_hosts_yml(*args)


def test_a_sized_inventory_never_overwrites_a_directory(tmp_path):
    with pytest.raises(inventory.InventoryError, match="already exists"):
        inventory.new_sized(tmp_path, "big", "10.77.60.0/24")


def test_a_sized_inventory_is_written_whole_or_not_at_all(tmp_path):
    """A write that fails half-way (a file size limit here, as a full disk would: group_vars copied, hosts.yml not)
    leaves neither the inventory nor its temporary folder; a folder that cannot be made is one line."""
    code = ("import resource, signal, sys; from labkit import inventory\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))\n"
            "try: inventory.new_sized(sys.argv[1], 'big', '10.77.60.0/24', ring=50, workers=47)\n"
            "except inventory.InventoryError as exc: print(exc)")
    dest = tmp_path / "class" / "big"
    r = subprocess.run([sys.executable, "-c", code, str(dest)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{dest}: cannot write the inventory there: File too large\n", "")
    assert list((tmp_path / "class").iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(inventory.InventoryError, match=r"/file/big: \S+/file is a file, not a folder$"):
        inventory.new_sized(tmp_path / "file" / "big", "big", "10.77.60.0/24")


FAKE_SSH = """#!/bin/sh
# the machine: accepts the login; its sudo wants a password (as on a machine where the user's sudo is not NOPASSWD)
for last; do :; done
case "$last" in
  "sudo -n true") echo "sudo: a password is required" >&2; exit 1 ;;
  true) exit 0 ;;
esac
exit 255
"""


@pytest.mark.parametrize("become, refused", [(True, True), (False, False)])
def test_fab_up_of_a_lab_refuses_a_login_whose_sudo_wants_a_password(tmp_path, monkeypatch, become, refused):
    """Before, `fab up` went on to provision and Ansible stopped on every host with "Missing sudo password"."""
    from labkit import LabkitError, ssh
    from labkit.backends import lab as lab_backend

    (tmp_path / "ssh").write_text(FAKE_SSH)
    (tmp_path / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(ssh, "sshd_open", lambda *args, **kwargs: True)
    monkeypatch.setattr(inventory, "record_active", lambda path: None)
    host = inventory.Host("pc1", "10.20.30.11", {"ansible_user": "labadmin", "ansible_become": become})
    inv = inventory.Inventory(path=tmp_path, cluster="room1", subnet=None, backend="lab", hosts=(host,),
                              groups={"clients": ("pc1",)})
    if not refused:
        lab_backend.up(inv, echo=lambda *a: None)
        return
    with pytest.raises(LabkitError) as err:
        lab_backend.up(inv, echo=lambda *a: None)
    assert ("pc1 (10.20.30.11): logs in as labadmin, but sudo will not run without a password (sudo: a password "
            "is required): labkit needs passwordless sudo there") in str(err.value)
