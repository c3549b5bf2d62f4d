"""The netns backend, checked over real SSH: each host is its own machine, and up/down keep their promises."""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from labkit import REPO, inventory
from labkit.backends import netns
from tests.cluster.conftest import (SSH_CONFIG, STATE, T1, left_by_ended_sessions, leftovers, netns_cli, poll, ssh,
                                   write_inventory)

pytestmark = pytest.mark.cluster

NAMES = list(T1["hosts"])
PAIRS = [(NAMES[i], NAMES[(i + 1) % len(NAMES)]) for i in range(len(NAMES))]


def addr(name: str) -> str:
    return T1["hosts"][name]


@pytest.mark.parametrize("name", NAMES)
def test_hostname_is_the_inventory_name(t1, name):
    assert ssh(addr(name), "hostname").stdout.strip() == name


@pytest.mark.parametrize("name", NAMES)
def test_host_holds_its_inventory_address(t1, name):
    out = ssh(addr(name), "ip -4 -o addr show dev eth0").stdout
    assert f"inet {addr(name)}/24 " in out


@pytest.mark.parametrize(("src", "dst"), PAIRS, ids=[f"{s}-to-{d}" for s, d in PAIRS])
def test_hosts_reach_each_other_over_tcp(t1, src, dst):
    banner = ssh(addr(src), f"timeout 5 bash -c 'exec 3<>/dev/tcp/{addr(dst)}/22; head -c 4 <&3'").stdout
    assert banner == "SSH-"


def test_host_reaches_the_box_over_the_bridge(t1):
    with socket.create_server((t1.gateway, 0)) as server:
        port = server.getsockname()[1]
        server.settimeout(30)

        def answer():
            conn, _ = server.accept()
            with conn:
                conn.sendall(b"hello from control\n")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        out = ssh(addr(NAMES[0]), f"timeout 5 bash -c 'exec 3<>/dev/tcp/control/{port}; head -n 1 <&3'").stdout
        thread.join(10)
    assert out == "hello from control\n"


@pytest.mark.parametrize("directory", ["/tmp", "/var/lib/labnodes", "/opt/labnodes", "/root", "/usr/local/bin"])
def test_files_are_private_to_each_host_and_visible_on_the_box(t1, directory):
    name = f"probe-{uuid.uuid4().hex[:8]}"
    writer, other = NAMES[0], NAMES[1]
    ssh(addr(writer), f"echo {writer} > {directory}/{name}")
    try:
        assert ssh(addr(other), f"test -e {directory}/{name}", check=False).returncode == 1
        assert not os.path.exists(f"{directory}/{name}")
        on_box = STATE / t1.cluster / "hosts" / writer / directory.lstrip("/") / name
        assert on_box.read_text() == f"{writer}\n"
    finally:
        ssh(addr(writer), f"rm -f {directory}/{name}", check=False)


def test_pid1_is_supervisord_and_ps_shows_only_the_host(t1):
    host = addr(NAMES[0])
    assert netns.INIT in ssh(host, "tr '\\0' ' ' < /proc/1/cmdline").stdout
    commands = set(ssh(host, "ps -e -o comm=").stdout.split())
    assert "supervisord" in commands and "sshd" in commands
    assert commands <= {"supervisord", "sshd", "bash", "sh", "ps"}, commands


def test_the_hosts_supervisord_does_without_pkg_resources(t1):
    """Why the hosts' PID 1 is supervisor 4.3 from PyPI (scripts/setup.sh): Debian's 4.2.5 imports pkg_resources,
    7 MB more in every host. Run with the interpreter that runs INIT."""
    python = Path(netns.INIT).parent / "python"
    program = "import sys, supervisor.supervisord, supervisor.options; print('pkg_resources' in sys.modules)"
    assert ssh(addr(NAMES[0]), f"{python} -c {shlex.quote(program)}").stdout.strip() == "False"


def test_orphan_is_reaped_by_the_hosts_pid1(t1):
    host = addr(NAMES[1])
    pid = ssh(host, "sh -c 'sleep 1 >/dev/null 2>&1 </dev/null & echo $!'").stdout.strip()
    assert pid.isdigit()
    parent = ssh(host, f"ps -o ppid= -p {pid} || true").stdout.strip()
    assert parent in ("1", ""), f"orphan {pid} was adopted by {parent}, not PID 1"
    # Gone from /proc (not a zombie) once it exits: PID 1 waited for it.
    assert poll(lambda: ssh(host, f"test -e /proc/{pid}", check=False).returncode == 1, timeout=15)


