"""The netns backend: every inventory host becomes a set of Linux namespaces on this box, reached over real SSH.

    python -m labkit.backends.netns up     [-i INVENTORY]   create exactly the inventory's hosts (idempotent)
    python -m labkit.backends.netns status [-i INVENTORY] [--json]
    python -m labkit.backends.netns down   [-i INVENTORY | --cluster NAME]

Run as root. Without -i the active inventory is used ($LABKIT_INVENTORY, else the last `up`, else inventory/netns).

What one host is (cluster `c`, host `h`, address `a/p` from the inventory):
- network namespace `lk-c-h`: `lo` up, `eth0` holding `a/p`, the peer of veth `lkv-c-<offset in subnet, hex>`
  on the cluster bridge `lk-c`, which holds the subnet's first address: the box is `control` on that network.
  MACs are derived from addresses (02:4c:<a in hex>), so a rebuilt host never meets a stale neighbour cache.
  When br_netfilter sends bridged frames through iptables, `up` inserts one rule,
  `FORWARD -i lk-c -o lk-c -j ACCEPT` (comment `labkit lk-c`), so hosts of the cluster reach each other even under
  a FORWARD policy of DROP; nothing else about the box's firewall changes.
- UTS namespace: hostname `h`.
- mount namespace (propagation private): directories of `.labkit/c/hosts/h/` bind-mounted over the same absolute
  paths a VM uses (see MOUNT_DIRS, MOUNT_FILES), so hosts share nothing and the box can read every host's files.
  The box gets empty directories for mount points that it lacks (/etc/labnodes, /opt/labnodes, ...).
- PID namespace whose PID 1 is `hosts/h/init.sh` (the mounts, the hostname) and then, by exec,
  `supervisord -n -c /etc/supervisor/supervisord.conf` (INIT: supervisor 4.3 from PyPI, which scripts/setup.sh
  puts in a venv of its own, 14 MB a host where Debian's 4.2.5 takes 21): it reaps orphans, `ps` in the host shows
  only that host, and it runs `sshd` (a `[program:sshd]` in the main file; Ansible roles only add `conf.d/*.conf`,
  as on VMs, where systemd starts the distribution's supervisord with the same files). supervisorctl is Debian's.
- sshd: ed25519 host key made on the box, `ListenAddress a`, keys only, root allowed with a key, `UsePAM no`;
  it logs to the host's /var/log/supervisor/sshd.log. The init's stdio goes to `.labkit/c/log/h.log` (kept by
  `down`), its PID as seen on the box to `.labkit/c/hosts/h.pid`.

Client side, written by `up` through `labkit.ssh` (shared by every backend): the cluster's key, its known_hosts
(each host's key, read from its root), its ssh_config (User root, StrictHostKeyChecking yes, ControlMaster) and
`.labkit/ssh_config`, which includes every cluster's file and then ~/.ssh/config: `ssh -F .labkit/ssh_config a`.

`up`: a healthy host (namespace, supervisord as PID 1, veth on the bridge, address set, root present, made by this
labkit: its init script as this labkit writes it, so that its private directories are this labkit's) is kept as it
is; anything else of the inventory's hosts is torn down and rebuilt (its root and host key are kept, /run is
emptied as on a reboot); namespaces of the cluster that the inventory no longer lists are removed. `up` ends when
every host's sshd accepts the cluster key, and records the inventory as the active one. A cluster runs from one
inventory (recorded in `/run/labkit-netns/c.inventory`, box-wide as the namespaces are, so it holds between two
clones of labkit too): `up` from another inventory naming the same cluster is refused while the first still runs
(`_claim`).

`network_only` (for benchmarks, the floor `up` is measured against): the same hosts' network alone, from nothing,
made by the same code as `up` makes it, until every address answers TCP from the box; `down` removes it.

`down`: finds the cluster's things by name (`lk-c-*` namespaces, `lkv-c-*` veths, bridge `lk-c`) and by process
(everything in those namespaces, and any process whose mount namespace holds a `.labkit/c/hosts/` bind mount),
so it also cleans up after a crash or a half-finished `up`; it closes every ssh connection from the box to the
cluster's addresses (ControlPersist masters included) and removes stale control sockets, then the host roots, the
cluster's known_hosts and ssh_config. It keeps `.labkit/c/ssh/` and `.labkit/c/secrets/`. A second `down` is a
no-op; other clusters are untouched. `down -i` from an inventory other than the one the cluster runs from is
refused; `down --cluster NAME` goes by name and always works.

Every failure is a NetnsError (a LabkitError) with one line saying what went wrong and where to look.
"""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from labkit import REPO, STATE, LabkitError, ssh
from labkit import inventory as inventory_mod
from labkit.inventory import Inventory, InventoryError, check_box_subnet
from labkit.progress import Progress

log = logging.getLogger("labkit.netns")

