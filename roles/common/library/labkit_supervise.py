#!/usr/bin/python3
"""Apply supervisord's program files and wait until every program runs: `supervisorctl update`, then `start`.

One module run talks XML-RPC to supervisord through supervisor's own client options (so it finds the socket and
credentials exactly as supervisorctl does), instead of three supervisorctl processes of about 0.25 s of CPU each.

0. delete the program files that match `prune` (a glob) but are not named in `keep`: the service roles each write
   one file, and site.yml keeps those of the host's groups, so a host that leaves a group loses its programs;
1. reloadConfig, then remove the groups whose files are gone, re-create the changed ones (which restarts their
   programs) and add the new ones (autostart starts them) -- what `supervisorctl update` does;
2. start every program that is STOPPED, EXITED or FATAL (it was stopped by hand, or gave up);
3. wait (at most `timeout` seconds) while any program is STARTING or BACKOFF; fail naming every program that is
   not RUNNING then, with its state, its log file and the log's last lines;
4. wait (within the same `timeout`) until every program named in `listening` accepts a TCP connection at its
   address: RUNNING only means the process has lived `startsecs`, and a server on a slow host (an emulated VM)
   may still be importing its modules, so a run started right after provisioning would be refused. A program
   named there that this host does not run is skipped.

Reports changed when a file was pruned, a group was added, changed or removed, or a program was started.
"""

from __future__ import annotations

import glob
import os
import socket
import time

DOCUMENTATION = r"""
module: labkit_supervise
short_description: Apply supervisord's program files and wait until every program runs
description:
  - Like C(supervisorctl update) then C(supervisorctl start all), then waits while programs are starting.
  - Fails naming each program that is not RUNNING, with its log file and the log's last lines.
options:
  config:
    description: supervisord's configuration file; empty means supervisorctl's own search.
    type: str
    default: ""
  timeout:
    description: seconds to wait for STARTING or BACKOFF programs to settle.
    type: float
    default: 30
  prune:
    description: a glob of program files this play manages; empty prunes nothing.
    type: str
    default: ""
  keep:
    description: base names of the files matching I(prune) to keep; every other match is deleted first.
    type: list
    elements: str
    default: []
  listening:
    description: program name -> "address:port" it serves; waits until each accepts a TCP connection.
    type: dict
    default: {}
"""

RETURN = r"""
pruned: {description: program files deleted, type: list, returned: always}
added: {description: groups added, type: list, returned: always}
updated: {description: groups re-created because their definition changed, type: list, returned: always}
removed: {description: groups removed because their file is gone, type: list, returned: always}
started: {description: programs started because they were stopped or had given up, type: list, returned: always}
programs: {description: every program and its state at the end, type: dict, returned: always}
"""

SETTLING = ("STARTING", "BACKOFF")
RESTARTABLE = ("STOPPED", "EXITED", "FATAL")
LOG_TAIL = 1500  # bytes of a failed program's log shown in the error


class SuperviseError(Exception):
    """A program did not reach RUNNING, or supervisord refused a request; the message says which and why."""


def server_proxy(config: str = ""):
    """supervisord's XML-RPC proxy, configured as supervisorctl would be (serverurl, username, password)."""
    from supervisor.options import ClientOptions

    options = ClientOptions()
    try:
        options.realize(args=["-c", config] if config else [])
    except SystemExit:
        raise SuperviseError(f"cannot read supervisorctl's settings from {config or 'the default places'}") from None
    return options.getServerProxy()


def _full_name(info: dict) -> str:
    return info["name"] if info["group"] == info["name"] else f"{info['group']}:{info['name']}"


def prune_files(pattern: str, keep: list[str]) -> list[str]:
    """Delete the files matching pattern whose base name is not in keep; return their paths, sorted."""
    pruned = []
    for path in sorted(glob.glob(pattern)) if pattern else []:
        if os.path.basename(path) not in keep:
            try:
                os.unlink(path)
            except OSError as exc:
                raise SuperviseError(f"cannot remove {path}: {exc.strerror}") from None
            pruned.append(path)
    return pruned


