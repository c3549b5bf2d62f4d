"""Cluster-test fixtures: throwaway netns clusters from temporary inventories (never the real `lab` one).

`t1` is a session-wide three-host cluster, brought up once and always brought down. Helpers run the real CLI
(`python -m labkit.backends.netns`) and real ssh with the generated `.labkit/ssh_config`.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labkit import REPO, STATE, inventory
from labkit.backends import netns

SSH_CONFIG = STATE / "ssh_config"
FAB = str(Path(sys.executable).parent / "fab")
NETNS = REPO / "inventory" / "netns"
T1 = {"cluster": "t1", "subnet": "10.77.9.0/24",
      "hosts": {"alpha": "10.77.9.10", "bravo": "10.77.9.11", "charlie": "10.77.9.12"}}


def write_inventory(directory: Path, cluster: str, subnet: str, hosts: dict[str, str]) -> Path:
    """A netns inventory like inventory/netns: hosts.yml (first half of the hosts in group `one`) + group_vars."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "group_vars").mkdir(exist_ok=True)
    (directory / "group_vars" / "all.yml").write_text("labkit_backend: netns\nansible_user: root\n")
    names = list(hosts)
    half = max(1, len(names) // 2)

    def block(group: list[str]) -> str:
        return "".join(f"        {h}: {{ansible_host: '{hosts[h]}'}}\n" for h in group)

    text = (f"all:\n  vars:\n    labkit_cluster: '{cluster}'\n    labkit_subnet: '{subnet}'\n  children:\n"
            f"    one:\n      hosts:\n{block(names[:half])}")
    if names[half:]:
        text += f"    two:\n      hosts:\n{block(names[half:])}"
    (directory / "hosts.yml").write_text(text)
    return directory


def copy_inventory(dest: Path, cluster: str, third_octet: int) -> Path:
    """inventory/netns with another cluster name and subnet: the same host list, moved."""
    return inventory.relocate(NETNS, dest, cluster, third_octet)


def fab(*args: str, inv: Path, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run the real `fab ARGS` from the repository against the inventory `inv`; fail the test if it fails."""
    env = dict(os.environ, LABKIT_INVENTORY=str(inv))
    proc = subprocess.run([FAB, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        pytest.fail(f"fab {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def fab_json(*args: str, inv: Path):
    return json.loads(fab(*args, "--json", inv=inv).stdout)


def netns_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run `python -m labkit.backends.netns ARGS` from the repository, as an instructor would."""
    proc = subprocess.run([sys.executable, "-m", "labkit.backends.netns", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    if check and proc.returncode != 0:
        pytest.fail(f"labkit.backends.netns {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def ssh(address: str, command: str, *options: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run `command` on a cluster host over real SSH with the generated config."""
    proc = subprocess.run(["ssh", "-F", str(SSH_CONFIG), "-o", "BatchMode=yes", *options, address, command],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        pytest.fail(f"ssh {address} {command!r} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def poll(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    """True as soon as predicate() is; False after timeout (a hang guard, not a speed requirement)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def leftovers(cluster: str, subnet: str) -> list[str]:
    """Everything of `cluster` still on the box: namespaces, links, processes, mounts, ssh connections, state."""
    found = []
    net = ipaddress.IPv4Network(subnet)
    names = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    found += [f"netns {n}" for n in names if n.startswith(f"lk-{cluster}-")]
    for line in subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name == f"lk-{cluster}" or name.startswith(f"lkv-{cluster}-"):
            found.append(f"link {name}")
    marker = f"/.labkit/{cluster}/"
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            mounts = Path(entry.path, "mountinfo").read_text()
        except OSError:
            continue
        if marker in cmdline or f"{marker}hosts/" in mounts:
            found.append(f"process {entry.name}: {cmdline[:80]}")
    mountinfo = Path("/proc/self/mountinfo").read_text()
    found += [f"mount {ln.split()[4]}" for ln in mountinfo.splitlines() if f"lk-{cluster}-" in ln or marker in ln]
    for line in subprocess.run(["ss", "-tanpH"], capture_output=True, text=True).stdout.splitlines():
        fields = line.split()
        peer = fields[4].rsplit(":", 1)[0].strip("[]") if len(fields) > 4 else ""
        try:
            inside = ipaddress.ip_address(peer) in net
        except ValueError:
            inside = False
        if inside and re.search(r'\("ssh",', line):
            found.append(f"ssh connection {line}")
    if Path("/run/labkit", cluster).exists():
        found.append(f"control directory /run/labkit/{cluster}")
    if (STATE / cluster / "hosts").exists():
        found.append(f"host roots {STATE / cluster / 'hosts'}")
    if shutil.which("iptables"):
        rules = subprocess.run(["iptables", "-w", "-S", "FORWARD"], capture_output=True, text=True).stdout
        found += [f"iptables {ln}" for ln in rules.splitlines() if f"labkit lk-{cluster}" in ln]
    return found


def left_by_ended_sessions(records: Path, pytest_root: Path, ours: Path) -> list[str]:
    """The clusters whose recorded inventory (netns.RUN/NAME.inventory) lies in a pytest temporary directory of
    another session than `ours`: an earlier run of these tests that was killed before its teardown."""
    stale = []
    for record in sorted(records.glob("*.inventory")):
        try:
            owner = Path(record.read_text().strip())
        except OSError:
            continue
        if owner.is_relative_to(pytest_root) and not owner.is_relative_to(ours):
            stale.append(record.stem)
    return stale


_RUN = pytest.StashKey[tuple]()  # the run's lock and what .labkit/active held before it


def _runs_the_suite(config: pytest.Config) -> bool:
    """This process is the test run itself: the only one, or the controller of `pytest -n` (not a worker)."""
    return not hasattr(config, "workerinput")


@pytest.hookimpl(trylast=True)  # after pytest's tmpdir plugin has configured the run's temporary directory
def pytest_configure(config: pytest.Config) -> None:
    """Once per test run that includes cluster tests (in `make test`'s controller, not in each of its workers):

    - Cluster names and subnets are global on the box: two checkouts running these tests at once would collide,
      so a second run waits here for the first (a lock in /run, released when the process ends).
    - Holding the lock, a cluster made by another run of these tests is one whose run ended without taking it
      down (killed: a CI timeout, a reboot of the sandbox but not of /run): its namespaces hold the names and
      subnets this run needs (`fab up` refused them, "running from another inventory"), so it goes down by name.
    - Test clusters record themselves as the active inventory (.labkit/active): the run puts back what the
      instructor had when it ends."""
    if not _runs_the_suite(config) or os.geteuid() != 0:  # without root the cluster tests skip themselves
        return
    lock = open("/run/labkit-cluster-tests.lock", "w")  # noqa: SIM115 - held until pytest_unconfigure
    fcntl.flock(lock, fcntl.LOCK_EX)
    active = STATE / "active"
    config.stash[_RUN] = (lock, active.read_text() if active.exists() else None)
    ours = config._tmp_path_factory.getbasetemp()  # pytest-N/; a worker's is pytest-N/popen-gwK/ (xdist does so too)
    for name in left_by_ended_sessions(netns.RUN, ours.parent, ours):
        netns_cli("down", "--cluster", name)
        config.issue_config_time_warning(pytest.PytestWarning(
            f"took down cluster {name}, left up by an earlier test session that was killed"), stacklevel=2)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _RUN not in config.stash:
        return
    lock, before = config.stash[_RUN]
    active = STATE / "active"
    if before is None:
        active.unlink(missing_ok=True)
    else:
        active.write_text(before)
    lock.close()


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("cluster tests need root (they create network namespaces)")


@pytest.fixture(scope="session")
def course(tmp_path_factory) -> inventory.Inventory:
    """The course's eight hosts (inventory/netns moved to cluster `ckt`, 10.77.61.0/24), brought up once for the
    session and shared by test_checks and test_faults, whose every test leaves it healthy (test_checks waits until
    every check passes again, test_faults heals and asserts that nothing of its faults is left): one bring-up for
    both. LABKIT_CHECKS_CLUSTER=INVENTORY uses a cluster that is already up instead, and leaves it up."""
    _require_root()
    if os.environ.get("LABKIT_CHECKS_CLUSTER"):
        yield inventory.load(Path(os.environ["LABKIT_CHECKS_CLUSTER"]))
        return
    path = copy_inventory(tmp_path_factory.mktemp("inv") / "ckt", "ckt", 61)
    try:
        fab("up", "-i", str(path), "--quiet", inv=path, timeout=1200)
        yield inventory.load(path)
    finally:
        fab("down", "-i", str(path), inv=path, check=False)
        shutil.rmtree(STATE / "ckt", ignore_errors=True)


def sized_cluster(tmp_path_factory, cluster: str, subnet: str, ring: int, workers: int, said: str):
    """A module fixture's body: `fab new-inventory` (its line must say `said`), `fab up`, yield the inventory; then
    `fab down`, and nothing of the cluster may be left on the box."""
    _require_root()
    path = tmp_path_factory.mktemp("inv") / cluster
    made = fab("new-inventory", str(path), "--cluster", cluster, "--subnet", subnet, "--ring", str(ring),
               "--workers", str(workers), inv=path)
    assert said in made.stdout, made.stdout
    try:
        fab("up", "-i", str(path), "--quiet", inv=path)
        yield inventory.load(path)
    finally:
        fab("down", "-i", str(path), inv=path, check=False)
        shutil.rmtree(STATE / cluster, ignore_errors=True)
    assert not leftovers(cluster, subnet)


@pytest.fixture(scope="session")
def t1(tmp_path_factory) -> inventory.Inventory:
    """The three-host test cluster t1, up for the whole session and always brought down."""
    _require_root()
    path = write_inventory(tmp_path_factory.mktemp("inv") / "t1", T1["cluster"], T1["subnet"], T1["hosts"])
    try:
        netns_cli("up", "-i", str(path))
        yield inventory.load(path)
    finally:
        netns_cli("down", "-i", str(path), check=False)
    left = leftovers(T1["cluster"], T1["subnet"])
    shutil.rmtree(STATE / T1["cluster"], ignore_errors=True)  # the test cluster's key and logs
    assert not left, f"down left behind: {left}"


@pytest.fixture
def cluster_factory(tmp_path):
    """Make extra clusters from (cluster, subnet, hosts); each is brought down at the end of the test."""
    _require_root()
    made = []

    def make(cluster: str, subnet: str, hosts: dict[str, str]) -> Path:
        path = write_inventory(tmp_path / cluster, cluster, subnet, hosts)
        made.append(path)
        return path

    yield make
    for path in made:
        netns_cli("down", "-i", str(path), check=False)
        shutil.rmtree(STATE / path.name, ignore_errors=True)  # the test cluster's key, secrets and logs