def test_password_login_is_refused(t1):
    proc = ssh(addr(NAMES[0]), "true", "-o", "ControlPath=none", "-o", "PubkeyAuthentication=no",
               "-o", "PreferredAuthentications=password,keyboard-interactive", check=False)
    assert proc.returncode == 255
    assert "Permission denied (publickey)" in proc.stderr


def test_etc_hosts_names_every_host_and_the_box(t1):
    lines = {tuple(ln.split()) for ln in ssh(addr(NAMES[2]), "cat /etc/hosts").stdout.splitlines()}
    for name, ip in T1["hosts"].items():
        assert (ip, name) in lines
    assert (t1.gateway, "control") in lines


def test_ssh_by_inventory_name_checks_the_host_key(t1):
    # StrictHostKeyChecking yes: this only works because known_hosts lists the host under its name too.
    assert ssh(NAMES[2], "hostname").stdout.strip() == NAMES[2]


def test_bridge_traffic_passes_the_clusters_forward_rule_when_br_netfilter_filters(t1):
    try:
        filtered = Path("/proc/sys/net/bridge/bridge-nf-call-iptables").read_text().strip() == "1"
    except OSError:
        filtered = False
    if not filtered:
        pytest.skip("bridged traffic does not pass iptables on this box")

    def packets() -> int:
        out = subprocess.run(["iptables", "-w", "-L", "FORWARD", "-v", "-n", "-x"], capture_output=True,
                             text=True, check=True).stdout
        return sum(int(ln.split()[0]) for ln in out.splitlines() if f"labkit lk-{t1.cluster}" in ln)

    before = packets()
    ssh(addr(NAMES[0]), f"timeout 5 bash -c 'exec 3<>/dev/tcp/{addr(NAMES[1])}/22; head -c 4 <&3'")
    assert packets() > before


def test_up_again_keeps_every_host_and_its_init(t1):
    before = {row["host"]: row["init_pid"] for row in netns.status(t1)}
    lines = []
    netns.up(t1, echo=lines.append)  # the API Fabric calls
    after = {row["host"]: row["init_pid"] for row in netns.status(t1)}
    assert after == before and all(before.values())
    assert "0 started, 3 kept" in lines[-1]


def test_killed_init_is_rebuilt_by_the_next_up_and_keeps_its_files(t1):
    victim = NAMES[1]
    ssh(addr(victim), "echo kept > /var/lib/labnodes/survivor")
    rows = {row["host"]: row for row in netns.status(t1)}
    os.kill(rows[victim]["init_pid"], signal.SIGKILL)
    assert poll(lambda: {r["host"]: r for r in netns.status(t1)}[victim]["state"] == "broken")
    lines = []
    netns.up(t1, echo=lines.append)
    assert any(f"{victim} {addr(victim)}: rebuilding" in line for line in lines), lines
    rows_after = {row["host"]: row for row in netns.status(t1)}
    assert all(r["state"] == "up" for r in rows_after.values()), rows_after
    assert rows_after[victim]["init_pid"] != rows[victim]["init_pid"]
    for name in NAMES:
        if name != victim:
            assert rows_after[name]["init_pid"] == rows[name]["init_pid"]
    assert ssh(addr(victim), "cat /var/lib/labnodes/survivor").stdout == "kept\n"


def test_a_host_made_by_another_version_of_labkit_is_rebuilt_by_the_next_up(t1):
    """A host's private directories are fixed when it starts: a host made before /usr/local/bin became private
    kept the box's, and provisioning would have linked the labnodes command there, on the box."""
    victim = NAMES[0]
    init = STATE / t1.cluster / "hosts" / victim / "init.sh"
    init.write_text(init.read_text().replace(" /usr/local/bin\n", " /usr/local/bin-gone\n"))
    row = {r["host"]: r for r in netns.status(t1)}[victim]
    assert (row["state"], row["problem"]) == ("broken", "it was made by another version of labkit")
    lines = []
    netns.up(t1, echo=lines.append)
    assert any(f"{victim} {addr(victim)}: rebuilding (it was made by another version" in line for line in lines), lines
    assert {r["host"]: r for r in netns.status(t1)}[victim]["state"] == "up"