def _answers(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=1.0).close()
        return True
    except OSError:
        return False


def wait_listening(listening: dict, running: set, deadline: float, poll: float) -> list[str]:
    """Wait until every running program of `listening` answers at its address; return those that never did."""
    waiting = {name: addr for name, addr in sorted(listening.items()) if name in running}
    while True:
        waiting = {name: addr for name, addr in waiting.items() if not _answers(addr)}
        if not waiting or time.monotonic() > deadline:
            return [f"{name} is RUNNING but nothing answers at {addr}" for name, addr in waiting.items()]
        time.sleep(poll)


def apply(server, timeout: float = 30.0, poll: float = 0.25, prune: str = "", keep=(), listening=None) -> dict:
    """Prune, update, start and wait as the module docstring says; return the report, or raise SuperviseError."""
    from xmlrpc.client import Fault

    pruned = prune_files(prune, list(keep))
    rpc = server.supervisor
    try:
        added, updated, removed = rpc.reloadConfig()[0]
        for group in removed + updated:
            rpc.stopProcessGroup(group)
            rpc.removeProcessGroup(group)
        for group in updated + added:
            rpc.addProcessGroup(group)
        started = []
        for info in rpc.getAllProcessInfo():
            if info["statename"] in RESTARTABLE:
                rpc.startProcess(_full_name(info), False)
                started.append(_full_name(info))
        deadline = time.monotonic() + timeout
        while True:
            infos = rpc.getAllProcessInfo()
            if not any(i["statename"] in SETTLING for i in infos) or time.monotonic() > deadline:
                break
            time.sleep(poll)
        failed = [i for i in infos if i["statename"] != "RUNNING"]
        details = []
        for info in failed:
            name = _full_name(info)
            tail = rpc.tailProcessStdoutLog(name, 0, LOG_TAIL)[0] if info["stdout_logfile"] else ""
            details.append(f"{name} is {info['statename']} (log {info['stdout_logfile'] or 'none'}):\n{tail.rstrip()}")
        if not details and listening:
            for line in wait_listening(listening, {_full_name(i) for i in infos}, deadline, poll):
                name = line.split()[0]
                tail = rpc.tailProcessStdoutLog(name, 0, LOG_TAIL)[0]
                details.append(f"{line} (waited at most {timeout:g}s):\n{tail.rstrip()}")
    except Fault as fault:
        raise SuperviseError(f"supervisord refused: {fault.faultString}") from None
    except OSError as exc:
        raise SuperviseError(f"cannot reach supervisord: {exc}") from None
    if details:
        raise SuperviseError("not ready (waited at most %gs): %s" % (timeout, "\n".join(details)))
    return {
        "changed": bool(pruned or added or updated or removed or started),
        "pruned": pruned,
        "added": added,
        "updated": updated,
        "removed": removed,
        "started": started,
        "programs": {_full_name(i): i["statename"] for i in infos},
    }


def main() -> None:
    # imported here, so that apply() also runs where Ansible is not installed (the tests run it with the
    # interpreter that has supervisor, /usr/bin/python3)
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(
        argument_spec={
            "config": {"type": "str", "default": ""},
            "timeout": {"type": "float", "default": 30.0},
            "prune": {"type": "str", "default": ""},
            "keep": {"type": "list", "elements": "str", "default": []},
            "listening": {"type": "dict", "default": {}},
        },
        supports_check_mode=False,
    )
    params = module.params
    try:
        server = server_proxy(params["config"])
        module.exit_json(**apply(server, params["timeout"], prune=params["prune"], keep=params["keep"],
                                      listening=params["listening"]))
    except SuperviseError as exc:
        module.fail_json(msg=str(exc))


if __name__ == "__main__":
    main()
