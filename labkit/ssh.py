"""The SSH client side that every backend shares: the cluster's key, its known hosts, its ssh_config, multiplexing,
waiting for sshd, and closing the box's connections to a cluster that goes away.

Files, all under `.labkit/` (git-ignored):

    .labkit/<cluster>/ssh/id_ed25519   the cluster's own key: made once, kept across down and up
    .labkit/<cluster>/known_hosts      the hosts' keys, as the backend learnt them (StrictHostKeyChecking yes)
    .labkit/<cluster>/ssh_config       one block per host: address, user, key, known_hosts, ControlMaster
    .labkit/ssh_config                 every cluster's ssh_config, then ~/.ssh/config (ansible.cfg and Fabric use it)

A lab inventory writes none of these: its machines are reached with the user's own ~/.ssh/config and keys, and the
inventory's `ansible_host`/`ansible_user`, as Ansible would reach them.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import socket
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from labkit import STATE, LabkitError, write_atomic

CONTROL_ROOT = Path("/run/labkit")  # ControlPath directories, one per cluster (short: unix sockets <= 104 bytes)
INCLUDE = STATE / "ssh_config"


class SshError(LabkitError):
    """A cluster's hosts cannot be reached over SSH; the message names them."""


@dataclass(frozen=True)
class SshHost:
    """How the box reaches one host: its inventory name, address, login, and host key if the backend knows it."""

    name: str
    address: str
    user: str = "root"
    host_key: str | None = None  # "ssh-ed25519 AAAA...": written to known_hosts
    port: int = 22


def sudo_refused(user: str, why: str) -> str:
    """What to say when `user` logs in but sudo asks for a password (`why`: sudo's own line); labkit runs every
    command on such a host through `sudo -n`, as Ansible's become does."""
    return (f"logs in as {user}, but sudo will not run without a password ({why}): labkit needs passwordless sudo "
            f"there, e.g. `echo '{user} ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/labkit` as root")


def key_path(cluster: str) -> Path:
    return STATE / cluster / "ssh" / "id_ed25519"


def known_hosts_path(cluster: str) -> Path:
    return STATE / cluster / "known_hosts"


def config_path(cluster: str) -> Path:
    return STATE / cluster / "ssh_config"


def control_dir(cluster: str) -> Path:
    return CONTROL_ROOT / cluster


def ensure_key(cluster: str) -> Path:
    """The cluster's private key (made on first use, then kept); its public half is beside it (.pub)."""
    key = key_path(cluster)
    key.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(key.parent, 0o700)
    if not (key.exists() and key.with_suffix(".pub").exists()):
        key.unlink(missing_ok=True)
        proc = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"labkit-{cluster}",
                               "-f", str(key)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SshError(f"ssh-keygen for cluster {cluster} failed: {proc.stderr.strip()}")
    return key


def public_key(cluster: str) -> str:
    return ensure_key(cluster).with_suffix(".pub").read_text().strip()


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text, mode)


def write_client_config(cluster: str, hosts: list[SshHost], *, writer: str = "labkit") -> Path:
    """Write the cluster's known_hosts and ssh_config, and the include file that lists every cluster's."""
    key = ensure_key(cluster)
    known = [f"{'[' + h.address + ']:' + str(h.port) if h.port != 22 else h.address},{h.name} {h.host_key}"
             for h in hosts if h.host_key]
    _write(known_hosts_path(cluster), "".join(line + "\n" for line in known))
    blocks = [f"# labkit cluster {cluster}: written by {writer} when the cluster comes up; removed when it goes.\n"]
    for h in hosts:
        blocks.append(f"""\
Host {h.address} {h.name}
  HostName {h.address}
  Port {h.port}
  User {h.user}
  IdentityFile {key}
  IdentitiesOnly yes
  UserKnownHostsFile {known_hosts_path(cluster)}
  StrictHostKeyChecking yes
  ControlMaster auto
  ControlPath {control_dir(cluster)}/%C
  ControlPersist 120s
  ServerAliveInterval 10
  ServerAliveCountMax 3
""")
    _write(config_path(cluster), "\n".join(blocks))
    control_dir(cluster).mkdir(parents=True, exist_ok=True)
    os.chmod(control_dir(cluster), 0o700)
    _write(INCLUDE, f"""\
# Written by labkit/ssh.py: every cluster's generated ssh settings, then the user's own.
Include {STATE}/*/ssh_config
Include ~/.ssh/config
""")
    return config_path(cluster)