def test_host_missing_its_veth_is_rebuilt_by_the_next_up(t1):
    victim = NAMES[2]
    subprocess.run(["ip", "link", "del", netns.Cluster.from_inventory(t1).nodes[2].veth], check=True)
    assert {r["host"]: r for r in netns.status(t1)}[victim]["state"] == "broken"
    lines = []
    netns.up(t1, echo=lines.append)
    assert any(f"{victim} {addr(victim)}: rebuilding (veth" in line for line in lines), lines
    assert ssh(addr(victim), "hostname").stdout.strip() == victim


def test_up_removes_hosts_the_inventory_no_longer_lists(t1):
    dropped = NAMES[2]
    try:
        netns.up(dataclasses.replace(t1, hosts=t1.hosts[:2]), echo=lambda line: None)
        assert f"lk-{t1.cluster}-{dropped}" not in os.listdir("/run/netns")
        assert not (STATE / t1.cluster / "hosts" / dropped).exists()
        assert [r["state"] for r in netns.status(t1)] == ["up", "up", "down"]
    finally:
        netns.up(t1, echo=lambda line: None)
    assert ssh(addr(dropped), "hostname").stdout.strip() == dropped


def test_second_cluster_coexists_and_its_down_leaves_the_first_intact(t1, cluster_factory, monkeypatch):
    hosts = {"delta": "10.77.10.20", "echo": "10.77.10.21"}
    path = cluster_factory("t2", "10.77.10.0/24", hosts)
    netns_cli("up", "-i", str(path))
    monkeypatch.delenv("LABKIT_INVENTORY", raising=False)
    assert inventory.active_inventory() == path.absolute()
    assert ssh(hosts["delta"], f"timeout 5 bash -c 'exec 3<>/dev/tcp/{hosts['echo']}/22; head -c 4 <&3'"
               ).stdout == "SSH-"
    assert ssh(hosts["echo"], "hostname").stdout.strip() == "echo"
    # A ControlPersist master is now open to delta; down must close it.
    assert subprocess.run(["ssh", "-F", str(SSH_CONFIG), "-O", "check", hosts["delta"]],
                          capture_output=True).returncode == 0
    (STATE / "t2" / "secrets").mkdir(exist_ok=True)
    (STATE / "t2" / "secrets" / "probe").write_text("s3cret\n")

    t1_before = {row["host"]: row["init_pid"] for row in netns.status(t1)}
    out = netns_cli("down", "-i", str(path)).stdout
    assert "2 namespaces" in out
    assert leftovers("t2", "10.77.10.0/24") == []
    assert (STATE / "t2" / "secrets" / "probe").read_text() == "s3cret\n"
    assert (STATE / "t2" / "ssh" / "id_ed25519").exists()
    again = netns_cli("down", "-i", str(path))
    assert "nothing was running" in again.stdout

    assert {row["host"]: row["init_pid"] for row in netns.status(t1)} == t1_before
    assert ssh(addr(NAMES[0]), "hostname").stdout.strip() == NAMES[0]


def test_an_inventory_copied_without_renaming_its_cluster_can_neither_take_its_hosts_nor_remove_them(t1, tmp_path):
    """Two inventories with one labkit_cluster share its namespaces: before, `up` of the copy rebuilt t1's hosts on
    the copy's addresses and its `down` removed them, and t1 broke without a word."""
    copy = write_inventory(tmp_path / "copy", T1["cluster"], "10.77.19.0/24", {"alpha": "10.77.19.10"})
    before = {row["host"]: row["init_pid"] for row in netns.status(t1)}
    for verb, fix in (("up", f"give {copy} a labkit_cluster of its own, or take that cluster down first "
                             f"(fab down -i {t1.path})"),
                      ("down", f"take it down from there (fab down -i {t1.path})")):
        proc = netns_cli(verb, "-i", str(copy), check=False)
        assert proc.returncode != 0
        assert f"cluster {T1['cluster']} is running from another inventory, {t1.path}: {fix}" in proc.stderr
    assert {row["host"]: row["init_pid"] for row in netns.status(t1)} == before
    assert ssh(addr(NAMES[0]), "ip -4 -o addr show dev eth0").stdout.count(f"inet {addr(NAMES[0])}/24 ") == 1


def test_an_up_refused_for_another_clusters_subnet_leaves_nothing_of_its_cluster(t1, tmp_path):
    """It left an empty .labkit/<cluster>/ behind, one per name tried."""
    name = f"z{uuid.uuid4().hex[:5]}"
    copy = write_inventory(tmp_path / "copy", name, T1["subnet"], {"alpha": T1["hosts"][NAMES[0]]})
    proc = netns_cli("up", "-i", str(copy), check=False)
    assert proc.returncode != 0 and "pick another subnet" in proc.stderr, proc.stderr
    assert not (STATE / name).exists()