# Private directories of each host, relative to / (a VM has them at the same absolute paths).
MOUNT_DIRS = (
    "etc/labnodes", "etc/supervisor", "etc/ssh", "opt/labnodes", "var/lib/labnodes", "var/log/labnodes",
    "var/log/supervisor", "run", "var/tmp", "tmp", "root",
    "usr/local/bin",  # where provisioning links the labnodes command, on the PATH of every login (the box's own
                      # commands there are not the host's business)
)
MOUNT_FILES = ("etc/hosts", "etc/hostname")
MOUNT_LAST = ("var/tmp", "tmp", "root")  # mounted last: the repository (the bind sources) may live under one
INIT = "/opt/labkit/supervisor/bin/supervisord"  # made by scripts/setup.sh (see the module docstring)
SSHD = "/usr/sbin/sshd"
SFTP = "/usr/lib/openssh/sftp-server"
TOOLS = ("ip", "ss", "unshare", "ssh", "ssh-keygen", INIT, SSHD)
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INIT_ENV = {"PATH": HOST_PATH, "HOME": "/root", "LANG": "C.UTF-8"}
# Box-wide, as a cluster's namespaces are (every clone of labkit on the box sees it), and emptied by a reboot, as
# they are: each cluster's lock and the record of the inventory it runs from (Cluster.lock_file, .owner_file).
RUN = Path("/run/labkit-netns")
BRIDGE_NF = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
KILL_TIMEOUT = 10.0  # s, hang guard while a namespace's processes die
START_TIMEOUT = 10.0  # s, for every init to become supervisord
SSH_TIMEOUT = 60.0  # s, for every sshd to accept the cluster key
UP_HINT = "fab up -i {inventory}"  # labkit.backends: the command that brings a netns cluster up


_LAUNCHERS: list[subprocess.Popen] = []  # our `unshare` children, polled (reaped) on every up/down


def _reap_launchers() -> None:
    _LAUNCHERS[:] = [p for p in _LAUNCHERS if p.poll() is None]


class NetnsError(LabkitError):
    """The netns backend could not do what was asked; the message says why."""


# --- the cluster as data --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """One host: its names on the box and its private root."""

    name: str
    address: str
    prefixlen: int
    ns: str  # network namespace
    veth: str  # box side of the veth pair; the host side is eth0
    root: Path  # .labkit/<cluster>/hosts/<name>


@dataclass(frozen=True)
class Cluster:
    name: str
    subnet: ipaddress.IPv4Network | None
    nodes: tuple[Node, ...]

    @classmethod
    def named(cls, name: str) -> Cluster:
        """A cluster known only by name (enough for `down`)."""
        return cls(name=name, subnet=None, nodes=())

    @classmethod
    def from_inventory(cls, inv: Inventory) -> Cluster:
        if inv.backend != "netns":
            raise NetnsError(f"{inv.path}: labkit_backend is {inv.backend!r}, not 'netns'")
        if inv.subnet is None:
            raise NetnsError(f"{inv.path}: the netns backend needs labkit_subnet")
        if inv.subnet.prefixlen < 16:
            raise NetnsError(f"{inv.path}: labkit_subnet {inv.subnet} is too large for the netns backend (/16 at most)")
        hosts_dir = STATE / inv.cluster / "hosts"
        nodes = []
        for h in inv.hosts:
            offset = int(ipaddress.IPv4Address(h.address)) - int(inv.subnet.network_address)
            nodes.append(Node(
                name=h.name, address=h.address, prefixlen=inv.subnet.prefixlen, ns=f"lk-{inv.cluster}-{h.name}",
                veth=f"lkv-{inv.cluster}-{offset:x}", root=hosts_dir / h.name,
            ))
        return cls(name=inv.cluster, subnet=inv.subnet, nodes=tuple(nodes))

    @property
    def bridge(self) -> str:
        return f"lk-{self.name}"

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    @property
    def ns_prefix(self) -> str:
        return f"lk-{self.name}-"

    @property
    def veth_prefix(self) -> str:
        return f"lkv-{self.name}-"

    @property
    def state(self) -> Path:
        return STATE / self.name

    @property
    def hosts_dir(self) -> Path:
        return self.state / "hosts"

    @property
    def lock_file(self) -> Path:
        """Held by `up` and `down`; box-wide, as the namespaces are (RUN)."""
        return RUN / f"{self.name}.lock"

    @property
    def owner_file(self) -> Path:
        """The inventory the cluster runs from: written by `up`, removed by `down` (see _claim); box-wide (RUN)."""
        return RUN / f"{self.name}.inventory"

    @property
    def log_dir(self) -> Path:
        return self.state / "log"

    @property
    def key(self) -> Path:
        return self.state / "ssh" / "id_ed25519"

    @property
    def control_dir(self) -> Path:
        return ssh.control_dir(self.name)

    @property
    def mount_marker(self) -> str:
        """Found in /proc/PID/mountinfo of every process inside one of this cluster's hosts."""
        return f"/.labkit/{self.name}/hosts/"


# --- small helpers ---------------------------------------------------------------------------------------------


