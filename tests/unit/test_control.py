"""The control side without root or a cluster: inventory rules, backend choice, SSH client files, the rows and
one-line errors the fab tasks print."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from labkit import LabkitError, backends, inventory, remote, runs, ssh
from labkit.backends import netns
from labkit.inventory import InventoryError
from labkit.remote import Hosts, RemoteError

REPO = Path(__file__).resolve().parents[2]


def listing(hosts: dict[str, dict], groups: dict[str, list[str]], **all_vars) -> dict:
    """`ansible-inventory --list` JSON for these hosts (hostvars include all_vars) and groups."""
    data = {"_meta": {"hostvars": {h: {**all_vars, **v} for h, v in hosts.items()}},
            "all": {"children": ["ungrouped", *groups]}, "ungrouped": {"hosts": []}}
    for g, members in groups.items():
        data[g] = {"hosts": members}
    return data


GOOD = dict(labkit_cluster="lab", labkit_subnet="10.77.1.0/24", labkit_backend="netns")


def test_parse_keeps_file_order_groups_and_variables():
    inv = inventory.parse(Path("x"), listing(
        {"b": {"ansible_host": "10.77.1.11"}, "a": {"ansible_host": "10.77.1.10", "ansible_user": "u"}},
        {"ring": ["b", "a"], "clients": ["a"]}, **GOOD))
    assert [h.name for h in inv.hosts] == ["b", "a"]
    assert inv.groups == {"ring": ("b", "a"), "clients": ("a",)}
    assert inv.host("a").user == "u" and inv.gateway == "10.77.1.1" and inv.backend == "netns"


@pytest.mark.parametrize("hosts, all_vars, message", [
    ({}, GOOD, "lists no hosts"),
    ({"a": {"ansible_host": "10.77.1.10"}}, {**GOOD, "labkit_cluster": "toolong7"}, "must be 1-6 characters"),
    ({"a": {"ansible_host": "10.77.1.10"}}, {k: v for k, v in GOOD.items() if k != "labkit_cluster"},
     "labkit_cluster is not set"),
    ({"a": {"ansible_host": "10.77.1.10"}}, {k: v for k, v in GOOD.items() if k != "labkit_backend"},
     "labkit_backend is not set"),
    ({"a": {"ansible_host": "10.77.2.10"}}, GOOD, "outside labkit_subnet"),
    ({"a": {"ansible_host": "10.77.1.1"}}, GOOD, "the subnet's first address"),
    ({"a": {"ansible_host": "10.77.1.255"}}, GOOD, "network or broadcast"),
    ({"a": {"ansible_host": "10.77.1.10"}, "b": {"ansible_host": "10.77.1.10"}}, GOOD, "have the same address"),
    ({"a": {"ansible_host": "nowhere"}}, GOOD, "is not an IPv4 address"),
    ({"bad.name": {"ansible_host": "10.77.1.10"}}, GOOD, "must be letters, digits"),
    ({"a": {"ansible_host": "10.77.1.10"}}, {**GOOD, "labkit_subnet": "10.77.1.0/31"}, "too small"),
    ({"a": {"ansible_host": "10.77.1.10"}}, {**GOOD, "labnodes_math_port": 99999},
     r"host a: labnodes_math_port 99999 is not a port \(a whole number 1-65535\)"),
    ({"a": {"ansible_host": "10.77.1.10"}}, {**GOOD, "labnodes_file_port": 0}, "labnodes_file_port 0 is not a port"),
    ({"a": {"ansible_host": "10.77.1.10", "ansible_port": "twenty-two"}}, GOOD,
     "ansible_port 'twenty-two' is not a port"),
    ({"a": {"ansible_host": "10.77.1.10", "ansible_port": True}}, GOOD, "ansible_port True is not a port"),
    ({"a": {"ansible_host": "10.77.1.10"}}, {**GOOD, "flower_port": 5555.5}, "flower_port 5555.5 is not a port"),
])
def test_bad_inventory_names_what_to_fix(hosts, all_vars, message):
    with pytest.raises(InventoryError, match=message):
        inventory.parse(Path("x"), listing(hosts, {"g": list(hosts)} if hosts else {}, **all_vars))


def test_ports_the_inventory_sets_as_numbers_text_or_templates_load():
    inv = inventory.parse(Path("x"), listing(
        {"a": {"ansible_host": "10.77.1.10", "ansible_port": "2222"}}, {"g": ["a"]},
        **GOOD, labnodes_math_port=65535, redis_port="{{ labnodes_redis_port }}"))
    assert inv.host("a").vars["ansible_port"] == "2222" and inv.host("a").vars["labnodes_math_port"] == 65535


def test_a_setting_that_differs_between_hosts_is_refused():
    data = listing({"a": {"ansible_host": "10.77.1.10"}, "b": {"ansible_host": "10.77.1.11"}}, {"g": ["a", "b"]},
                   **GOOD)
    data["_meta"]["hostvars"]["b"]["labkit_cluster"] = "other"
    with pytest.raises(InventoryError, match="labkit_cluster differs between hosts"):
        inventory.parse(Path("x"), data)


def test_lab_inventories_need_no_subnet():
    inv = inventory.parse(Path("x"), listing({"pc1": {"ansible_host": "lab-pc1.example.edu"}}, {"g": ["pc1"]},
                                             labkit_cluster="room1", labkit_backend="lab"))
    assert inv.subnet is None and inv.host("pc1").address == "lab-pc1.example.edu"


def test_the_shipped_netns_inventory_loads_with_every_group():
    inv = inventory.load(REPO / "inventory" / "netns")
    assert set(inv.groups) >= {"brokers", "nameservers", "workers", "ring", "sockservers", "clients"}
    assert backends.for_inventory(inv) is netns


def test_a_missing_inventory_is_one_clear_error(tmp_path):
    with pytest.raises(InventoryError, match="does not exist"):
        inventory.load(tmp_path / "nope")


def test_a_missing_active_inventory_says_where_it_was_recorded_and_how_to_choose_another(tmp_path, monkeypatch):
    """After `fab up -i /tmp/x` and `rm -rf /tmp/x`, every task said only "inventory /tmp/x does not exist"."""
    monkeypatch.delenv("LABKIT_INVENTORY", raising=False)
    monkeypatch.setattr(inventory, "ACTIVE_FILE", tmp_path / "active")
    (tmp_path / "active").write_text(f"{tmp_path / 'gone'}\n")
    with pytest.raises(InventoryError) as err:
        inventory.load()
    assert str(err.value) == (f"inventory {tmp_path / 'gone'} does not exist (the active inventory, recorded by the "
                              f"last `fab up` in {tmp_path / 'active'}: give -i INVENTORY, or make another one "
                              "active with `fab up -i INVENTORY`)")
    monkeypatch.setenv("LABKIT_INVENTORY", str(tmp_path / "gone2"))
    with pytest.raises(InventoryError, match=r"gone2 does not exist \(\$LABKIT_INVENTORY names it\)$"):
        inventory.load()


@pytest.mark.parametrize("name, text, says", [
    ("hosts.yml", "all:\n  hosts:\n    a:\n      ansible_host: 10.1.1.5\n     bad: 1\n",
     "hosts.yml is not a valid inventory: YAML parsing failed: While parsing a block mapping did not find expected "
     "key. (line 5, column 6)"),
    ("hosts.yml", "all: [this is not\n", "hosts.yml is not a valid inventory: YAML parsing failed: "),
    ("hosts.ini", "[ring]\npyro1 ansible_host=10.1.1.5\n[ring:vars\nx=1\n", "hosts.ini is not a valid inventory: "),
])
def test_an_inventory_ansible_cannot_read_says_which_file_and_why(tmp_path, name, text, says):
    """ansible-inventory's own error is "No inventory was parsed"; the reason is in its warnings."""
    (tmp_path / name).write_text(text)
    with pytest.raises(InventoryError) as got:
        inventory.load(tmp_path)
    assert str(got.value).startswith(f"{tmp_path / name} is not a valid inventory") and says in str(got.value)
    assert "No inventory was parsed" not in str(got.value)


