"""The example lab inventory: Ansible parses it, it names the lab backend, and it has the groups of every backend."""

from __future__ import annotations

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