def _run(args: list[str], input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, input=input, capture_output=True, text=True)
    if check and proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["exit status %d" % proc.returncode])[-1]
        raise NetnsError(f"`{shlex.join(args[:6])}{' ...' if len(args) > 6 else ''}` failed: {detail}")
    return proc


def _ip_batch(lines: list[str], netns: str | None = None, force: bool = False) -> None:
    if not lines:
        return
    log.debug("ip%s -batch:\n%s", f" -n {netns}" if netns else "", "\n".join(lines))
    args = ["ip"] + (["-n", netns] if netns else []) + (["-force"] if force else []) + ["-batch", "-"]
    _run(args, input="\n".join(lines) + "\n", check=not force)


def _namespaces(prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir("/run/netns") if n.startswith(prefix))
    except FileNotFoundError:
        return []


def _links() -> dict[str, dict]:
    return {link["ifname"]: link for link in json.loads(_run(["ip", "-j", "link", "show"]).stdout or "[]")}


def _addresses(netns: str | None = None, dev: str | None = None) -> list[tuple[str, str, int]]:
    """(interface, address, prefixlen) of every IPv4 address, on the box or in a namespace."""
    args = ["ip"] + (["-n", netns] if netns else []) + ["-j", "-4", "addr", "show"] + (["dev", dev] if dev else [])
    proc = _run(args, check=False)
    if proc.returncode != 0:
        return []
    return [(i["ifname"], a["local"], a["prefixlen"]) for i in json.loads(proc.stdout or "[]")
            for a in i.get("addr_info", [])]


def _ns_pids(ns: str) -> set[int]:
    out = _run(["ip", "netns", "pids", ns], check=False).stdout
    return {int(p) for p in out.split() if p.isdigit()}


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _init_pid(ns: str) -> int | None:
    """The box PID of the host's PID 1, if that is supervisord."""
    for pid in _ns_pids(ns):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        nspid = next((ln.split()[1:] for ln in status.splitlines() if ln.startswith("NSpid:")), [])
        if len(nspid) >= 2 and nspid[-1] == "1" and comm == "supervisord":
            return pid
    return None


def _marked_processes(marker: str, cmd_marker: str) -> set[int]:
    """Processes inside a host's mount namespace (their mountinfo holds `marker`) and our `unshare` launchers."""
    found, seen_ns = set(), {}
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if argv and argv[0].endswith(b"unshare") and cmd_marker.encode() in b" ".join(argv):
                found.add(pid)
                continue
            mnt = os.readlink(f"/proc/{pid}/ns/mnt")
            if mnt not in seen_ns:
                seen_ns[mnt] = marker in Path(f"/proc/{pid}/mountinfo").read_text()
            if seen_ns[mnt]:
                found.add(pid)
        except OSError:
            continue
    return found


def _kill_all(collect, what: str) -> None:
    """SIGKILL what `collect()` returns until it returns nothing alive (bounded by KILL_TIMEOUT)."""
    deadline = time.monotonic() + KILL_TIMEOUT
    while True:
        pids = {p for p in collect() if _alive(p)}
        if not pids:
            return
        if time.monotonic() > deadline:
            raise NetnsError(f"{what}: processes {sorted(pids)} did not die within {KILL_TIMEOUT:.0f}s")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.info("%s: killed %s", what, sorted(pids))
        time.sleep(0.02)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write in place (same inode): the file may be bind-mounted into a running host."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