def remove_client_config(cluster: str) -> None:
    """Forget how to reach the cluster's hosts (its key stays)."""
    known_hosts_path(cluster).unlink(missing_ok=True)
    config_path(cluster).unlink(missing_ok=True)


def sshd_open(address: str, port: int = 22, timeout: float = 5.0) -> bool:
    """True if an SSH server answers on the host's SSH port: its identification line ("SSH-2.0-...", RFC 4253
    section 4.2, which lets a server send other lines first) arrives within `timeout` s of connecting. A TCP
    connection alone proves nothing: a firewall or proxy that accepts every connection (this project's build
    machines have one) made every machine of a lab inventory "up" whose sshd nobody could reach. The timeout is
    generous: sshd sends the line from a process it starts per connection, which a loaded box can be slow to run."""
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            seen = b""
            while len(seen) < 8192:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                got = sock.recv(1024)
                if not got:
                    return False
                seen += got
                if any(line.startswith(b"SSH-") for line in seen.split(b"\n")):
                    return True
    except OSError:
        return False
    return False


def login(address: str, *, timeout: float = 10.0) -> subprocess.CompletedProcess:
    """`ssh ADDRESS true` with the generated settings, without multiplexing: does the host accept our key?"""
    return subprocess.run(
        ["ssh", "-F", str(INCLUDE), "-o", "BatchMode=yes", "-o", "ControlMaster=no", "-o", "ControlPath=none",
         "-o", f"ConnectTimeout={max(1, int(timeout))}", address, "true"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout + 20,
    )


def wait_for_sshd(cluster: str, hosts: list[SshHost], timeout: float = 60.0, hint: str = "",
                  progress=None) -> None:
    """Return when every host's sshd accepts the cluster's key over its ssh_config; else name those that don't.
    `progress` (a labkit.progress.Progress) is told how many hosts are ready."""
    ready = []

    def probe(h: SshHost) -> str | None:
        err = _probe(h)
        if err is None and progress is not None:
            ready.append(h.name)
            progress.update(len(ready))
        return err

    def _probe(h: SshHost) -> str | None:
        deadline = time.monotonic() + timeout
        err = "sshd never listened"
        while time.monotonic() < deadline:
            if not sshd_open(h.address, h.port):  # a refusal is at once; a busy sshd may be slow to answer
                time.sleep(0.02)
                continue
            proc = login(h.address, timeout=5)
            if proc.returncode == 0:
                return None
            err = (proc.stderr.strip().splitlines() or ["ssh failed"])[-1]
            time.sleep(0.2)
        return f"{h.name} ({h.address}): {err}"

    with ThreadPoolExecutor(max_workers=min(32, len(hosts) or 1)) as pool:
        failures = [f for f in pool.map(probe, hosts) if f]
    if failures:
        raise SshError(f"cluster {cluster}: sshd did not accept the cluster key: {'; '.join(failures)}"
                       + (f"; {hint}" if hint else ""))


# --- closing connections ------------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _ssh_clients(networks: list[ipaddress.IPv4Network]) -> set[int]:
    """PIDs of ssh processes on the box with a TCP connection to an address in `networks` (masters included)."""
    found = set()
    out = subprocess.run(["ss", "-tanpH"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 6:
            continue
        peer = fields[4].rsplit(":", 1)[0].strip("[]")
        try:
            ip = ipaddress.ip_address(peer)
        except ValueError:
            continue
        if any(ip in net for net in networks):
            found.update(int(p) for name, p in re.findall(r'\("([^"]+)",pid=(\d+)', line) if name == "ssh")
    return found


def ansible_control_dirs() -> list[Path]:
    dirs = [Path.home() / ".ansible" / "cp"]
    if os.environ.get("ANSIBLE_SSH_CONTROL_PATH_DIR"):
        dirs.append(Path(os.environ["ANSIBLE_SSH_CONTROL_PATH_DIR"]).expanduser())
    return dirs


def close_connections(networks: list[ipaddress.IPv4Network], control_dirs: list[Path]) -> list[int]:
    """End ssh connections from the box to `networks` (ControlPersist masters included), then remove control
    sockets nobody listens on. Returns the PIDs ended."""
    pids = _ssh_clients(networks) if networks else set()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 2
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for d in control_dirs:
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
                if not stat.S_ISSOCK(st.st_mode) or time.time() - st.st_mtime < 5:  # a master may be starting
                    continue
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(0.5)
                    s.connect(e.path)
            except ConnectionRefusedError:
                os.unlink(e.path)
            except OSError:
                continue
    return sorted(pids)
