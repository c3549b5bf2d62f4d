"""inventory.load keeps ansible-inventory's listing (.labkit/inventories/) and lists again whenever anything it
depends on changed: a file of the inventory (also an edit that keeps its size), group_vars beside a file
inventory, ANSIBLE_* settings. Every load here is a real ansible-inventory run or a kept one; a wrapper counts the
runs."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest

from labkit import inventory

HOSTS = """all:
  vars:
    labkit_cluster: ca
    labkit_subnet: 10.77.77.0/24
  children:
    clients:
      hosts:
        client: {ansible_host: '10.77.77.40'}
"""


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    """ansible-inventory behind a wrapper that counts its runs (one line each in the returned file)."""
    real = inventory._ansible_inventory()
    count = tmp_path / "runs"
    count.write_text("")
    wrapper = tmp_path / "ansible-inventory"
    wrapper.write_text(f'#!/bin/sh\necho run >> {count}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setattr(inventory, "_ansible_inventory", lambda: str(wrapper))
    monkeypatch.setattr(inventory, "CACHE", tmp_path / "cache")
    return count


def made(directory: Path, hosts: str = HOSTS) -> Path:
    directory.mkdir(parents=True)
    (directory / "group_vars").mkdir()
    (directory / "group_vars" / "all.yml").write_text("labkit_backend: netns\n")
    (directory / "hosts.yml").write_text(hosts)
    return directory


def listed(runs: Path) -> int:
    return len(runs.read_text().splitlines())


def test_a_second_load_of_an_unchanged_inventory_is_the_kept_listing(tmp_path, runs):
    inv = made(tmp_path / "inv")
    first = inventory.load(inv)
    again = inventory.load(inv)
    assert listed(runs) == 1
    assert again == first and again.host("client").address == "10.77.77.40"


def test_an_edit_that_keeps_the_files_size_is_seen(tmp_path, runs):
    inv = made(tmp_path / "inv")
    assert inventory.load(inv).host("client").address == "10.77.77.40"
    (inv / "hosts.yml").write_text(HOSTS.replace("10.77.77.40", "10.77.77.41"))  # same size, same second
    assert inventory.load(inv).host("client").address == "10.77.77.41"
    assert listed(runs) == 2


def test_a_new_vars_file_and_a_changed_ansible_setting_are_seen(tmp_path, runs, monkeypatch):
    inv = made(tmp_path / "inv")
    inventory.load(inv)
    (inv / "group_vars" / "clients.yml").write_text("math_port: 6060\n")
    assert inventory.load(inv).host("client").vars["math_port"] == 6060
    monkeypatch.setenv("ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED", "true")
    inventory.load(inv)
    assert listed(runs) == 3


def test_a_file_inventory_sees_the_group_vars_beside_it(tmp_path, runs):
    inv = made(tmp_path / "inv") / "hosts.yml"
    assert "math_port" not in inventory.load(inv).host("client").vars
    (inv.parent / "group_vars" / "all.yml").write_text("labkit_backend: netns\nmath_port: 6061\n")
    assert inventory.load(inv).host("client").vars["math_port"] == 6061


def test_an_inventory_that_fails_is_listed_again_every_time_and_not_kept(tmp_path, runs):
    inv = made(tmp_path / "inv", hosts="all: [not, a, mapping\n")
    for _ in range(2):
        with pytest.raises(inventory.InventoryError):
            inventory.load(inv)
    assert listed(runs) == 2
    assert not list((tmp_path / "cache").glob("*.json"))


def test_a_rule_broken_by_a_kept_listing_is_still_refused(tmp_path, runs):
    """The listing is kept, not the verdict: labkit's own rules run on every load."""
    inv = made(tmp_path / "inv", hosts=HOSTS.replace("10.77.77.40", "10.77.78.40"))
    for _ in range(2):
        with pytest.raises(inventory.InventoryError, match="outside labkit_subnet"):
            inventory.load(inv)
    assert listed(runs) == 1


def test_kept_listings_are_private_and_those_of_inventories_gone_are_dropped(tmp_path, runs):
    gone, kept = made(tmp_path / "gone"), made(tmp_path / "kept")
    inventory.load(gone)
    shutil.rmtree(gone)
    inventory.load(kept)
    entries = list((tmp_path / "cache").glob("*.json"))
    assert [json.loads(e.read_text())["path"] for e in entries] == [str(kept)]
    assert stat.S_IMODE(entries[0].stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700


def test_a_damaged_kept_listing_is_listed_again(tmp_path, runs):
    inv = made(tmp_path / "inv")
    inventory.load(inv)
    (entry,) = (tmp_path / "cache").glob("*.json")
    entry.write_text('{"path": "x", "key": ')
    assert inventory.load(inv).cluster == "ca"
    assert listed(runs) == 2


def test_a_folder_too_big_to_read_on_every_command_is_listed_every_time(tmp_path, runs, monkeypatch):
    monkeypatch.setattr(inventory, "CACHE_MAX_BYTES", 100)
    inv = made(tmp_path / "inv")
    inventory.load(inv)
    inventory.load(inv)
    assert listed(runs) == 2
