"""Commands on cluster hosts over real SSH (Fabric), with the cluster's own key and known_hosts.

How to reach a host comes from `.labkit/<cluster>/ssh_config` when the backend wrote one (netns: key, user,
UserKnownHostsFile), else from the inventory (`ansible_host`, `ansible_user`) and ~/.ssh/config. Unknown host keys
are refused, never added silently.
"""

from __future__ import annotations

import json
import shlex
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from labkit import STATE, LabkitError

import paramiko
from fabric import Config, Connection

# Where the labnodes role installs the node-side CLI on every backend (roles/labnodes/defaults: labnodes_venv).
LABNODES = "/opt/labnodes/venv/bin/labnodes"


class RemoteError(LabkitError):
    """A command on a cluster host failed; the message names the host, the command and its stderr."""


class Hosts:
    """SSH connections to the hosts of one inventory, opened on first use and reused."""

    def __init__(self, inventory):
        self.inv = inventory
        self._conns: dict[str, Connection] = {}
        ssh_config = STATE / inventory.cluster / "ssh_config"
        self._config = Config(runtime_ssh_path=str(ssh_config)) if ssh_config.exists() else Config()

    def address(self, name: str) -> str:
        return self.inv.host(name).address

    def connection(self, name: str) -> Connection:
        if name not in self._conns:
            host = self.inv.host(name)
            conn = Connection(host.address, user=host.user, config=self._config, connect_timeout=15)
            conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
            for path in conn.ssh_config.get("userknownhostsfile", "").split():
                if Path(path).exists():
                    conn.client.load_host_keys(path)
            self._conns[name] = conn
        return self._conns[name]

    def run(self, name: str, command: str, *, check: bool = True):
        try:
            result = self.connection(name).run(command, hide=True, warn=True, in_stream=False)
        except (OSError, paramiko.SSHException) as exc:
            raise RemoteError(f"{name}: cannot run {command!r}: {exc}") from None
        if check and result.exited != 0:
            err = (result.stderr.strip() or result.stdout.strip()).splitlines()
            raise RemoteError(f"{name}: `{command}` exited {result.exited}: {err[-1] if err else 'no output'}")
        return result

    def labnodes(self, name: str, *args: str):
        """Run `labnodes ARGS --json` on a host and return its parsed JSON output.

        A command that exits non-zero but still printed its JSON (e.g. `math ask` with an ERR reply among the
        answers) returns that JSON: the answer is the result. Without JSON, its error line is raised."""
        command = " ".join([LABNODES, *map(shlex.quote, args), "--json"])
        result = self.run(name, command, check=False)
        try:
            return json.loads(result.stdout)
        except json.JSONDecodeError:
            err = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1]
            raise RemoteError(f"{name}: labnodes {' '.join(args)}: {err}") from None

    def on_all(self, names, fn):
        """Call fn(name) for every host at once; return {name: result or the exception raised}."""
        def guarded(name):
            try:
                return fn(name)
            except Exception as exc:  # reported per host by the caller
                return exc
        names = list(names)
        with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
            return dict(zip(names, pool.map(guarded, names)))

    def close(self):
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
