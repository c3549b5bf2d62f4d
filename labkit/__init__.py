"""labkit: the control side of the teaching cluster; Fabric (fabfile.py) drives it.

`labkit.inventory` reads the one host list (an Ansible inventory); `labkit.backends` brings its hosts up (netns:
Linux namespaces on this box; vagrant: VMs; lab: real machines); `labkit.ssh` is how the box reaches them;
`labkit.provision` runs the playbooks; `labkit.runs` runs each technology across the hosts. State lives in
`<repo>/.labkit/` (git-ignored).
"""

import contextlib
import fcntl
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # the repository holding this package
STATE = REPO / ".labkit"  # generated keys, secrets, host roots, ssh configs; never committed


class LabkitError(Exception):
    """A failure to report to the user as one clear line (CLIs print it and exit 1)."""


# What no renderer or terminal can show as it is: C0 and C1 controls (a terminal escape, NUL, a carriage return)
# but tab and newline, lone surrogates (undecodable bytes), and U+FFFE / U+FFFF. XML 1.0 cannot carry them at all,
# openpyxl refuses a cell with one (IllegalCharacterError ended a whole class run), and a terminal obeys an escape.
UNSHOWABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def printable(value):
    """`value` (text, or a report: nested dicts and lists) with every unshowable character of every string, keys
    too, written as a visible escape (ESC as \\x1b, a lone surrogate as \\udc80). What labkit shows comes from the
    hosts (a student's math server's reply, a program's last line of stderr, a check probe's facts) and from
    inventories (Ansible's error quotes the line it could not parse, even a binary one)."""
    if isinstance(value, str):
        return UNSHOWABLE.sub(
            lambda m: (f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}"), value
        )
    if isinstance(value, dict):
        return {printable(k): printable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable(v) for v in value]
    return value


def write_atomic(path: str | os.PathLike, data: str | bytes, mode: int = 0o644) -> None:
    """Write `data` (text as UTF-8) to `path` all or nothing: into `<path>.tmp` beside it, then renamed over it. A
    failure (a full disk, a folder that is not there) raises OSError and leaves the old file, if any, as it was,
    and no `.tmp`."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def one_at_a_time(path: str | os.PathLike, waiting: str):
    """Hold an exclusive lock on the file `path` (made if missing) for the block: a second holder waits for the
    first, after printing `waiting` on stderr once. The lock goes with the process (flock), also when it is killed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(waiting, file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def stop_child(proc: subprocess.Popen, grace: float) -> None:
    """After a Ctrl-C in fab: stop a long child (ansible-playbook, vagrant) as the terminal's Ctrl-C would, and wait
    for it to clean up, at most `grace` seconds (then, or at a second Ctrl-C, kill it).

    The child runs in a process group of its own (Popen(process_group=0)), so the terminal's Ctrl-C reaches fab
    alone and the child gets exactly one SIGINT, from here: vagrant takes a second one as "quit now, skip the
    clean-up", and a child in fab's group would get the terminal's and then this one. A SIGINT to fab alone (`kill
    -INT`) stops it too: nothing goes on behind a fab that has given up."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.communicate(timeout=grace)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
