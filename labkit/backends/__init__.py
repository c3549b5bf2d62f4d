"""Where a cluster's hosts come from: one module per backend, each answering the same few calls for an inventory.

    up(inv, echo=print) -> None     make the hosts exist and accept SSH; record the inventory as the active one
    down(inv, echo=print) -> None   take them away (netns: remove; vagrant: destroy; lab: remove labkit from them)
    status(inv) -> list[dict]       one row per inventory host: host, address, state (up|down|broken), problem
    UP_HINT                         the command that brings such a cluster up ({inventory} is filled in)
    preflight(inv) -> None          (optional) refuse at once what this user cannot do with such a cluster
                                    (netns: anyone but root), before any host is tried; `preflight` below calls it

The inventory's `labkit_backend` picks the module (`for_inventory`). Provisioning (playbooks/site.yml) and the SSH
client side (labkit/ssh.py) are the same for every backend, so a new backend is one new module here. What this
machine keeps of a cluster after `down` (.labkit/<cluster>/) is the same for every backend too: `forget` below.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import shutil
from types import ModuleType

from labkit import STATE, LabkitError

NAMES = ("netns", "vagrant", "lab")


def for_inventory(inv) -> ModuleType:
    """The backend module named by the inventory's labkit_backend."""
    if inv.backend not in NAMES:
        raise LabkitError(f"{inv.path}: labkit_backend {inv.backend!r} is not one of {', '.join(NAMES)}")
    return importlib.import_module(f"labkit.backends.{inv.backend}")


def forget(inv, echo=print) -> None:
    """After `down`: delete what this machine keeps of the cluster, .labkit/<cluster>/ (its SSH key, secrets, logs
    and locks), so that its next `fab up` starts afresh with a new key and new secrets. Refused, deleting nothing,
    while another command holds one of the cluster's locks there (`<command>.lock`, labkit.one_at_a_time: a
    provisioning, a send-file), which would go on with half of what it reads deleted."""
    state = STATE / inv.cluster
    if not state.is_dir():
        echo(f"down: this machine keeps nothing of cluster {inv.cluster}")
        return
    with contextlib.ExitStack() as held:
        for lock in sorted(state.glob("*.lock")):
            f = held.enter_context(open(lock, "a"))
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LabkitError(f"cluster {inv.cluster}: a {lock.stem} of it is running ({shown(lock)} is held): "
                                  "nothing forgotten; `fab down --forget` again once it has ended") from None
        kept = sorted(p.name for p in state.iterdir() if p.suffix != ".lock")
        shutil.rmtree(state)
    echo(f"down: forgot cluster {inv.cluster}: {shown(state)} removed"
         + (f" ({', '.join(kept)}); the next `fab up` makes a new key and new secrets" if kept else ""))


def preflight(inv) -> None:
    """Raise the backend's one-line refusal if this user cannot act on the inventory's cluster at all."""
    check = getattr(for_inventory(inv), "preflight", None)
    if check is not None:
        check(inv)


def up_hint(inv) -> str:
    """The one command that brings this inventory's cluster up."""
    return for_inventory(inv).UP_HINT.format(inventory=shown(inv.path))


def shown(path) -> str:
    """A path as a user would type it: relative to the repository where it lies inside it."""
    from labkit import REPO
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)
