"""labkit: the control side of the teaching cluster; Fabric (fabfile.py) drives it.

`labkit.inventory` reads the one host list (an Ansible inventory); `labkit.backends` brings its hosts up (netns:
Linux namespaces on this box; vagrant: VMs; lab: real machines); `labkit.ssh` is how the box reaches them;
`labkit.provision` runs the playbooks; `labkit.runs` runs each technology across the hosts. State lives in
`<repo>/.labkit/` (git-ignored).
"""

import signal
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # the repository holding this package
STATE = REPO / ".labkit"  # generated keys, secrets, host roots, ssh configs; never committed


class LabkitError(Exception):
    """A failure to report to the user as one clear line (CLIs print it and exit 1)."""


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
