"""Commands on cluster hosts over real SSH (Fabric), with the cluster's own key and known_hosts.

How to reach a host comes from `.labkit/<cluster>/ssh_config` when the backend wrote one (labkit/ssh.py: key, user,
UserKnownHostsFile), else from the inventory (`ansible_host`, `ansible_user`) and ~/.ssh/config. Unknown host keys
are refused, never added silently. Where the inventory logs in as a user other than root with `ansible_become`
(VMs, lab machines), commands run through `sudo -n`, as Ansible's become does.

Where labnodes lives on a host, and every setting its programs run with, is asked of the host: its
/etc/labnodes/labnodes.toml (written by the labnodes role from the inventory), never a role's files.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import re
import shlex
import threading
import tomllib
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from labkit import STATE, LabkitError, options
from labkit.ssh import sudo_refused
from labnodes import selftest

import paramiko
from invoke.exceptions import CommandTimedOut
from fabric import Config, Connection
from fabric.runners import Remote

SETTINGS_FILE = "/etc/labnodes/labnodes.toml"  # labnodes' own default path (labnodes.config.DEFAULT_CONFIG)

# Without a handler, paramiko's transport thread prints a 20-line traceback for a host that is down; the error
# still reaches the caller as an exception, which says it in one line.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False


def selftest_command(python: str, *args: str) -> str:
    """The shell command that runs labnodes/selftest.py (stdlib only) with the host's own python and ARGS: `fab
    check`'s probe (`--context JSON`) and `fab status`'s look at supervisord (`--programs`), on a host that has no
    labnodes yet too. The file goes inside the command, compressed: nothing is copied to the host."""
    blob = base64.b64encode(zlib.compress(Path(selftest.__file__).read_bytes())).decode()
    code = f"import base64,zlib;exec(zlib.decompress(base64.b64decode('{blob}')))"
    return " ".join([shlex.quote(python), "-c", shlex.quote(code), *map(shlex.quote, args)])


DEFAULT_TIMEOUT = 20.0  # s per host for SSH and each remote command of a look (fab check, fab status)
MAX_TIMEOUT = 3600.0  # s: a longer one is a typo, and a class check would wait that long per host that is down


def parse_timeout(value, name: str = "--timeout") -> float | None:
    """A per-host timeout as given (text or a number; None: not given), checked: above 0 s, at most MAX_TIMEOUT."""
    return options.number(name, value, 0, MAX_TIMEOUT, low_open=True)


def timeout_for(inv, timeout: float | None = None) -> float:
    """The per-host timeout: the one given, else the inventory's labkit_check_timeout (emulated VMs are slow),
    else DEFAULT_TIMEOUT."""
    if timeout is not None:
        return float(timeout)
    found = {parse_timeout(h.vars.get("labkit_check_timeout"), "labkit_check_timeout") for h in inv.hosts} - {None}
    return max(found) if found else DEFAULT_TIMEOUT


def probe_timeout(host_timeout: float) -> float:
    """Seconds for each connection, request and supervisord call of the probe (selftest.py's TIMEOUT) on a host
    given host_timeout in all: the probe makes a few in a row, so a sixth of it (3.3 s at the default 20 s; 20 s
    at inventory/vagrant's 120), at least 3 s, but never more than a quarter: with 3 s at `--timeout 4`, one peer
    behind a partition used up the probe's whole time, and the host's own checks were all lost to "the probe did
    not finish"."""
    return round(min(max(3.0, host_timeout / 6), host_timeout / 4), 1)


WORD = 60  # characters of one word of a command an error quotes; a longer word is cut, saying how long it was


def shown(words) -> str:
    """A command's words as an error quotes them, each cut at about WORD characters: a 1001-character ring
    message is not repeated in full before the line saying it is too long. An option's value (`--opt=VALUE`)
    is cut and measured by itself."""

    def cut(word: str) -> str:
        if len(word) <= WORD:
            return word
        option, eq, value = word.partition("=") if word.startswith("--") else ("", "", word)
        return f"{option}{eq}{value[: WORD - 20]}... ({len(value)} characters)"

    return " ".join(map(cut, words))


def shown_command(command: str) -> str:
    """A shell command as an error quotes it: its words cut (shown), and of a script only the first line."""
    lines = command.strip().splitlines() or [""]
    first = shown(lines[0].split(" "))
    return first if len(lines) == 1 else f"{first} ... ({len(lines)} lines)"


# How a host's labnodes installed by an older labkit refuses a command or subcommand it does not have yet
OLDER_LABNODES = re.compile(r"argument (COMMAND|ACTION): invalid choice")


class RemoteError(LabkitError):
    """A command on a cluster host failed; the message names the host, the command and its stderr.

    `exited` and `stderr` are the command's exit status and standard error where it ran and ended (None and ""
    when SSH failed or the command timed out), for callers whose command says what went wrong by its status."""

    def __init__(self, message: str, *, unreachable: bool = False, exited: int | None = None, stderr: str = ""):
        super().__init__(message)
        self.unreachable = unreachable  # SSH itself failed: the host may be down
        self.exited = exited
        self.stderr = stderr


@dataclasses.dataclass(frozen=True)
class Failure:
    """A labnodes command's failure as it said it: its one line, and, with `--json`, its code and the address it
    concerns (labnodes.LabnodesError: "connect", "timeout", "wrong-key", "settings", a file-transfer code).
    A labnodes older than the code and address leaves both empty."""

    message: str
    code: str = ""
    address: str = ""


def labnodes_output(stdout: str, stderr: str) -> tuple[object, Failure | None]:
    """What `labnodes ... --json` printed: (its JSON, None), or (None, the Failure) when it failed: its error
    object on stdout, else (a labnodes too old to print one, or no labnodes at all) the last line of its output.
    A command that exits non-zero but printed a result (`math ask` with an ERR among its answers) succeeded here:
    the answer is the result."""
    try:
        data = json.loads(stdout)
    except json.JSONDecodeError:
        return None, Failure((stderr.strip() or stdout.strip() or "no output").splitlines()[-1].strip())
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return None, Failure(str(error.get("message", "")), str(error.get("code", "")), str(error.get("address", "")))
    return data, None


class _Remote(Remote):
    """Fabric's runner of a remote command, except that a Ctrl-C closes the command's channel.

    Fabric re-raises a Ctrl-C at once where there is no terminal, but invoke then waits for the command's output
    to end, that is, for the command to finish on the host: an interrupted `fab run-celery` went on for as long
    as its batch did. Closing the channel ends that wait, and ends the command's stdin on the host, which stops
    a `labnodes --tethered` command there (labnodes.cli)."""

    def send_interrupt(self, interrupt):
        if not self.using_pty:
            self.channel.close()
        super().send_interrupt(interrupt)


class Hosts:
    """SSH connections to the hosts of one inventory, opened on first use and reused."""

    def __init__(self, inventory):
        self.inv = inventory
        self._conns: dict[str, Connection] = {}
        self._settings: dict[str, dict] = {}
        self._lock = threading.Lock()  # connections are opened from several threads (ThreadPoolExecutor)
        ssh_config = STATE / inventory.cluster / "ssh_config"
        path = str(ssh_config) if ssh_config.exists() else None
        self._config = Config(runtime_ssh_path=path, overrides={"runners": {"remote": _Remote}})

    def address(self, name: str) -> str:
        return self.inv.host(name).address

    def connection(self, name: str) -> Connection:
        # Each connection gets a copy of the settings: Fabric writes the ssh_config's IdentityFile into the config
        # it is given, and invoke then rebuilds that config from empty, under any other thread reading it (seen
        # as "No attribute or config key found for 'port'" when several hosts were reached at once).
        with self._lock:
            return self._connection(name)

    def _connection(self, name: str) -> Connection:
        if name not in self._conns:
            host = self.inv.host(name)
            conn = Connection(host.address, user=host.user, config=self._config.clone(), connect_timeout=15)
            conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
            for path in conn.ssh_config.get("userknownhostsfile", "").split():
                if Path(path).exists():
                    conn.client.load_host_keys(path)
            self._conns[name] = conn
        return self._conns[name]

    def sudo(self, name: str) -> bool:
        """Whether commands on this host go through sudo (a non-root login with ansible_become)."""
        return self.inv.host(name).sudo

    def run(self, name: str, command: str, *, check: bool = True, timeout: float | None = None):
        """Run a shell command on a host; with `timeout`, a command still running then is a RemoteError."""
        remote = f"sudo -n sh -c {shlex.quote(command)}" if self.sudo(name) else command
        try:
            result = self.connection(name).run(remote, hide=True, warn=True, in_stream=False, timeout=timeout)
        except CommandTimedOut:
            raise RemoteError(f"{name}: `{command[:80]}` did not finish within {timeout:g} s") from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise RemoteError(f"{name} ({self.address(name)}): cannot connect over SSH: {exc or type(exc).__name__}",
                              unreachable=True) from None
        if check and result.exited != 0:
            err = (result.stderr.strip() or result.stdout.strip()).splitlines()
            why = err[-1] if err else "no output"
            why = self.sudo_refused(name, why) or why
            raise RemoteError(f"{name}: `{shown_command(command)}` exited {result.exited}: {why}",
                              exited=result.exited, stderr=result.stderr)
        return result

    def sudo_refused(self, name: str, why: str) -> str | None:
        """Where `why` (a command's last line of stderr) is this host's sudo refusing to run without a password,
        what to do about it (the sudoers line); else None. fab's commands and `fab check`'s probe both ask."""
        return sudo_refused(self.inv.host(name).user, why) if self.sudo(name) and why.startswith("sudo:") else None

    def settings(self, name: str) -> dict:
        """The host's labnodes settings (its labnodes.toml), read once per connection."""
        if name not in self._settings:
            text = self.run(name, f"cat {SETTINGS_FILE}").stdout
            try:
                self._settings[name] = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise RemoteError(f"{name}: {SETTINGS_FILE} is not valid TOML ({exc})") from None
        return self._settings[name]

    def setting(self, name: str, key: str):
        value = self.settings(name).get(key)
        if value in (None, ""):
            raise RemoteError(f"{name}: {SETTINGS_FILE} has no {key!r}: provision the host (fab provision)")
        return value

    def supervised(self, name: str) -> dict[str, dict]:
        """supervisord's programs on the host as labnodes.selftest.supervised() sees them: {"labnodes-ring":
        {"state": "RUNNING", "uptime": 12.0, "ended": None, ...}, ...}, "log_ends" for each that ended by itself.
        RemoteError if the host's python cannot run the look, or supervisord does not answer it in time.

        The look waits for supervisord as long as `fab check`'s probe would on this inventory (probe_timeout): on
        an emulated VM, 3 s was too short for supervisord's answer, and `fab status` showed no program at all."""
        python = self.inv.host(name).python
        context = json.dumps({"timeout": probe_timeout(timeout_for(self.inv))})
        result = self.run(name, selftest_command(python, "--programs", "--context", context), check=False)
        try:
            progs = json.loads(result.stdout)["programs"]
        except (ValueError, KeyError, TypeError):
            lines = [ln for ln in (result.stderr or result.stdout).splitlines() if ln.strip()] or ["no output"]
            raise RemoteError(f"{name}: {python} could not look at supervisord (exit {result.exited}): "
                              f"{lines[-1].strip()[:200]}") from None
        if progs is None:
            raise RemoteError(f"{name}: supervisord does not answer (supervisorctl status; its log is in "
                              "/var/log/supervisor/)")
        return progs

    def programs(self, name: str) -> dict[str, str]:
        """supervisord's programs on the host and their states ({"labnodes-ring": "RUNNING", ...}); RemoteError if
        supervisord does not answer (supervised())."""
        return {prog: p["state"] for prog, p in self.supervised(name).items()}

    def labnodes_bin(self, name: str, program: str = "labnodes") -> str:
        """Where a program of the labnodes venv is on this host (the venv its settings name)."""
        return f"{self.setting(name, 'venv')}/bin/{program}"

    def labnodes(self, name: str, *args: str):
        """Run `labnodes ARGS --json` on a host and return its parsed JSON output (`--json` goes before a `--`
        in ARGS, after which every word is a positional argument).

        The command is `--tethered`: if fab is interrupted or killed, or the connection ends, it stops on the host
        too, as on a Ctrl-C there. A command that exits non-zero but still printed its JSON (e.g. `math ask` with
        an ERR reply among the answers) returns that JSON: the answer is the result. A failure is raised as
        RemoteError with labnodes' own line (labnodes_output)."""
        cut = args.index("--") if "--" in args else len(args)
        words = ["--tethered", *args[:cut], "--json", *args[cut:]]  # stops on the host when fab goes (labnodes.cli)
        command = " ".join([self.labnodes_bin(name), *map(shlex.quote, words)])
        result = self.run(name, command, check=False)
        data, failure = labnodes_output(result.stdout, result.stderr)
        if failure is None:
            return data
        err = self.sudo_refused(name, failure.message) or failure.message
        if "unrecognized arguments: --tethered" in err or OLDER_LABNODES.search(err):  # an older labkit's
            err += " (the host's labnodes is older than this labkit: fab provision updates it)"
        raise RemoteError(f"{name}: labnodes {shown(args)}: {err}", exited=result.exited, stderr=result.stderr)

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
        self._settings.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