def test_an_executable_file_in_an_inventory_folder_is_never_run(tmp_path):
    """Ansible runs every executable file of an inventory folder as a dynamic-inventory script (its default
    plugins): `fab check --class students/` ran what a student put in their folder, as the instructor, and
    `fab status -i /etc` ran /etc's scripts (and hung). ansible.cfg enables only the yaml and ini plugins."""
    marker = tmp_path / "ran"
    inv = tmp_path / "ana"
    inv.mkdir()
    (inv / "hosts.yml").write_text("all:\n  vars: {labkit_cluster: ana, labkit_backend: lab}\n  children:\n"
                                   "    clients:\n      hosts:\n        pc1: {ansible_host: 10.20.30.11}\n")
    script = inv / "inventory.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\n"
                      "echo '{\"all\": {\"hosts\": [\"evil\"]}, \"_meta\": {\"hostvars\": {}}}'\n")
    script.chmod(0o755)
    got = inventory.load(inv)
    assert [h.name for h in got.hosts] == ["pc1"]
    assert not marker.exists()


def test_an_inventory_loads_when_fabs_standard_input_is_non_blocking():
    """ssh sets O_NONBLOCK on the standard input it shares; ansible-inventory started meanwhile refused ("Ansible
    requires blocking IO on stdin/stdout/stderr"), and `fab run-celery` failed in make vm-test."""
    code = ("import os; from labkit import inventory; os.set_blocking(0, False); "
            "print(inventory.load('inventory/netns').cluster)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE, capture_output=True,
                       text=True, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (0, "lab\n", "")


def test_a_folder_without_an_inventory_file_says_so(tmp_path):
    """ansible-inventory's own words are "No inventory was parsed, please check your configuration and options"."""
    (tmp_path / "group_vars").mkdir()
    (tmp_path / ".hidden").write_text("x")
    with pytest.raises(InventoryError) as got:
        inventory.load(tmp_path)
    assert str(got.value) == (f"{tmp_path}: no inventory file in this folder (labkit's inventories list their hosts "
                              "in hosts.yml)")


def test_ansibles_reason_is_cut_where_it_quotes_a_long_line(tmp_path):
    """A binary file in an inventory folder (a student's wheel): Ansible quotes the line it could not parse."""
    (tmp_path / "thing.whl").write_bytes(b"PK\x03\x04" + bytes(range(256)) * 40)
    with pytest.raises(InventoryError) as got:
        inventory.load(tmp_path)
    assert str(got.value).startswith(f"{tmp_path / 'thing.whl'} is not a valid inventory: ")
    assert len(str(got.value)) <= len(str(tmp_path)) + 60 + inventory.MAX_WHY, str(got.value)


def test_active_inventory_comes_from_the_environment_then_the_record_then_the_default(tmp_path, monkeypatch):
    monkeypatch.setattr(inventory, "ACTIVE_FILE", tmp_path / "active")
    monkeypatch.setattr(inventory, "STATE", tmp_path)
    monkeypatch.delenv("LABKIT_INVENTORY", raising=False)
    assert inventory.active_inventory() == inventory.DEFAULT_INVENTORY
    inventory.record_active(tmp_path / "mine")
    assert inventory.active_inventory() == tmp_path / "mine"
    monkeypatch.setenv("LABKIT_INVENTORY", str(tmp_path / "env"))
    assert inventory.active_inventory() == tmp_path / "env"


# --- backends -------------------------------------------------------------------------------------------------


def _inv(backend: str, path="inventory/x"):
    return inventory.Inventory(path=REPO / path, cluster="c1", subnet=None, backend=backend,
                               hosts=(inventory.Host("h1", "10.0.0.5"),), groups={"g": ("h1",)})


def test_an_unknown_backend_is_refused_with_the_known_ones():
    with pytest.raises(LabkitError, match="'docker' is not one of netns, vagrant, lab"):
        backends.for_inventory(_inv("docker"))


@pytest.mark.parametrize("name", ["netns", "lab"])
def test_every_backend_answers_the_same_calls(name):
    module = backends.for_inventory(_inv(name))
    assert all(callable(getattr(module, verb)) for verb in ("up", "down", "status"))
    assert "{inventory}" in module.UP_HINT or "vagrant" in module.UP_HINT


def test_up_hint_names_the_inventory_relative_to_the_repository():
    assert backends.up_hint(_inv("netns", "inventory/mylab")) == "fab up -i inventory/mylab"


def test_netns_plan_names_fit_linux_limits():
    inv = inventory.parse(REPO / "inventory" / "netns", listing(
        {f"host{i:02d}": {"ansible_host": f"10.77.1.{i + 10}"} for i in range(100)},
        {"g": [f"host{i:02d}" for i in range(100)]}, **{**GOOD, "labkit_cluster": "abcdef"}))
    cl = netns.Cluster.from_inventory(inv)
    assert len({n.veth for n in cl.nodes}) == 100
    assert max(len(n.veth) for n in cl.nodes) <= 15 and len(cl.bridge) <= 15
    assert cl.nodes[0].root.parts[-3:] == ("abcdef", "hosts", "host00")


@pytest.fixture
def subnet_check(monkeypatch):
    """netns' check of a new cluster's subnet, against the box's addresses and routes as given."""

    def check(subnet: str, addresses=(), routes=()):
        monkeypatch.setattr(netns, "_addresses", lambda: list(addresses))
        monkeypatch.setattr(netns, "_routes", lambda: list(routes))
        netns._check_subnet_free(dataclasses.replace(netns.Cluster.named("zz"), subnet=ipaddress.IPv4Network(subnet)))

    return check


@pytest.mark.parametrize("subnet", ["8.8.8.0/24", "192.0.2.0/24", "100.64.1.0/24", "127.1.0.0/24"])
def test_netns_refuses_a_subnet_that_is_not_private(subnet_check, subnet):
    """8.8.8.0/24 was brought up, and the box then sent 8.8.8.8 (a DNS server) to the cluster's bridge."""
    with pytest.raises(LabkitError, match=f"labkit_subnet {subnet} is not private address space"):
        subnet_check(subnet)


def test_netns_refuses_a_subnet_a_route_of_the_box_reaches_and_ignores_its_own_bridge(subnet_check):
    vpn = [("10.0.0.0/8", "tun0")]  # a route with no address of the box in it: only the route tells
    with pytest.raises(LabkitError, match="overlaps 10.0.0.0/8 on tun0"):
        subnet_check("10.77.5.0/24", routes=vpn)
    subnet_check("172.16.5.0/24", addresses=[("eth0", "192.168.1.7", 24)], routes=vpn)
    subnet_check("10.77.5.0/24", addresses=[("lk-zz", "10.77.5.1", 24)], routes=[("10.77.5.0/24", "lk-zz")])
    with pytest.raises(LabkitError, match="overlaps 10.77.0.9/16 on eth1"):
        subnet_check("10.77.5.0/24", addresses=[("eth1", "10.77.0.9", 16)])


def test_netns_refuses_another_backends_inventory():
    with pytest.raises(LabkitError, match="not 'netns'"):
        netns.Cluster.from_inventory(_inv("lab"))


def test_netns_init_mounts_every_private_directory_then_becomes_supervisord():
    cl = netns.Cluster.from_inventory(inventory.load(REPO / "inventory" / "netns"))
    script = netns._init_script(cl.nodes[0]).splitlines()
    mounted = [line.split()[-1] for line in script if line.startswith("mount --bind")]
    assert sorted(mounted) == sorted("/" + rel for rel in (*netns.MOUNT_DIRS, *netns.MOUNT_FILES))
    assert script[-1].startswith(f"exec {netns.INIT} -n")


# --- SSH client files -----------------------------------------------------------------------------------------


def test_client_config_pins_host_keys_and_multiplexes(tmp_path, monkeypatch):
    monkeypatch.setattr(ssh, "STATE", tmp_path)
    monkeypatch.setattr(ssh, "INCLUDE", tmp_path / "ssh_config")
    monkeypatch.setattr(ssh, "CONTROL_ROOT", tmp_path / "cp")
    ssh.write_client_config("c1", [ssh.SshHost("a", "10.0.0.5", "root", "ssh-ed25519 AAAAkey"),
                                   ssh.SshHost("b", "10.0.0.6", "vagrant", None, port=2222)])
    config = (tmp_path / "c1" / "ssh_config").read_text()
    assert "Host 10.0.0.5 a\n" in config and "User vagrant" in config and "Port 2222" in config
    assert config.count("StrictHostKeyChecking yes") == 2 and "ControlPersist" in config
    assert (tmp_path / "c1" / "known_hosts").read_text() == "10.0.0.5,a ssh-ed25519 AAAAkey\n"
    key = tmp_path / "c1" / "ssh" / "id_ed25519"
    assert key.exists() and key.stat().st_mode & 0o077 == 0 and ssh.public_key("c1").startswith("ssh-ed25519 ")
    assert f"Include {tmp_path}/*/ssh_config" in (tmp_path / "ssh_config").read_text()
    first = key.read_bytes()
    ssh.write_client_config("c1", [])
    assert key.read_bytes() == first  # made once, kept
    ssh.remove_client_config("c1")
    assert not (tmp_path / "c1" / "ssh_config").exists() and key.exists()


def test_sshd_open_is_false_for_a_closed_port():
    assert not ssh.sshd_open("127.0.0.1", 1, timeout=0.2)


@pytest.mark.parametrize("says, answers", [
    (None, False),  # accepts and says nothing: a firewall or proxy that takes every connection
    (b"HTTP/1.1 400 Bad Request\r\n\r\n", False),
    (b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n", True),
    (b"a line some servers send first\r\nSSH-2.0-OpenSSH_9.2\r\n", True),
])
def test_sshd_open_wants_an_ssh_servers_identification_not_only_a_connection(says, answers):
    """On this project's build machines every address accepts TCP on port 22: a lab inventory of addresses nobody
    can reach was "up" in fab status, and fab up waited for logins instead of saying nothing answers."""
    import socket
    import threading
    server = socket.create_server(("127.0.0.1", 0))
    held = []

    def serve():
        conn, _ = server.accept()
        held.append(conn)
        if says:
            conn.sendall(says)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        assert ssh.sshd_open("127.0.0.1", server.getsockname()[1], timeout=0.5) is answers
    finally:
        t.join(5)
        for conn in held:
            conn.close()
        server.close()


# --- what the fab tasks print ----------------------------------------------------------------------------------


def test_commands_go_through_sudo_only_for_a_non_root_login_with_become():
    hosts = Hosts(inventory.Inventory(path=Path("x"), cluster="c", subnet=None, backend="lab", groups={}, hosts=(
        inventory.Host("a", "1.1.1.1", {"ansible_user": "root", "ansible_become": True}),
        inventory.Host("b", "1.1.1.2", {"ansible_user": "student", "ansible_become": "true"}),
        inventory.Host("c", "1.1.1.3", {"ansible_user": "student"}))))
    assert [hosts.sudo(n) for n in "abc"] == [False, True, False]


class FakeBackend:
    UP_HINT = "fab up -i {inventory}"

    def __init__(self, states):
        self.states = states

    def status(self, inv):
        return [{"host": h, "address": "-", "state": s, "problem": ""} for h, s in self.states.items()]


@pytest.mark.parametrize("states, expected", [
    ({"h1": "up"}, None),
    ({"h1": "down"}, "cluster c1 (netns, inventory/x) is not up: bring it up with `fab up -i inventory/x`"),
])
def test_not_up_is_one_line_with_the_command_that_brings_the_cluster_up(monkeypatch, states, expected):
    monkeypatch.setattr(backends, "for_inventory", lambda inv: FakeBackend(states))
    assert runs.not_up(Hosts(_inv("netns"))) == expected


def test_a_partly_down_cluster_names_the_hosts_that_are_down(monkeypatch):
    monkeypatch.setattr(backends, "for_inventory", lambda inv: FakeBackend({"a": "up", "b": "down", "c": "broken"}))
    inv = inventory.Inventory(path=REPO / "inventory/x", cluster="c1", subnet=None, backend="netns", groups={},
                              hosts=tuple(inventory.Host(n, f"10.0.0.{i}") for i, n in enumerate("abc", 5)))
    assert "is not fully up (b, c are not)" in runs.not_up(Hosts(inv))


def test_unreachable_is_told_apart_from_a_failed_command():
    assert RemoteError("x", unreachable=True).unreachable and not RemoteError("x").unreachable


def test_ring_rows_show_each_hop_with_time_from_the_first():
    trace = [{"lap": 1, "node": "pyro1", "host": "pyro1", "address": "10.0.0.1:1", "received": 10.0,
              "numbers": [18, 12]},
             {"lap": 1, "node": "pyro2", "host": "pyro2", "address": "10.0.0.2:1", "received": 10.0025,
              "numbers": [12, 6]}]
    assert list(runs.ring_rows({"trace": trace})) == [
        [1, 1, "pyro1", "pyro1", "10.0.0.1:1", "0.00", "18,12"],
        [2, 1, "pyro2", "pyro2", "10.0.0.2:1", "2.50", "12,6"]]


def test_a_ring_run_whose_hop_times_cannot_be_right_says_the_hosts_clocks_disagree():
    """Each hop's +ms is its own host's clock against the first's: on lab machines whose clocks disagree the table
    showed a hop 298000 ms into a 4 ms lap, or before the hop that passed it the message, and said nothing."""
    def run(*received, total_ms=4.0):
        trace = [{"host": h, "received": r} for h, r in zip(["pyro1", "pyro2", "pyro3", "pyro1"], received)]
        return runs.ring_clock_note({"trace": trace, "total_ms": total_ms})

    assert run(10.0, 10.001, 10.002, 10.003) is None  # clocks that agree
    assert run(10.0) is None and runs.ring_clock_note({"trace": [], "total_ms": 0}) is None
    ahead = run(10.0, 308.0, 308.001, 10.003)
    assert ahead.startswith("the hops' times are read on each host's own clock, and these disagree: pyro2's reads "
                            "+298000.00 ms after pyro1's, in a run of 4.0 ms by pyro1's")
    assert "host.clock" in ahead
    assert "pyro3's reads -2.00 ms after pyro2's" in run(10.0, 10.003, 10.001, 10.0035)  # behind: backwards


def test_celery_rows_keep_mode_order_and_show_the_spread():
    modes = {m: {"tasks": 4, "ok": 4, "tasks_per_s": 1.5, "hosts": {"w1": 3, "w2": 1}, "error_count": 0}
             for m in ("chunks", "one", "group")}
    rows = list(runs.celery_rows({"modes": modes}))
    assert [r[0] for r in rows] == ["one", "group", "chunks"] and rows[0][4] == "w1: 3, w2: 1"


def test_send_file_rows_name_the_hosts_not_their_groups():
    """A cluster whose client is `desk` and socket server `hub` read `client -> sockserver`."""
    result = {"client": {"host": "desk", "address": "1"}, "server": {"host": "hub", "address": "2"}, "size": 4,
              "send": {"mb_per_s": 9.5, "sha256": "ab" * 32}, "get": {"mb_per_s": 8.0, "sha256": "ab" * 32}}
    assert [r[0] for r in runs.send_file_rows(result)] == ["desk -> hub", "hub -> desk"]


def test_status_rows_say_why_a_host_is_not_reachable():
    result = {"hosts": [
        {"host": "a", "address": "1", "groups": ["g"], "state": "up", "ssh": True,
         "programs": {"x": "RUNNING", "sshd": "RUNNING"}, "error": None},
        {"host": "b", "address": "2", "groups": [], "state": "down", "ssh": False, "programs": {},
         "error": "nothing answers on SSH port 22"}]}
    assert list(runs.status_rows(result)) == [
        ["a", "1", "g", "up", "yes", "sshd RUNNING, x RUNNING"],
        ["b", "2", "", "down", "no", "nothing answers on SSH port 22"]]


def test_values_that_start_with_a_dash_reach_labnodes_as_values(monkeypatch):
    """A message "-x", numbers "-4,2" or a pair "-1,2" were read by labnodes' argparse as options on the client
    host ("expected one argument"), so the ring and the math server never refused the numbers themselves."""
    commands = []

    def run(self, name, command, check=True, timeout=None):
        commands.append(command)
        return SimpleNamespace(stdout=json.dumps({"answers": []}), stderr="", exited=0)

    monkeypatch.setattr(Hosts, "run", run)
    monkeypatch.setattr(Hosts, "setting", lambda self, name, key: "/opt/v")
    inv = dataclasses.replace(_inv("netns"), groups={"clients": ("h1",), "ring": ("h1",), "sockservers": ("h1",)})
    hosts = Hosts(inv)
    runs.ring(hosts, message="-x", numbers="-4,2")
    runs.math(hosts, pairs=("-1,2", "48,18"))
    assert commands == ["/opt/v/bin/labnodes --tethered ring send --start=h1 --message=-x --numbers=-4,2 --json",
                        "/opt/v/bin/labnodes --tethered math ask --json -- -1,2 48,18"]


@pytest.mark.parametrize("count, mode, said", [
    (0, "all", "count must be 1..10000 tasks per mode, got 0"),
    (10001, "one", "count must be 1..10000 tasks per mode, got 10001"),
    (200, "bogus", "unknown mode 'bogus': choose one of one, group, chunks or all"),
])
def test_run_celery_refuses_what_the_batch_would_refuse_before_any_job_runs(monkeypatch, count, mode, said):
    """`fab run-celery --count 20000` ran its single lcm job on the cluster, then the batch refused the count."""
    commands = []
    monkeypatch.setattr(Hosts, "run", lambda self, name, command, check=True, timeout=None: commands.append(command))
    inv = dataclasses.replace(_inv("netns"), groups={"clients": ("h1",)})
    with pytest.raises(LabkitError) as err:
        runs.celery(Hosts(inv), count=count, mode=mode)
    assert str(err.value) == said and commands == []


@pytest.mark.parametrize("check_timeout, waits", [(None, 3.3), (120, 20.0)])
def test_the_look_at_supervisord_waits_as_long_as_fab_checks_probe_on_that_inventory(monkeypatch, check_timeout,
                                                                                     waits):
    """On emulated VMs (inventory/vagrant: labkit_check_timeout 120) `fab status` showed no program on seven of
    eight hosts: its look gave supervisord 3 s, the probe's default, where `fab check` gives it 20."""
    sent = []

    def run(self, name, command, check=True, timeout=None):
        sent.append(command)
        return SimpleNamespace(stdout=json.dumps({"programs": {"x": {"state": "RUNNING"}}}), stderr="", exited=0)

    monkeypatch.setattr(Hosts, "run", run)
    host = inventory.Host("h1", "10.0.0.5", {} if check_timeout is None else {"labkit_check_timeout": check_timeout})
    inv = dataclasses.replace(_inv("vagrant"), hosts=(host,))
    assert Hosts(inv).programs("h1") == {"x": "RUNNING"}
    assert sent == [remote.selftest_command("python3", "--programs", "--context", json.dumps({"timeout": waits}))]


def test_a_supervisord_that_does_not_answer_the_look_is_an_error_not_no_programs(monkeypatch):
    """`fab status` showed "-" (no program) for a host whose supervisord did not answer, and `fab fault stop
    HOST:PROGRAM` said the host had no such program."""
    monkeypatch.setattr(Hosts, "run", lambda self, name, command, check=True, timeout=None:
                        SimpleNamespace(stdout=json.dumps({"programs": None}), stderr="", exited=0))
    with pytest.raises(RemoteError, match="h1: supervisord does not answer"):
        Hosts(_inv("netns")).supervised("h1")


def test_an_error_quotes_a_long_value_cut_and_measured_then_the_hosts_reason(monkeypatch):
    """A 1001-character ring message was repeated in full in the error line that said it was too long."""
    def run(self, name, command, check=True, timeout=None):
        return SimpleNamespace(stdout="", stderr="labnodes: error: message text longer than 1000 characters",
                               exited=2)

    monkeypatch.setattr(Hosts, "run", run)
    monkeypatch.setattr(Hosts, "setting", lambda self, name, key: "/opt/v")
    inv = dataclasses.replace(_inv("netns"), groups={"clients": ("h1",), "ring": ("h1",)})
    with pytest.raises(RemoteError) as err:
        runs.ring(Hosts(inv), message="x" * 1001, numbers="48,18")
    assert str(err.value) == (f"h1: labnodes ring send --start=h1 --message={'x' * 40}... (1001 characters) "
                              "--numbers=48,18: labnodes: error: message text longer than 1000 characters")
    assert remote.shown_command("set -e\nmkdir -p /run/x\nflock 9\n") == "set -e ... (3 lines)"
    assert remote.shown_command("sha256sum /a") == "sha256sum /a"
    shown = remote.shown(["a" * 60, "--x=" + "b" * 56, "c" * 61])
    assert shown == f"{'a' * 60} --x={'b' * 56} {'c' * 40}... (61 characters)"


def test_labnodes_output_is_the_result_or_the_failure_with_its_code(monkeypatch):
    """`labnodes ... --json` that fails prints {"error": {message, code, address}}: fab raises its message (it once
    took any JSON for a result), and the checks get its code. An older labnodes prints no JSON: its last line."""
    failed = json.dumps({"error": {"message": "math server 10.0.0.3:5050: cannot connect: Connection refused",
                                   "code": "connect", "address": "10.0.0.3:5050"}})
    said = "labnodes: error: math server 10.0.0.3:5050: cannot connect: Connection refused\n"
    assert remote.labnodes_output(failed, said) == (None, remote.Failure(
        "math server 10.0.0.3:5050: cannot connect: Connection refused", "connect", "10.0.0.3:5050"))
    assert remote.labnodes_output("", said) == (None, remote.Failure(said.strip()))
    assert remote.labnodes_output("", "") == (None, remote.Failure("no output"))
    answers = [{"pair": "48,18", "gcd": 6, "lcm": 144}, {"pair": "x,1", "error": "numbers must be decimal digits"}]
    assert remote.labnodes_output(json.dumps(answers), "") == (answers, None)  # an ERR answer is a result
    assert remote.labnodes_output('{"error": "a result\'s own field", "n": 1}', "")[1] is None

    monkeypatch.setattr(Hosts, "run", lambda *a, **k: SimpleNamespace(stdout=failed, stderr=said, exited=1))
    monkeypatch.setattr(Hosts, "setting", lambda self, name, key: "/opt/v")
    with pytest.raises(RemoteError) as err:
        Hosts(_inv("netns")).labnodes("h1", "math", "ask", "--", "48,18")
    assert str(err.value) == "h1: labnodes math ask -- 48,18: math server 10.0.0.3:5050: cannot connect: " \
                             "Connection refused"
    assert (err.value.exited, err.value.stderr) == (1, said)


@pytest.mark.parametrize("stderr, hint", [
    ("labnodes file: error: argument ACTION: invalid choice: 'make' (choose from 'serve', 'send', 'get')", True),
    ("labnodes: error: argument COMMAND: invalid choice: 'file' (choose from 'ring')", True),
    ("labnodes: error: unrecognized arguments: --tethered", True),
    ("labnodes celery batch: error: argument --mode: invalid choice: 'bogus' (choose from 'one', 'all')", False),
])
def test_a_host_whose_labnodes_lacks_a_command_is_told_to_provision(monkeypatch, stderr, hint):
    """After an update of labkit, `fab send-file` on hosts provisioned before it ran `labnodes file make`, which
    their labnodes did not have yet: argparse's "invalid choice" said nothing of why. A user's bad value is not
    taken for that."""
    monkeypatch.setattr(Hosts, "run", lambda *a, **k: SimpleNamespace(stdout="", stderr=stderr + "\n", exited=2))
    monkeypatch.setattr(Hosts, "setting", lambda self, name, key: "/opt/v")
    with pytest.raises(RemoteError) as err:
        Hosts(_inv("netns")).labnodes("h1", "file", "make", "/x", "--size", "1")
    assert str(err.value).endswith(stderr + " (the host's labnodes is older than this labkit: fab provision updates it)"
                                   if hint else stderr)


@pytest.mark.parametrize("command", ["run", "labnodes"])
def test_a_command_refused_by_a_sudo_that_wants_a_password_says_what_fixes_it(monkeypatch, command):
    """After `fab up` (which checks sudo), a machine's sudoers changed: every run said only "sudo: a password is
    required"."""
    inv = dataclasses.replace(_inv("lab"), hosts=(inventory.Host("pc1", "10.20.30.11", {
        "ansible_user": "labadmin", "ansible_become": True}),), groups={"clients": ("pc1",)})
    ran = []
    conn = SimpleNamespace(run=lambda cmd, **kw: ran.append(cmd) or SimpleNamespace(
        exited=1, stdout="", stderr="sudo: a password is required\n"))
    monkeypatch.setattr(Hosts, "connection", lambda self, name: conn)
    monkeypatch.setattr(Hosts, "setting", lambda self, name, key: "/opt/v")
    hosts = Hosts(inv)
    with pytest.raises(RemoteError) as err:
        hosts.run("pc1", "true") if command == "run" else hosts.labnodes("pc1", "math", "ask", "48,18")
    assert ran[0].startswith("sudo -n sh -c ")
    assert str(err.value).endswith("logs in as labadmin, but sudo will not run without a password (sudo: a password "
                                   "is required): labkit needs passwordless sudo there, e.g. `echo 'labadmin ALL=(ALL) "
                                   "NOPASSWD: ALL' > /etc/sudoers.d/labkit` as root")


def test_a_ctrl_c_in_a_remote_command_closes_its_channel_and_is_raised():
    """invoke waits for a command's output to end after a Ctrl-C; without a terminal Fabric re-raises it, but the
    wait went on until the command finished on the host. The closed channel ends the wait, and the command's
    stdin on the host (which stops `labnodes --tethered`)."""
    from labkit.remote import _Remote

    runner = _Remote.__new__(_Remote)
    runner.using_pty, runner.channel = False, SimpleNamespace(closed=False)
    runner.channel.close = lambda: setattr(runner.channel, "closed", True)
    with pytest.raises(KeyboardInterrupt):
        runner.send_interrupt(KeyboardInterrupt())
    assert runner.channel.closed
    assert Hosts(_inv("netns"))._config.runners.remote is _Remote


def test_send_file_gives_its_timeout_to_both_transfers_and_none_when_not_asked(monkeypatch, tmp_path):
    calls = []

    class FakeHosts:  # records what runs on the hosts; the runs themselves are the cluster tests'
        inv = SimpleNamespace(cluster="t-sendfile")

        def run(self, *a, **k):
            return SimpleNamespace(stdout="")

        def labnodes(self, host, *args):
            calls.append(args)
            return {"size": 1, "sha256": "0" * 64, "mb_per_s": 1.0}

        def setting(self, host, name):
            return "/srv"

    monkeypatch.setattr(runs, "_first", lambda hosts, group: group)
    monkeypatch.setattr(runs, "_sha256", lambda hosts, host, path: "0" * 64)
    monkeypatch.setattr(runs, "_where", lambda hosts, host: {"host": host})
    monkeypatch.setattr(runs, "STATE", tmp_path)  # its lock file
    runs.send_file(FakeHosts(), size_mb=1, timeout=5)
    runs.send_file(FakeHosts(), size_mb=1)
    sends = [a for a in calls if a[:2] in (("file", "send"), ("file", "get"))]
    assert [a[2:4] for a in sends[:2]] == [("--timeout", "5"), ("--timeout", "5")]
    assert all("--timeout" not in a for a in sends[2:]) and len(sends) == 4


def test_send_file_refuses_a_size_out_of_range_before_touching_a_host():
    with pytest.raises(LabkitError, match="size must be 1..4096 MB"):
        runs.send_file(Hosts(_inv("netns")), size_mb=0)


FAB = str(Path(sys.executable).parent / "fab")


@pytest.mark.parametrize("args, message", [
    (["run-celery", "--count", "x"], "fab: error: --count takes a whole number, got 'x'"),
    (["send-file", "-s", "5G"], "fab: error: --size takes a whole number, got '5G'"),
    (["send-file", "--size", "1.5"], "fab: error: --size takes a whole number, got '1.5'"),
    (["new-inventory", "{tmp}/new", "--cluster", "zz", "--subnet", "10.77.99.0/24", "--ring", "five"],
     "fab: error: --ring takes a whole number, got 'five'"),
    (["check", "--timeout", "x"], "fab: error: --timeout 'x' is not a number"),
    (["check", "--timeout", "0"], "fab: error: --timeout '0': must be above 0 and at most 3600"),
    (["send-file", "--timeout", "nan"], "fab: error: --timeout 'nan': must be above 0 and at most 86400"),
    (["send-file", "--timeout", "-1"], "fab: error: --timeout '-1': must be above 0 and at most 86400"),
])
def test_a_number_option_given_something_else_is_one_line_and_exit_1(tmp_path, args, message):
    """Invoke casts an option whose default is a whole number with int() and let the ValueError out as a
    traceback; fab check's --timeout was float() of the text. Nothing may be written or reached."""
    env = dict(os.environ, LABKIT_INVENTORY=str(tmp_path / "no-such-inventory"))
    r = subprocess.run([FAB, *(a.format(tmp=tmp_path) for a in args)], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=60)
    assert (r.returncode, r.stderr, r.stdout) == (1, message + "\n", "")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("given, missing", [
    ([], "--cluster NAME (1-6 of [a-z0-9]) and --subnet A.B.C.0/24 (a /24 no other cluster uses)"),
    (["--cluster", "zz"], "--subnet A.B.C.0/24 (a /24 no other cluster uses)"),
    (["--subnet", "10.77.99.0/24"], "--cluster NAME (1-6 of [a-z0-9])"),
])
def test_new_inventory_without_its_cluster_or_subnet_says_which_and_writes_nothing(tmp_path, given, missing):
    """Invoke makes them options and gives None for one left out: new_sized() ended in a TypeError traceback."""
    r = subprocess.run([FAB, "new-inventory", str(tmp_path / "new"), *given], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == (f"fab: error: new-inventory needs {missing}, e.g. `fab new-inventory big --cluster big "
                        "--subnet 10.77.50.0/24`\n")
    assert not (tmp_path / "new").exists()


def test_every_task_that_acts_on_a_cluster_takes_its_inventory():
    """Without its own --inventory, `fab check -i students/ana` took `-i` as Fabric's --identity and checked the
    active cluster instead: a pass for the wrong cluster."""
    from invoke import Collection
    import fabfile
    tasks = Collection.from_module(fabfile).tasks
    without = {name for name, t in tasks.items() if "inventory_" not in inspect.signature(t.body).parameters}
    assert without == {"new-inventory"}


@pytest.mark.parametrize("args", [
    ["status"], ["run-ring"], ["run-celery"], ["run-math"], ["send-file"], ["demo"], ["check"],
    ["impair", "worker1", "--loss", "5"], ["heal"], ["partition", "pyro1", "pyro2"], ["fault", "stop", "pyro1"],
    ["scenario", "scenarios/ride-through.yml"], ["up"], ["provision"], ["down"],
])
def test_a_task_given_an_inventory_acts_on_it_not_on_the_active_one(tmp_path, args):
    env = dict(os.environ, LABKIT_INVENTORY=str(tmp_path / "active"))
    r = subprocess.run([FAB, *args, "-i", str(tmp_path / "given")], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=60)
    assert (r.returncode, r.stderr) == (1, f"fab: error: inventory {tmp_path / 'given'} does not exist\n")


@pytest.mark.parametrize("args, message", [
    (["-i", "{tmp}/ana", "check"], "fab: error: `-i {tmp}/ana` before the task's name is Fabric's --identity (an SSH "
     "key), not an inventory: write it after the task's name, `fab check -i {tmp}/ana`"),
    (["-H", "pyro2,pyro3", "run-ring"], "fab: error: `-H pyro2` is Fabric's --hosts, which labkit's tasks do not use: "
     "`fab run-ring` acts on the hosts of the cluster's inventory (choose it with -i INVENTORY after the task's name)"),
    (["-S", "/dev/null", "status"], "fab: error: `-S /dev/null` is Fabric's --ssh-config, which labkit's tasks do not "
     "use: they reach the hosts with the cluster's own ssh_config (.labkit/CLUSTER/ssh_config)"),
    (["run-ring", "--numbers"], "Flag --numbers needed value and was not given one!"),
])
def test_fabrics_own_host_and_key_options_are_refused_before_anything_runs(tmp_path, args, message):
    """`fab -i students/ana check` took -i as Fabric's --identity and checked the active cluster: a pass for the
    wrong cluster. -H ran the task once per host given, each time on the whole active cluster. An option without
    its value named invoke's `<Argument: numbers (n)>`."""
    env = dict(os.environ, LABKIT_INVENTORY=str(tmp_path / "active"))
    r = subprocess.run([FAB, *(a.format(tmp=tmp_path) for a in args)], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=60)
    assert (r.returncode, r.stderr, r.stdout) == (1, message.format(tmp=tmp_path) + "\n", "")


@pytest.mark.parametrize("args", [["partition", "--help"], ["scenario", "-h"], ["fault", "--help"],
                                  ["impair", "--help"], ["run-ring", "--help"], ["--help", "partition"]])
def test_a_tasks_help_is_shown_also_where_the_task_takes_positional_arguments(tmp_path, args):
    """invoke fills positional arguments first: `fab scenario --help` said "scenario --help: No such file or
    directory", `fab partition --help` that an argument was missing, `fab impair --help` "nothing to impair"."""
    env = dict(os.environ, LABKIT_INVENTORY=str(tmp_path / "active"))
    r = subprocess.run([FAB, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    task = next(a for a in args if not a.startswith("-"))
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout.startswith(f"Usage: fab [--core-opts] {task} [--options]") and "Options:" in r.stdout


CELERY_REPORT = {"submit": {"result": 144, "worker": "w@worker1", "host": "worker1"}, "workers": ["worker1"],
                 "modes": {"one": {"tasks": 3, "ok": 3, "tasks_per_s": 9.0, "hosts": {"worker1": 3}, "error_count": 0,
                                   "errors": []},
                           "group": {"tasks": 3, "ok": 1, "tasks_per_s": 9.0, "hosts": {"worker1": 1}, "error_count": 2,
                                     "errors": ["group: gcd(4, 2) expected 2, got 3",
                                                "group: no result within 5 s after 2 of 3 tasks"]}}}


@pytest.mark.parametrize("task, result, code", [
    ("run_math", {"answers": [{"pair": "48,18", "gcd": 6, "lcm": 144, "server": "s"}]}, None),
    ("run_math", {"answers": [{"pair": "48,18", "gcd": 6, "lcm": 144, "server": "s"},
                              {"pair": "1,2,3", "error": "expected two numbers", "server": "s"}]}, 1),
    ("run_celery", {**CELERY_REPORT, "modes": {"one": CELERY_REPORT["modes"]["one"]}}, None),
    ("run_celery", CELERY_REPORT, 1),
])
def test_a_run_whose_answers_hold_an_error_exits_1_after_showing_them(monkeypatch, capsys, task, result, code):
    """`fab run-math --pair 1,2,3` printed the server's ERR and exited 0, and `fab run-celery` with wrong or
    missing results did too, where `labnodes math ask` and `labnodes celery batch` exit 1: a script (or a
    student's `&&`) took a refused request for a good run."""
    import fabfile

    monkeypatch.setattr(fabfile, "_run", lambda *args, **kwargs: result)
    with pytest.raises(SystemExit) if code else contextlib.nullcontext() as exc:
        getattr(fabfile, task).body(None)
    assert (exc.value.code if code else None) == code
    if task == "run_celery":
        assert capsys.readouterr().err == "".join(f"error: {e}\n" for e in result["modes"].get("group", {})
                                                  .get("errors", []))


def test_a_netns_cluster_is_refused_in_one_line_to_anyone_but_root():
    """As another user, `fab status` called every host of a running netns cluster "broken: its init
    (supervisord) is not running", `fab run-ring` said the cluster was not up, and `fab scenario` played 13 s of
    failures: that user can neither see into the namespaces nor read the cluster's SSH key. Run as nobody."""
    home = tempfile.mkdtemp(prefix="labkit-nobody-")  # Ansible writes ~/.ansible
    os.chmod(home, 0o777)
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    env = dict(os.environ, HOME=home, LABKIT_INVENTORY=str(REPO / "inventory" / "netns"))
    try:
        for task in (["status"], ["run-ring"], ["check"], ["scenario", "scenarios/ride-through.yml"], ["provision"]):
            r = subprocess.run([*drop, FAB, *task], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
            assert (r.returncode, r.stdout) == (1, ""), (task, r.stdout[-2000:], r.stderr[-2000:])
            assert r.stderr.startswith("fab: error: the netns backend must run as root"), (task, r.stderr[-2000:])
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_only_the_netns_backend_refuses_a_user_who_is_not_root(monkeypatch):
    from labkit.backends import netns as netns_backend

    monkeypatch.setattr(netns_backend.os, "geteuid", lambda: 1000)
    with pytest.raises(LabkitError, match="must run as root"):
        backends.preflight(_inv("netns"))
    with pytest.raises(LabkitError, match="must run as root"):
        netns_backend.status(_inv("netns"))
    for backend in ("vagrant", "lab"):
        assert backends.preflight(_inv(backend)) is None


HOLD_LOCK = """
import sys, time
from labkit import one_at_a_time
with one_at_a_time(sys.argv[1], "second: waiting"):
    print("holding", flush=True)
    sys.stdin.readline()
"""


def test_a_second_holder_of_a_run_lock_says_it_waits_and_goes_on_when_the_first_ends(tmp_path, capsys):
    from labkit import one_at_a_time

    lock = tmp_path / "state" / "send-file.lock"
    first = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock)], cwd=REPO, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert first.stdout.readline() == "holding\n"
        second = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock)], cwd=REPO, text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert second.stderr.readline() == "second: waiting\n"  # said before it blocks, while the first holds
        first.communicate("\n", timeout=30)
        assert second.stdout.readline() == "holding\n"
        second.communicate("\n", timeout=30)
        assert second.returncode == 0
    finally:
        first.kill()
    with one_at_a_time(lock, "nobody holds it: never said"):
        pass
    assert capsys.readouterr().err == ""


def test_provisioning_a_cluster_holds_its_lock_and_every_caller_names_the_cluster(tmp_path, monkeypatch):
    """Two `fab provision` at once restarted each other's programs (supervisord: STILL_RUNNING) and both failed;
    provisionings now hold the cluster's lock, so a second one waits (the lock: the test above)."""
    import fcntl

    from labkit import provision

    held = []

    def fake(inventory, **kwargs):
        with open(tmp_path / "c1" / "provision.lock") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(False)
            except BlockingIOError:
                held.append(True)
        return {"seconds": 0.0, "hosts": {}, "timing": {}}

    monkeypatch.setattr(provision, "STATE", tmp_path)
    monkeypatch.setattr(provision, "_provision", fake)
    provision.provision("inventory/x", cluster="c1")
    assert held == [True]
    with pytest.raises(TypeError, match="cluster"):  # no caller can forget it (`vagrant up` had: no lock)
        provision.provision("inventory/x")


def test_whole_number_options_still_say_int_in_fabs_help():
    r = subprocess.run([FAB, "--help", "run-celery"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--count=INT" in r.stdout, r.stdout


def test_a_ctrl_c_in_a_task_is_one_line_saying_what_to_do_and_exit_130(capsys):
    """Invoke ends a task interrupted by Ctrl-C with exit 1 and not a word, which reads as a failure nobody
    explained (tests/cluster/test_lab_cluster.py interrupts a real `fab provision`)."""
    from invoke import Context

    from labkit.options import task

    def run_it(c):
        raise KeyboardInterrupt

    interrupted = task(interrupted="run it again")(run_it)
    with pytest.raises(SystemExit) as exc:
        interrupted(Context())
    assert exc.value.code == 130
    assert capsys.readouterr().err == "\nfab run-it: interrupted: run it again\n"
    with pytest.raises(SystemExit):
        task(run_it)(Context())
    assert capsys.readouterr().err == "\nfab run-it: interrupted\n"


FAKE_VAGRANT = """#!/bin/bash
# counts the SIGINTs it gets; takes a second to clean up after the first, as vagrant does
n=0
trap 'n=$((n+1))' INT
touch "$OUT.started"
for i in $(seq 600); do
  if [ $n -gt 0 ]; then sleep 1; echo $n > "$OUT"; exit 0; fi
  sleep 0.1
done
exit 3
"""


def test_a_ctrl_c_during_vagrant_gives_it_one_sigint_and_waits_for_its_clean_up(tmp_path):
    """vagrant cleans up after one SIGINT and quits at once at a second. When it shared fab's process group, a
    terminal's Ctrl-C reached it, and subprocess.run killed it a quarter second later, clean-up or not.
    The stand-in counts SIGINTs; the real vagrant is what make vm-test runs."""
    import signal
    import time

    (tmp_path / "vagrant").write_text(FAKE_VAGRANT)
    (tmp_path / "vagrant").chmod(0o755)
    out = tmp_path / "count"
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}", OUT=str(out))
    code = ("from types import SimpleNamespace; from labkit.backends import vagrant; "
            "vagrant._vagrant(SimpleNamespace(path='inv'), 'up')")
    fab_like = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, start_new_session=True,
                                stderr=subprocess.PIPE, text=True)
    while not Path(f"{out}.started").exists() and fab_like.poll() is None:
        time.sleep(0.05)
    os.killpg(fab_like.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    err = fab_like.communicate(timeout=120)[1]
    assert "KeyboardInterrupt" in err  # fab's Task turns it into its one line
    assert out.read_text() == "1\n"  # one SIGINT, and its clean-up ran to the end


def test_a_child_that_will_not_stop_is_killed_after_its_grace():
    from labkit import stop_child

    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                                 "signal.signal(signal.SIGINT, signal.SIG_IGN); print('ready', flush=True); "
                                 "time.sleep(600)"], stdout=subprocess.PIPE, text=True, process_group=0)
    assert stubborn.stdout.readline() == "ready\n"
    stop_child(stubborn, grace=0.5)
    assert stubborn.returncode == -9


def test_every_setting_the_roles_choose_reaches_labnodes_toml():
    """The settings template of site.yml names every labnodes_* port and path of the labnodes role, and each key is
    a field of labnodes.config.Settings (so a host's labnodes.toml is where the control side finds it)."""
    import yaml

    from labnodes import config
    group_vars = yaml.safe_load((REPO / "playbooks" / "group_vars" / "all.yml").read_text())
    keys = set(group_vars["labkit_settings"])
    assert keys <= set(config.FIELDS)
    assert {"venv", "redis_port", "ns_port", "math_port", "file_port", "file_root", "flower_port"} <= keys
    rendered = json.dumps(group_vars["labkit_settings"])
    for name in ("labnodes_venv", "labnodes_redis_port", "labnodes_ns_port", "labnodes_math_port",
                 "labnodes_file_port", "labnodes_file_root", "labnodes_flower_port"):
        assert "{{ " + name + " }}" in rendered, name

# --- progress of long work -------------------------------------------------------------------------------------


def test_progress_in_a_log_is_a_line_per_tenth_and_a_last_line():
    import io

    from labkit.progress import Progress
    out = io.StringIO()
    with Progress("hosts ready", 100, stream=out, tty=False) as p:
        for done in range(0, 101):
            p.update(done)
    lines = out.getvalue().splitlines()
    assert lines[0] == "hosts ready: 10/100" and lines[-1] == "hosts ready: 100/100" and len(lines) == 10


def test_progress_of_a_quick_step_is_one_line():
    import io

    from labkit.progress import Progress
    out = io.StringIO()
    with Progress("provision: labnodes: install", 8, stream=out, tty=False, patience=60) as p:
        for done in range(1, 9):
            p.update(done)
    assert out.getvalue() == "provision: labnodes: install: 8/8\n"


def test_a_failed_provisioning_names_each_host_that_failed_or_was_unreachable_and_how_many_ran_through():
    """It said `failed or unreachable hosts: ['worker2']` (a Python list), nothing of why or of the others."""
    from labkit import provision
    recap = provision.parse_recap("""PLAY RECAP *********
broker                     : ok=15   changed=0    unreachable=0    failed=0    skipped=3    rescued=0    ignored=0
localhost                  : ok=3    changed=0    unreachable=0    failed=0    skipped=0    rescued=0    ignored=0
pyro1                      : ok=4    changed=0    unreachable=0    failed=1    skipped=1    rescued=0    ignored=0
worker1                    : ok=5    changed=0    unreachable=0    failed=0    skipped=1    rescued=0    ignored=0
worker2                    : ok=0    changed=0    unreachable=1    failed=0    skipped=1    rescued=0    ignored=0
""")
    assert provision.failure_summary(4, recap) == (
        "ansible-playbook exited 4: failed on pyro1; worker2 unreachable (down, or its network? fab status; fab "
        "provision again once it is back); the other 2 hosts ran through")
    assert provision.failure_summary(2, {"localhost": {"ok": 1, "changed": 0, "unreachable": 0, "failed": 1}}) == (
        "ansible-playbook exited 2: failed on localhost (the control machine's play: the hosts' play did not run)")
    assert provision.failure_summary(1, {}) == "ansible-playbook exited 1: see its output above"


def test_provision_progress_counts_the_hosts_each_task_reported(monkeypatch):
    from labkit import provision
    seen = []

    class Recorder:
        def __init__(self, phase, total, **kw):
            self.phase = phase

        def update(self, done, detail=""):
            seen.append((self.phase, done))

        def close(self):
            pass

    monkeypatch.setattr(provision, "Progress", Recorder)
    tasks = provision.TaskProgress(3)
    for line in ["TASK [labnodes : Ensure labnodes is configured] ****", "ok: [a]", "changed: [b] => (item=x)",
                 "changed: [b] => (item=y)", "skipping: [c]",
                 "TASK [Run the services of the host's groups] ***", "included: /x/main.yml for a, b, c"]:
        tasks.line(line)
    assert seen == [("provision: labnodes: Ensure labnodes is configured", 1),
                    ("provision: labnodes: Ensure labnodes is configured", 2),
                    ("provision: labnodes: Ensure labnodes is configured", 2),
                    ("provision: labnodes: Ensure labnodes is configured", 3),
                    ("provision: play: Run the services of the host's groups", 3)]


def test_opening_connections_never_rebuilds_the_shared_ssh_settings_under_other_threads(tmp_path, monkeypatch):
    """Fabric writes IdentityFile into the config a Connection is given, and invoke then rebuilds that config from
    empty: with one shared config, a thread reading it meanwhile failed ("No attribute ... 'port'")."""
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "ssh_config").write_text(f"Host *\n  User root\n  IdentityFile {tmp_path}/id_ed25519\n")
    monkeypatch.setattr(remote, "STATE", tmp_path)
    hosts = Hosts(inventory.Inventory(path=Path("x"), cluster="c", subnet=None, backend="lab", groups={}, hosts=(
        inventory.Host("a", "10.0.0.1", {"ansible_user": "root"}), inventory.Host("b", "10.0.0.2", {}))))

    def rebuilt():
        raise AssertionError("the shared config was rebuilt")

    monkeypatch.setattr(hosts._config, "merge", rebuilt)
    first, second = hosts.connection("a"), hosts.connection("b")
    assert first.connect_kwargs["key_filename"] == [f"{tmp_path}/id_ed25519"]
    assert first.config is not second.config and hosts.connection("a") is first


