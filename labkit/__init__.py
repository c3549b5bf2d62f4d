"""labkit: the control side of the teaching cluster; Fabric (fabfile.py) drives it.

`labkit.inventory` reads the one host list (an Ansible inventory); `labkit.backends` brings its hosts up (netns:
Linux namespaces on this box; vagrant: VMs; lab: real machines); `labkit.ssh` is how the box reaches them;
`labkit.provision` runs the playbooks; `labkit.runs` runs each technology across the hosts. State lives in
`<repo>/.labkit/` (git-ignored).
"""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # the repository holding this package
STATE = REPO / ".labkit"  # generated keys, secrets, host roots, ssh configs; never committed


class LabkitError(Exception):
    """A failure to report to the user as one clear line (CLIs print it and exit 1)."""