@contextmanager
def _locked(cl: Cluster):
    """One up/down of the cluster at a time. The cluster's state folder is made here; one made for an up that was
    then refused (another cluster's subnet, its name taken), or for a down of a cluster this machine kept nothing
    of, is removed if still empty: nothing is left of it."""
    made = not cl.state.exists()
    cl.state.mkdir(parents=True, exist_ok=True)
    RUN.mkdir(parents=True, exist_ok=True)
    try:
        with open(cl.lock_file, "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise NetnsError(f"another up/down of cluster {cl.name} is running ({cl.lock_file})") from None
            yield
    finally:
        if made:
            with suppress(OSError):
                cl.state.rmdir()  # only if empty


def _check_root() -> None:
    if os.geteuid() != 0:
        raise NetnsError("the netns backend must run as root (it creates namespaces, veths and a bridge, and its "
                         "hosts' keys and state are root's): run fab as root, e.g. with sudo")


def preflight(inv) -> None:
    """Only root can look into or reach a netns cluster: another user saw every host "broken", or unreachable."""
    _check_root()


def _check_box() -> None:
    _check_root()
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        raise NetnsError(f"missing on this box: {', '.join(missing)} (run `make setup`)")
    try:
        root_pw = next(ln.split(":")[1] for ln in Path("/etc/shadow").read_text().splitlines()
                       if ln.startswith("root:"))
    except (OSError, StopIteration, IndexError):
        root_pw = ""
    if root_pw.startswith("!"):
        raise NetnsError("root's account is locked in /etc/shadow ('!'), so sshd (UsePAM no) refuses even key "
                         "logins; unlock it without a password: usermod -p '*' root")


def _as_inventory(inv: Inventory | str | os.PathLike | None) -> Inventory:
    return inv if isinstance(inv, Inventory) else inventory_mod.load(inv)


# --- one host: files on the box --------------------------------------------------------------------------------


def _sshd_config(n: Node) -> str:
    return f"""\
# labkit netns host {n.name}: written by labkit/backends/netns.py when the host is (re)built.
ListenAddress {n.address}
Port 22
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
PrintMotd no
PidFile /run/sshd.pid
# Ansible runs 16 forks, each with a ControlMaster carrying several sessions.
MaxStartups 200:30:400
MaxSessions 100
AcceptEnv LANG LC_*
Subsystem sftp {SFTP}
"""


def _supervisord_conf(n: Node) -> str:
    return f"""\
; labkit netns host {n.name}: written by labkit/backends/netns.py; shaped like Debian's /etc/supervisor/supervisord.conf.
; This supervisord is the host's PID 1. Roles add programs in conf.d/; site.yml's last step applies them.

[unix_http_server]
file=/var/run/supervisor.sock
chmod=0700

[supervisord]
logfile=/var/log/supervisor/supervisord.log
pidfile=/var/run/supervisord.pid
childlogdir=/var/log/supervisor
user=root

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix:///var/run/supervisor.sock

; netns hosts only: the host's sshd (systemd runs sshd on VMs and lab machines).
[program:sshd]
command={SSHD} -D -e -f /etc/ssh/sshd_config
priority=10
autorestart=true
redirect_stderr=true
stdout_logfile=/var/log/supervisor/sshd.log

[include]
files = /etc/supervisor/conf.d/*.conf
"""


def _etc_hosts(cl: Cluster) -> str:
    lines = [f"# labkit cluster {cl.name}: written by labkit/backends/netns.py on every up.",
             "127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
             f"{cl.gateway}\tcontrol"]
    lines += [f"{n.address}\t{n.name}" for n in cl.nodes]
    return "\n".join(lines) + "\n"


def _prepare_root(n: Node) -> subprocess.Popen | None:
    """Lay out the host's private directories; returns the ssh-keygen making its host key, if it has none."""
    for rel in MOUNT_DIRS:
        (n.root / rel).mkdir(parents=True, exist_ok=True)
    for rel, mode in (("root", 0o700), ("tmp", 0o1777), ("var/tmp", 0o1777), ("run", 0o755)):
        os.chmod(n.root / rel, mode)
    for entry in os.scandir(n.root / "run"):  # a rebuilt host starts with an empty /run, as after a reboot
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
    (n.root / "run" / "sshd").mkdir(mode=0o755)
    (n.root / "root" / ".ssh").mkdir(mode=0o700, exist_ok=True)
    (n.root / "etc" / "supervisor" / "conf.d").mkdir(exist_ok=True)
    for name in ("moduli", "ssh_config"):  # what a host's /etc/ssh would hold besides its own files
        src, dst = Path("/etc/ssh") / name, n.root / "etc" / "ssh" / name
        if src.exists() and not dst.exists():
            shutil.copyfile(src, dst)
    _write(n.root / "etc" / "ssh" / "sshd_config", _sshd_config(n))
    _write(n.root / "etc" / "supervisor" / "supervisord.conf", _supervisord_conf(n))
    _write(n.root / "etc" / "hostname", n.name + "\n")
    key = n.root / "etc" / "ssh" / "ssh_host_ed25519_key"
    if key.exists() and key.with_suffix(".pub").exists():
        return None
    key.unlink(missing_ok=True)
    return subprocess.Popen(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{n.name}", "-f", str(key)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def _init_script(n: Node) -> str:
    """What runs as PID 1 of the new namespaces (saved as <root>/init.sh) before it becomes supervisord."""
    first = [rel for rel in MOUNT_DIRS if rel not in MOUNT_LAST]
    targets = first + list(MOUNT_FILES) + list(MOUNT_LAST)
    # A target that contains the repository hides the bind sources: mount it last.
    targets.sort(key=lambda rel: REPO.is_relative_to(Path("/") / rel))
    lines = [f"# labkit netns host {n.name}: PID 1 of its namespaces until it execs supervisord.", "set -e",
             "umount -R -l /run/netns 2>/dev/null || true  # drop the copies of the box's netns handles"]
    lines += [f"mount --bind {shlex.quote(str(n.root / rel))} {shlex.quote('/' + rel)}" for rel in targets]
    lines += [f"echo {shlex.quote(n.name)} > /proc/sys/kernel/hostname",
              f"exec {INIT} -n -c /etc/supervisor/supervisord.conf"]
    return "\n".join(lines) + "\n"


def _start_init(cl: Cluster, n: Node) -> subprocess.Popen:
    cl.log_dir.mkdir(parents=True, exist_ok=True)
    script = n.root / "init.sh"
    _write(script, _init_script(n))
    with open(cl.log_dir / f"{n.name}.log", "ab") as logf:
        logf.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting host {n.name}\n".encode())
        logf.flush()
        return subprocess.Popen(
            ["ip", "netns", "exec", n.ns, "unshare", "--mount", "--uts", "--pid", "--fork", "--mount-proc",
             "--propagation", "private", "--", "/bin/sh", str(script)],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, cwd="/", env=INIT_ENV,
        )


# --- the cluster's network -------------------------------------------------------------------------------------


def _mac(address: str) -> str:
    """A fixed MAC for an address: a rebuilt host keeps it, so neighbour caches never point at a dead one."""
    return "02:4c:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(address).packed)


def _other_owner(cl: Cluster, inv: Inventory) -> Path | None:
    """The other inventory this cluster runs from, if it runs from one (see _claim); None if it is `inv`'s own."""
    try:
        recorded = Path(cl.owner_file.read_text().strip())
    except FileNotFoundError:
        return None
    if recorded == inv.path.resolve() or not recorded.exists() or not _namespaces(cl.ns_prefix):
        return None
    try:
        return recorded if inventory_mod.load(recorded).cluster == cl.name else None
    except LabkitError:
        return recorded  # cannot tell: an inventory being edited is no reason to take its cluster


def _claim(cl: Cluster, inv: Inventory, verb: str = "up") -> None:
    """Refuse `up` (or `down`) from `inv` while the cluster runs from another inventory; on `up`, record `inv`.

    A cluster is its name: two inventories with one labkit_cluster (a copied inventory whose name was left as it
    was) share its namespaces, so `up` of the second would rebuild the first's hosts as its own, on its own
    addresses, and its `down` would remove them: the first would break without a word. A record is stale, and
    taken over, when the cluster has no namespace left or its inventory no longer exists or names another
    cluster. Nothing is changed on refusal; `down --cluster NAME` goes by name and always works.
    """
    other = _other_owner(cl, inv)
    if other is not None:
        fix = (f"give {inv.path} a labkit_cluster of its own, or take that cluster down first (fab down -i {other})"
               if verb == "up" else f"take it down from there (fab down -i {other})")
        raise NetnsError(f"cluster {cl.name} is running from another inventory, {other}: {fix}")
    if verb == "up":
        _write(cl.owner_file, f"{inv.path.resolve()}\n")


def _routes() -> list[tuple[str, str]]:
    """(destination, interface) of every IPv4 route of the box's main table but the default route."""
    proc = _run(["ip", "-j", "-4", "route", "show"], check=False)
    if proc.returncode != 0:
        return []
    return [(r["dst"], r.get("dev", "")) for r in json.loads(proc.stdout or "[]") if r.get("dst") != "default"]


def _check_subnet_free(cl: Cluster) -> None:
    """The subnet is private (inventory.check_box_subnet) and neither holds nor is held by an address or a route
    of the box (another cluster, a real network, a VPN's route): the cluster's bridge would take it over."""
    try:
        check_box_subnet(cl.subnet, "labkit_subnet")
    except InventoryError as exc:
        raise NetnsError(str(exc)) from None
    taken = [(f"{addr}/{prefixlen}", ifname) for ifname, addr, prefixlen in _addresses()] + _routes()
    for network, ifname in taken:
        if ifname != cl.bridge and ipaddress.IPv4Network(network, strict=False).overlaps(cl.subnet):
            raise NetnsError(f"labkit_subnet {cl.subnet} overlaps {network} on {ifname}"
                             " (another cluster or a real network): pick another subnet")


def _ensure_bridge(cl: Cluster, links: dict[str, dict]) -> None:
    want = (cl.bridge, cl.gateway, cl.subnet.prefixlen)
    lines = []
    if cl.bridge not in links:
        lines += [f"link add {cl.bridge} type bridge", f"link set {cl.bridge} address {_mac(cl.gateway)}"]
        have = []
    else:
        have = _addresses(dev=cl.bridge)
        if have and have != [want]:
            lines.append(f"addr flush dev {cl.bridge}")
            have = []
    if not have:
        lines.append(f"addr add {cl.gateway}/{cl.subnet.prefixlen} dev {cl.bridge}")
    if cl.bridge not in links or "UP" not in links[cl.bridge].get("flags", []):
        lines.append(f"link set {cl.bridge} up")
    _ip_batch(lines)


def _forward_rule(cl: Cluster) -> list[str]:
    return ["FORWARD", "-i", cl.bridge, "-o", cl.bridge, "-m", "comment", "--comment", f"labkit {cl.bridge}",
            "-j", "ACCEPT"]


def _allow_bridge_forwarding(cl: Cluster, echo) -> None:
    """Bridged frames go through iptables' FORWARD chain when br_netfilter says so: accept this bridge's own."""
    try:
        if BRIDGE_NF.read_text().strip() != "1":
            return
    except OSError:
        return
    if not shutil.which("iptables"):
        echo(f"netns {cl.name}: warning: bridged traffic passes iptables but iptables is missing; "
             "hosts may not reach each other if the FORWARD policy drops")
        return
    rule = _forward_rule(cl)
    check = _run(["iptables", "-w", "-C", *rule], check=False)
    if check.returncode == 0:
        return
    add = _run(["iptables", "-w", "-I", rule[0], "1", *rule[1:]], check=False)
    if add.returncode != 0:
        echo(f"netns {cl.name}: warning: could not add the iptables rule for {cl.bridge}: {add.stderr.strip()}")
    else:
        log.info("iptables: accepted forwarding within %s", cl.bridge)


def _remove_bridge_forwarding(cl: Cluster) -> None:
    if not shutil.which("iptables"):
        return
    rule = _forward_rule(cl)
    for _ in range(10):
        if _run(["iptables", "-w", "-C", *rule], check=False).returncode != 0:
            return
        _run(["iptables", "-w", "-D", *rule], check=False)


# --- host health ---------------------------------------------------------------------------------------------


def _problem(cl: Cluster, n: Node, namespaces: set[str], links: dict[str, dict]) -> str | None:
    """Why the host is not healthy, or None."""
    if n.ns not in namespaces:
        return "absent"
    if _init_pid(n.ns) is None:
        return "its init (supervisord) is not running"
    veth = links.get(n.veth)
    if veth is None:
        return f"veth {n.veth} is missing"
    if veth.get("master") != cl.bridge or "UP" not in veth.get("flags", []):
        return f"veth {n.veth} is not up on bridge {cl.bridge}"
    if ("eth0", n.address, n.prefixlen) not in _addresses(netns=n.ns, dev="eth0"):
        return f"eth0 does not hold {n.address}/{n.prefixlen}"
    if not (n.root / "etc" / "ssh" / "ssh_host_ed25519_key.pub").exists():
        return f"its root {n.root} is missing"
    try:
        made = (n.root / "init.sh").read_text()
    except OSError:
        made = ""
    if made != _init_script(n):  # another labkit made it (its private directories differ): as after an upgrade
        return "it was made by another version of labkit"
    return None


# --- teardown ---------------------------------------------------------------------------------------------------


def _teardown(cl: Cluster, namespaces: list[str], veths: list[str], markers: list[str],
              networks: list[ipaddress.IPv4Network], extra_links: list[str] = ()) -> None:
    """End every process of the given hosts, close ssh to them, then delete their veths and namespaces."""
    ssh.close_connections(networks, [cl.control_dir, *ssh.ansible_control_dirs()])

    def collect() -> set[int]:
        pids = set()
        for ns in namespaces:
            pids |= _ns_pids(ns)
        for m in markers:
            pids |= _marked_processes(m, m)
        return pids

    _kill_all(collect, f"cluster {cl.name}")
    links = _links()
    lines = [f"link del {v}" for v in [*veths, *extra_links] if v in links]
    lines += [f"netns del {ns}" for ns in namespaces]
    _ip_batch(lines, force=True)
    left = [ns for ns in namespaces if os.path.exists(f"/run/netns/{ns}")]
    left += [v for v in [*veths, *extra_links] if v in _links()]
    if left:
        raise NetnsError(f"cluster {cl.name}: could not remove {', '.join(left)}")


# --- client side ------------------------------------------------------------------------------------------------


def _names(names: list[str], most: int = 12) -> str:
    """A list of host names for one console line: the first few, then how many more."""
    shown = ", ".join(names[:most])
    return f"{shown} and {len(names) - most} more" if len(names) > most else shown


def _ssh_hosts(cl: Cluster) -> list[ssh.SshHost]:
    """How the box reaches each host: as root, checking the host key made in the host's root."""
    hosts = []
    for n in cl.nodes:
        keytype, key = (n.root / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()[:2]
        hosts.append(ssh.SshHost(n.name, n.address, "root", f"{keytype} {key}"))
    return hosts


def _plumb(cl: Cluster, nodes) -> None:
    """The hosts' network: each one's namespace, a veth pair from the cluster's bridge to its eth0 (MAC from its
    address), its address, and its links up."""
    lines = []
    for n in nodes:
        lines += [f"netns add {n.ns}",
                  f"link add {n.veth} type veth peer name eth0 address {_mac(n.address)} netns {n.ns}",
                  f"link set {n.veth} master {cl.bridge} up"]
    _ip_batch(lines)
    for n in nodes:
        _ip_batch([f"addr add {n.address}/{n.prefixlen} dev eth0", "link set eth0 up", "link set lo up"],
                  netns=n.ns)


def answers(address: str, port: int = 22, timeout: float = 0.5) -> bool:
    """Whether the host at `address` answers a TCP connection from the box: accepted or refused (its kernel's
    reset), either way its network works. False when nothing answers within `timeout` s."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


# --- the three verbs -----------------------------------------------------------------------------------------


def up(inv: Inventory | str | os.PathLike | None = None, echo=print) -> None:
    """Create exactly the inventory's hosts (keeping healthy ones) and return when all accept SSH."""
    inv = _as_inventory(inv)
    cl = Cluster.from_inventory(inv)
    _check_box()
    _reap_launchers()
    t0 = time.monotonic()
    with _locked(cl):
        _check_subnet_free(cl)
        _claim(cl, inv)
        pubkey = ssh.public_key(cl.name)
        for rel in MOUNT_DIRS:  # mount points on the box
            Path("/", rel).mkdir(parents=True, exist_ok=True)
        links = _links()
        _ensure_bridge(cl, links)
        namespaces = set(_namespaces(cl.ns_prefix))
        wanted = {n.ns for n in cl.nodes}
        stale_ns = sorted(namespaces - wanted)
        stale_veths = [v for v in links if v.startswith(cl.veth_prefix) and v not in {n.veth for n in cl.nodes}]
        if stale_ns or stale_veths:
            echo(f"netns {cl.name}: removing what the inventory no longer lists: {', '.join(stale_ns + stale_veths)}")
            gone = [ns[len(cl.ns_prefix):] for ns in stale_ns]
            _teardown(cl, stale_ns, stale_veths, [f"{cl.mount_marker}{h}/" for h in gone], [])
            for h in gone:
                shutil.rmtree(cl.hosts_dir / h, ignore_errors=True)
                (cl.hosts_dir / f"{h}.pid").unlink(missing_ok=True)
            links = _links()

        build, kept, created = [], [], []
        for n in cl.nodes:
            problem = _problem(cl, n, namespaces, links)
            if problem is None:
                kept.append(n.name)
            else:
                if problem == "absent":
                    created.append(n.name)
                else:
                    echo(f"netns {cl.name}: {n.name} {n.address}: rebuilding ({problem})")
                build.append(n)
        for what, names in (("creating", created), ("healthy, kept", kept)):
            if names:
                echo(f"netns {cl.name}: {what}: {_names(names)}")
        if build:
            _teardown(cl, [n.ns for n in build if n.ns in namespaces], [n.veth for n in build],
                      [f"{cl.mount_marker}{n.name}/" for n in build],
                      [ipaddress.IPv4Network(n.address) for n in build])
        keygens = [(n, _prepare_root(n)) for n in build]
        for n, p in keygens:
            if p is None:
                continue
            err = p.communicate()[1].decode(errors="replace").strip()
            if p.returncode != 0:
                raise NetnsError(f"ssh-keygen for host {n.name} failed: {err}")
        hosts_text = _etc_hosts(cl)
        for n in cl.nodes:  # every host: names and the cluster key may have changed since its start
            _write(n.root / "etc" / "hosts", hosts_text)
            _write(n.root / "root" / ".ssh" / "authorized_keys", pubkey + "\n", 0o600)

        _plumb(cl, build)
        launchers = {n.name: _start_init(cl, n) for n in build}
        _LAUNCHERS.extend(launchers.values())
        deadline = time.monotonic() + START_TIMEOUT
        pending = list(build)
        while pending:
            for n in list(pending):
                pid = _init_pid(n.ns)
                if pid is not None:
                    (cl.hosts_dir / f"{n.name}.pid").write_text(f"{pid}\n")
                    log.info("host %s: init pid %d", n.name, pid)
                    pending.remove(n)
                elif launchers[n.name].poll() is not None or time.monotonic() > deadline:
                    tail = (cl.log_dir / f"{n.name}.log").read_text(errors="replace").strip().splitlines()[-1:]
                    raise NetnsError(f"host {n.name}: init did not start ({' '.join(tail) or 'no output'}); "
                                     f"see {cl.log_dir / (n.name + '.log')}")
            time.sleep(0.01)

        ssh.write_client_config(cl.name, _ssh_hosts(cl), writer="labkit/backends/netns.py")
        _allow_bridge_forwarding(cl, echo)
        inventory_mod.record_active(inv.path)
        with Progress(f"netns {cl.name}: hosts ready", len(cl.nodes)) as progress:
            ssh.wait_for_sshd(cl.name, _ssh_hosts(cl), SSH_TIMEOUT, hint=f"host logs: {cl.log_dir}/",
                              progress=progress)
    echo(f"netns {cl.name}: {len(cl.nodes)} hosts up ({len(build)} started, {len(cl.nodes) - len(build)} kept) "
         f"in {time.monotonic() - t0:.2f}s; try: ssh -F {STATE / 'ssh_config'} {cl.nodes[0].address}")


def network_only(inv: Inventory | str | os.PathLike | None = None, echo=print,
                 timeout: float = SSH_TIMEOUT) -> None:
    """The floor of `up`, for benchmarks (bench_cluster, `make scale-test`, which time both calls the same way,
    around the call): the inventory's hosts with their network alone, from nothing: the bridge, each host's
    namespace, veth, address and links, made as `up` makes them, and the bridge's forwarding rule; no root, no
    init, no sshd. Returns when every address answers a TCP connection from the box (`answers`). `down` removes
    it."""
    inv = _as_inventory(inv)
    cl = Cluster.from_inventory(inv)
    _check_box()
    t0 = time.monotonic()
    with _locked(cl):
        links = _links()
        if cl.bridge in links or _namespaces(cl.ns_prefix):
            raise NetnsError(f"cluster {cl.name} exists: its network alone is measured from nothing (down first)")
        _check_subnet_free(cl)
        _ensure_bridge(cl, links)
        _plumb(cl, cl.nodes)
        _allow_bridge_forwarding(cl, echo)
        pending, deadline = list(cl.nodes), t0 + timeout
        while True:
            pending = [n for n in pending if not answers(n.address)]
            if not pending:
                break
            if time.monotonic() > deadline:
                raise NetnsError(f"cluster {cl.name}: no answer within {timeout:g} s from "
                                 f"{_names([f'{n.name} ({n.address})' for n in pending])}")
            time.sleep(0.01)
    echo(f"netns {cl.name}: the network of {len(cl.nodes)} hosts alone (no root, init or sshd) in "
         f"{time.monotonic() - t0:.2f}s")


def down(inv: Inventory | str | os.PathLike | None = None, echo=print, cluster: str | None = None) -> None:
    """Remove everything of the cluster (by name and by process), keeping its ssh key and secrets."""
    if cluster is None:
        inv = _as_inventory(inv)
        cl = Cluster.from_inventory(inv)
    else:
        if not inventory_mod.CLUSTER_RE.fullmatch(cluster):
            raise NetnsError(f"cluster name {cluster!r} must be 1-6 characters of [a-z0-9]")
        cl = Cluster.named(cluster)
    _check_box()
    t0 = time.monotonic()
    with _locked(cl):
        if cluster is None:
            _claim(cl, inv, "down")
        links = _links()
        namespaces = _namespaces(cl.ns_prefix)
        veths = [v for v in links if v.startswith(cl.veth_prefix)]
        networks = [ipaddress.IPv4Network(f"{a}/{p}", strict=False) for _, a, p in _addresses(dev=cl.bridge)]
        if cl.subnet is not None:
            networks.append(cl.subnet)
        _teardown(cl, namespaces, veths, [cl.mount_marker], networks,
                  extra_links=[cl.bridge] if cl.bridge in links else [])
        _remove_bridge_forwarding(cl)
        shutil.rmtree(cl.control_dir, ignore_errors=True)
        shutil.rmtree(cl.hosts_dir, ignore_errors=True)
        cl.owner_file.unlink(missing_ok=True)
        ssh.remove_client_config(cl.name)
    _reap_launchers()
    removed = len(namespaces) + len(veths) + (cl.bridge in links)
    echo(f"netns {cl.name}: down in {time.monotonic() - t0:.2f}s "
         + (f"({len(namespaces)} namespaces, {len(veths)} veths, bridge {cl.bridge} removed)" if removed
            else "(nothing was running)"))


def status(inv: Inventory | str | os.PathLike | None = None) -> list[dict]:
    """One dict per inventory host: host, address, namespace, state (up|down|broken), init_pid, sshd, problem.

    Root only: another user cannot see into the namespaces, and every host looked "broken" to it."""
    _check_root()
    inv = _as_inventory(inv)
    cl = Cluster.from_inventory(inv)
    namespaces = set(_namespaces(cl.ns_prefix))
    links = _links()
    rows = []
    problems = [_problem(cl, n, namespaces, links) for n in cl.nodes]
    with ThreadPoolExecutor(max_workers=min(32, len(cl.nodes) or 1)) as pool:  # each waits for sshd's banner
        answers = list(pool.map(lambda n, problem: problem is None and ssh.sshd_open(n.address), cl.nodes, problems))
    for n, problem, sshd in zip(cl.nodes, problems, answers, strict=True):
        if problem == "absent":
            state, problem = "down", ""
        elif problem is None and not sshd:
            state, problem = "broken", "sshd does not answer"
        else:
            state = "broken" if problem else "up"
        rows.append({"host": n.name, "address": n.address, "namespace": n.ns, "state": state,
                     "init_pid": _init_pid(n.ns) if n.ns in namespaces else None, "sshd": sshd,
                     "problem": problem or ""})
    return rows


# --- command line -------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit.backends.netns", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("-i", "--inventory", metavar="PATH", help="inventory (default: the active one)")
    parser.add_argument("--cluster", metavar="NAME", help="down only: the cluster to remove, without an inventory")
    parser.add_argument("--json", action="store_true", help="status only: print JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        if args.command == "up":
            up(args.inventory)
        elif args.command == "down":
            down(args.inventory, cluster=args.cluster)
        else:
            rows = status(args.inventory)
            if args.json:
                from labnodes.output import as_json
                as_json(rows)
            else:
                from labnodes.output import table
                keys = ["host", "address", "state", "init_pid", "sshd", "problem"]
                table([[r[k] if r[k] is not None else "-" for k in keys] for r in rows], keys)
    except LabkitError as exc:
        print(f"netns: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