def test_a_second_clone_of_labkit_on_the_box_can_neither_take_the_cluster_nor_remove_it(t1, tmp_path):
    """Namespaces belong to the box, not to a clone of labkit: when the record lived in the clone's .labkit/, a second
    clone's `make demo` (cluster `lab` in both) rebuilt the first clone's hosts under its own roots, unannounced."""
    clone = tmp_path / "clone"
    shutil.copytree(REPO / "labkit", clone / "labkit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "ansible.cfg", clone / "ansible.cfg")
    copy = write_inventory(clone / "inventory" / "netns", T1["cluster"], T1["subnet"], T1["hosts"])
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    before = {row["host"]: row["init_pid"] for row in netns.status(t1)}
    for verb in ("up", "down"):
        proc = subprocess.run([sys.executable, "-m", "labkit.backends.netns", verb, "-i", str(copy)], cwd=clone,
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0, proc.stdout
        assert f"cluster {T1['cluster']} is running from another inventory, {t1.path}: " in proc.stderr
    assert (clone / ".labkit").is_dir()  # it ran as the clone, with the clone's own state folder ...
    assert not (clone / ".labkit" / T1["cluster"]).exists()  # ... and, refused, left nothing of the cluster there
    assert {row["host"]: row["init_pid"] for row in netns.status(t1)} == before


def test_a_cluster_whose_inventory_moved_or_went_down_is_taken_by_the_next_inventory(tmp_path):
    """The record is stale once its inventory is gone (here: moved) or the cluster is down."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    hosts = {"golf": "10.77.18.10"}
    first = write_inventory(tmp_path / "first", "t7", "10.77.18.0/24", hosts)
    moved, other = tmp_path / "moved", write_inventory(tmp_path / "other", "t7", "10.77.18.0/24", hosts)
    try:
        netns_cli("up", "-i", str(first))
        first.rename(moved)
        netns_cli("up", "-i", str(moved))
        record = netns.Cluster.named("t7").owner_file
        assert record.read_text() == f"{moved}\n"
        netns_cli("down", "-i", str(moved))
        assert not record.exists()
        netns_cli("up", "-i", str(other))
        assert ssh(hosts["golf"], "hostname").stdout.strip() == "golf"
    finally:
        netns_cli("down", "--cluster", "t7", check=False)
        shutil.rmtree(STATE / "t7", ignore_errors=True)
    assert leftovers("t7", "10.77.18.0/24") == []


NETWORK_ONLY = {"n1": "10.77.14.10", "n2": "10.77.14.11", "n3": "10.77.14.12"}


def test_network_only_makes_the_hosts_network_alone_and_down_removes_it(cluster_factory):
    path = cluster_factory("t5", "10.77.14.0/24", NETWORK_ONLY)
    netns.network_only(path, echo=lambda *a: None)
    for name, address in NETWORK_ONLY.items():
        ns = f"lk-t5-{name}"
        assert ("eth0", address, 24) in netns._addresses(netns=ns, dev="eth0")
        assert netns._ns_pids(ns) == set()  # no init, no sshd: the network alone
        assert netns.answers(address)  # its kernel refuses a TCP connection from the box: an answer
    with pytest.raises(netns.NetnsError, match="exists"):  # measured from nothing, or not at all
        netns.network_only(path, echo=lambda *a: None)
    subprocess.run(["ip", "-n", "lk-t5-n2", "link", "set", "eth0", "down"], check=True)
    assert not netns.answers(NETWORK_ONLY["n2"])  # a host whose network is down does not answer
    assert "3 namespaces, 3 veths" in netns_cli("down", "-i", str(path)).stdout
    assert leftovers("t5", "10.77.14.0/24") == []


def test_network_only_names_a_host_whose_network_does_not_answer(cluster_factory, monkeypatch):
    path = cluster_factory("t5", "10.77.14.0/24", NETWORK_ONLY)
    plumb = netns._plumb

    def plumb_then_break_n3(cl, nodes):  # what a host whose link never came up looks like
        plumb(cl, nodes)
        subprocess.run(["ip", "-n", "lk-t5-n3", "link", "set", "eth0", "down"], check=True)

    monkeypatch.setattr(netns, "_plumb", plumb_then_break_n3)
    with pytest.raises(netns.NetnsError, match=r"no answer within 1 s from n3 \(10\.77\.14\.12\)"):
        netns.network_only(path, echo=lambda *a: None, timeout=1)
    netns_cli("down", "-i", str(path))
    assert leftovers("t5", "10.77.14.0/24") == []


def test_down_removes_a_half_made_cluster_found_only_by_names_and_processes():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    try:
        run("ip", "link", "add", "lk-t3", "type", "bridge")
        run("ip", "addr", "add", "10.77.11.1/24", "dev", "lk-t3")
        run("ip", "netns", "add", "lk-t3-ghost")
        run("ip", "link", "add", "lkv-t3-5", "type", "veth", "peer", "name", "eth0", "netns", "lk-t3-ghost")
        run("ip", "link", "set", "lkv-t3-5", "master", "lk-t3", "up")
        sleeper = subprocess.Popen(["ip", "netns", "exec", "lk-t3-ghost", "sleep", "300"], start_new_session=True)
        assert poll(lambda: str(sleeper.pid) in run("ip", "netns", "pids", "lk-t3-ghost").stdout.decode().split())
        out = netns_cli("down", "--cluster", "t3").stdout
        assert "1 namespaces, 1 veths, bridge lk-t3 removed" in out
        assert sleeper.wait(timeout=10) == -signal.SIGKILL
        assert leftovers("t3", "10.77.11.0/24") == []
    finally:
        netns_cli("down", "--cluster", "t3", check=False)
        shutil.rmtree(STATE / "t3", ignore_errors=True)


BAD = [
    ("toolong7", "10.77.12.0/24", {"a1": "10.77.12.10"}, "must be 1-6 characters"),
    ("t4", "10.77.12.0/24", {"a1": "10.77.13.10"}, "outside labkit_subnet"),
    ("t4", "10.77.12.0/24", {"a1": "10.77.12.10", "a2": "10.77.12.10"}, "have the same address"),
    ("t4", "10.77.12.0/24", {"a1": "10.77.12.1"}, "the subnet's first address"),
]


@pytest.mark.parametrize(("cluster", "subnet", "hosts", "message"), BAD,
                         ids=["name-too-long", "outside-subnet", "duplicate-address", "first-address"])
def test_bad_inventory_is_refused_with_a_clear_error(tmp_path, cluster, subnet, hosts, message):
    path = write_inventory(tmp_path / "bad", cluster, subnet, hosts)
    with pytest.raises(inventory.InventoryError, match=message):
        inventory.load(path)


def test_up_with_a_bad_inventory_prints_one_error_line_and_changes_nothing(tmp_path):
    path = write_inventory(tmp_path / "bad", "toolong7", "10.77.12.0/24", {"a1": "10.77.12.10"})
    proc = netns_cli("up", "-i", str(path), check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("netns: error: ") and proc.stderr.count("\n") == 1
    assert not [n for n in (os.listdir("/run/netns") if os.path.isdir("/run/netns") else []) if "toolong" in n]


def test_up_of_a_public_subnet_is_refused_before_the_box_routes_it(tmp_path):
    """8.8.8.0/24 came up, and the box then sent 8.8.8.8 (a public DNS server) to the cluster's bridge."""
    path = write_inventory(tmp_path / "public", "t8", "8.8.8.0/24", {"a1": "8.8.8.10"})
    proc = netns_cli("up", "-i", str(path), check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("netns: error: labkit_subnet 8.8.8.0/24 is not private address space")
    assert "lk-t8" not in subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True).stdout
    assert not [n for n in (os.listdir("/run/netns") if os.path.isdir("/run/netns") else []) if "lk-t8-" in n]
    assert not (netns.RUN / "t8.inventory").exists()  # no record that this inventory runs the cluster


def test_a_cluster_left_by_a_killed_test_session_is_found_and_ours_and_users_are_not(tmp_path):
    """CI failed so once: a run killed mid-way left `ckt` up, and every test of the next run that needed it erred."""
    records, root = tmp_path / "run", tmp_path / "pytest-of-root"
    records.mkdir()
    for name, owner in {"ckt": root / "pytest-251/inv0/ckt", "t1": root / "pytest-252/inv0/t1",
                        "lab": Path("/work/main/inventory/netns"), "gone": root / "pytest-9/inv3/gone"}.items():
        (records / f"{name}.inventory").write_text(f"{owner}\n")
    (records / "t1.lock").write_text("")
    assert left_by_ended_sessions(records, root, root / "pytest-252") == ["ckt", "gone"]