# --- fab down --forget -----------------------------------------------------------------------------------------


def test_forget_deletes_what_the_machine_keeps_of_the_cluster_and_a_second_forget_finds_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(backends, "STATE", tmp_path)
    kept = tmp_path / "c1"
    for name in ("ssh/id_ed25519", "secrets/redis_password", "log/client.log", "provision.lock", "send-file.lock"):
        (kept / name).parent.mkdir(parents=True, exist_ok=True)
        (kept / name).write_text("x")
    (tmp_path / "c2" / "secrets").mkdir(parents=True)  # another cluster's: kept
    said = []
    backends.forget(SimpleNamespace(cluster="c1"), echo=said.append)
    assert not kept.exists() and (tmp_path / "c2" / "secrets").is_dir()
    assert said[0].startswith("down: forgot cluster c1: ") and "(log, secrets, ssh); the next" in said[0]
    backends.forget(SimpleNamespace(cluster="c1"), echo=said.append)
    assert said[1] == "down: this machine keeps nothing of cluster c1"


@pytest.mark.parametrize("lock, holder", [("provision.lock", "a provision"), ("send-file.lock", "a send-file")])
def test_forget_deletes_nothing_while_a_command_holds_one_of_the_clusters_locks(tmp_path, monkeypatch, lock, holder):
    import fcntl
    monkeypatch.setattr(backends, "STATE", tmp_path)
    (tmp_path / "c1" / "secrets").mkdir(parents=True)
    with open(tmp_path / "c1" / lock, "a") as held:  # as labkit.one_at_a_time holds it in another fab
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(LabkitError, match=f"cluster c1: {holder} of it is running .*{lock} is held.*nothing forgotten"):
            backends.forget(SimpleNamespace(cluster="c1"), echo=print)
    assert (tmp_path / "c1" / "secrets").is_dir()
    backends.forget(SimpleNamespace(cluster="c1"), echo=print)  # once it has ended
    assert not (tmp_path / "c1").exists()


