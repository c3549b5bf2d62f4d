"""Provisioning: run playbooks/site.yml against an inventory and report what changed and where the time went."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from labkit import REPO, STATE, LabkitError, one_at_a_time, stop_child
from labkit.progress import Progress

VENV_BIN = Path(sys.executable).parent
TASK = re.compile(r"^TASK \[(?:(?P<role>[^:\]]+) : )?(?P<task>[^\]]*)\]")
RESULT = re.compile(r"^(?:ok|changed|skipping|fatal|failed|unreachable): \[(?P<host>[^\]]+)\]")
INCLUDED = re.compile(r"^included: .* for (?P<hosts>.+)$")
RECAP = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)"
)


class ProvisionError(LabkitError):
    """ansible-playbook failed; the message names the hosts that failed."""


def ansible_env(timing_file: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), PYTHONUNBUFFERED="1")
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    if timing_file is not None:
        env["LABKIT_TIMING_FILE"] = str(timing_file)
    return env


def parse_recap(text: str) -> dict[str, dict[str, int]]:
    hosts = {}
    for line in text.splitlines():
        m = RECAP.match(line.strip())
        if m:
            hosts[m["host"]] = {k: int(m[k]) for k in ("ok", "changed", "unreachable", "failed")}
    return hosts


def failure_summary(rc: int, recap: dict[str, dict[str, int]]) -> str:
    """The line that ends a failed provisioning: the hosts that failed, those Ansible could not reach, and how many
    ran through (a host that fails does not stop the others)."""
    unreachable = sorted(h for h, r in recap.items() if r["unreachable"])
    failed = sorted(h for h, r in recap.items() if r["failed"] and h not in unreachable)
    named = [h if h != "localhost" else "localhost (the control machine's play: the hosts' play did not run)"
             for h in failed]
    parts = [f"failed on {', '.join(named)}"] if failed else []
    if unreachable:
        parts.append(f"{', '.join(unreachable)} unreachable (down, or its network? fab status; "
                     "fab provision again once it is back)")
    ran = len([h for h in recap if h != "localhost"]) - len(set(failed + unreachable) - {"localhost"})
    return (f"ansible-playbook exited {rc}: {'; '.join(parts) or 'see its output above'}"
            + (f"; the other {ran} hosts ran through" if parts and ran else ""))


class TaskProgress:
    """Under --quiet, how far each task of the play is: hosts done of total (labkit.progress), one task at a time."""

    def __init__(self, total: int):
        self.total, self.progress, self.hosts = total, None, set()

    def line(self, line: str) -> None:
        if m := TASK.match(line):
            self.close()
            where = m["role"] or "play"
            self.progress = Progress(f"provision: {where}: {m['task'].strip()}", self.total, patience=10)
            self.hosts = set()
        elif self.progress is not None and ((m := RESULT.match(line)) or (m := INCLUDED.match(line))):
            names = m.groupdict().get("host") or m["hosts"]
            self.hosts.update(h.strip() for h in names.split(","))
            self.progress.update(len(self.hosts))

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None


def provision(inventory: str | os.PathLike, *, cluster: str, quiet: bool = False, extra: list[str] | None = None,
              playbook: str | os.PathLike | None = None, hosts: int | None = None) -> dict:
    """Run site.yml (or `playbook`) on the inventory of `cluster`; stream its output unless quiet (then: one line
    per play, and with `hosts`, the number of hosts, how far each task is); return {"seconds", "hosts": recap,
    "timing": per play/role}.

    Runs for one cluster take turns on this machine (`cluster` is required so that no caller forgets it): two at
    once (`fab provision` in two terminals, a `fab up` or `vagrant provision` beside it) each restarted the
    programs the other was starting (supervisord: STILL_RUNNING) and both failed. The second says it waits."""
    wait = f"provision: waiting for another provisioning of cluster {cluster} to end"
    with one_at_a_time(STATE / cluster / "provision.lock", wait):
        return _provision(inventory, quiet=quiet, extra=extra, playbook=playbook, hosts=hosts)


def _provision(inventory, *, quiet, extra, playbook, hosts) -> dict:
    timing_file = STATE / f"timing-{os.getpid()}.json"
    timing_file.parent.mkdir(exist_ok=True)
    cmd = [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), str(playbook or REPO / "playbooks" / "site.yml"),
           *(extra or [])]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env=ansible_env(timing_file), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL, process_group=0)
    lines = []
    tasks = TaskProgress(hosts) if quiet and hosts else None
    try:
        for line in proc.stdout:
            lines.append(line)
            if not quiet or line.startswith("PLAY ["):  # quiet still shows progress, one line per play
                sys.stdout.write(line if not quiet else f"provision: {line[6:].split(']')[0]}\n")
                sys.stdout.flush()
            if tasks is not None and not line.startswith("PLAY ["):
                if line.startswith("PLAY RECAP"):
                    tasks.close()
                    tasks = None
                else:
                    tasks.line(line)
    except KeyboardInterrupt:
        stop_child(proc, grace=30)
        timing_file.unlink(missing_ok=True)
        raise
    finally:
        if tasks is not None:
            tasks.close()
    rc = proc.wait()
    seconds = time.monotonic() - start
    text = "".join(lines)
    recap = parse_recap(text)
    timing = {}
    if timing_file.exists():
        timing = json.loads(timing_file.read_text())
        timing_file.unlink()
    if rc != 0:
        # under --quiet nothing was shown: the lines naming what failed (they may be far above the recap), then the end
        fatal = [ln for ln in lines if ln.startswith(("fatal: ", "failed: "))][:8]
        tail = ("".join(fatal) + "...\n" + "".join(lines[-25:])) if quiet else ""
        raise ProvisionError(f"{failure_summary(rc, recap)}\n{tail}")
    return {"seconds": seconds, "hosts": recap, "timing": timing}
