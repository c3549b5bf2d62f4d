"""labkit: the control side of the teaching cluster (inventory loading, the netns backend; Fabric drives the rest).

`labkit.inventory` reads the one host list (an Ansible inventory); `labkit.netns` turns it into real hosts made of
Linux namespaces on this box. State lives in `<repo>/.labkit/` (git-ignored).
"""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # the repository holding this package
STATE = REPO / ".labkit"  # generated keys, secrets, host roots, ssh configs; never committed


class LabkitError(Exception):
    """A failure to report to the user as one clear line (CLIs print it and exit 1)."""