@pytest.mark.parametrize("unbuffered", [True, False], ids=["PYTHONUNBUFFERED", "buffered"])
@pytest.mark.parametrize("program", ["fab", "labnodes"])
def test_a_reader_that_stops_reading_ends_the_command_quietly_with_141(tmp_path, program, unbuffered):
    """`fab status | head -3` ended in a BrokenPipeError traceback (and, with stdout buffered, in "Exception
    ignored ... BrokenPipeError" at exit). Tried: each command's stdout a pipe whose reader closed before it wrote."""
    bin_dir = Path(sys.executable).parent
    if program == "fab":
        inv = tmp_path / "inv"
        subprocess.run([FAB, "new-inventory", str(inv), "--cluster", "zqp", "--subnet", "10.77.77.0/24"], cwd=REPO,
                       capture_output=True, check=True, timeout=60)
        cmd = [FAB, "status", "-i", str(inv)]  # a cluster never brought up: a table of hosts that are down
    else:
        cmd = [str(bin_dir / "labnodes"), "file", "make", str(tmp_path / "x.bin"), "--size", "1"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        r = subprocess.run(cmd, cwd=REPO, env=env, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert (r.returncode, r.stderr) == (141, "")


def test_a_broken_pipe_elsewhere_is_not_taken_for_a_reader_that_went():
    """A connection to a host that breaks is a BrokenPipeError too: while stdout's reader is there, it stays the
    error it is (reader_gone says None)."""
    code = "from labnodes import output; print(output.reader_gone())"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (0, "None\n", "")
