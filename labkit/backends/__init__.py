"""Where a cluster's hosts come from: one module per backend, each answering the same few calls for an inventory.

    up(inv, echo=print) -> None     make the hosts exist and accept SSH; record the inventory as the active one
    down(inv, echo=print) -> None   take them away (netns: remove; vagrant: destroy; lab: remove labkit from them)
    status(inv) -> list[dict]       one row per inventory host: host, address, state (up|down|broken), problem
    UP_HINT                         the command that brings such a cluster up ({inventory} is filled in)
    preflight(inv) -> None          (optional) refuse at once what this user cannot do with such a cluster
                                    (netns: anyone but root), before any host is tried; `preflight` below calls it

The inventory's `labkit_backend` picks the module (`for_inventory`). Provisioning (playbooks/site.yml) and the SSH
client side (labkit/ssh.py) are the same for every backend, so a new backend is one new module here.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from labkit import LabkitError

NAMES = ("netns", "vagrant", "lab")


def for_inventory(inv) -> ModuleType:
    """The backend module named by the inventory's labkit_backend."""
    if inv.backend not in NAMES:
        raise LabkitError(f"{inv.path}: labkit_backend {inv.backend!r} is not one of {', '.join(NAMES)}")
    return importlib.import_module(f"labkit.backends.{inv.backend}")


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
