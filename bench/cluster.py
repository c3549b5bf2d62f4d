"""A benchmark's own netns cluster: a copy of inventory/netns under its own name and subnet, brought up and
provisioned, and always taken down again, with the instructor's active inventory put back.

    with cluster("fl3", 82) as (inv, tmp):      # inv: the loaded inventory; tmp: a scratch directory
        with Hosts(inv) as hosts:
            ...

`edit(hosts_yml_text) -> text` changes the host list before it is loaded (bench_cross adds workers). Progress
lines go to stderr: stdout is the benchmark's table. Needs root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from labkit import REPO, STATE, inventory, provision
from labkit.backends import netns


@contextlib.contextmanager
def cluster(name: str, octet: int, edit=None, provisioned: bool = True):
    if os.geteuid() != 0:
        raise PermissionError(f"the benchmark's cluster {name} needs root (it creates network namespaces)")
    active = (STATE / "active").read_text() if (STATE / "active").exists() else None
    with tempfile.TemporaryDirectory(prefix="labkit-bench-") as tmp:
        inv_path = inventory.relocate(REPO / "inventory" / "netns", Path(tmp) / "netns", name, octet)
        if edit is not None:
            hosts_yml = inv_path / "hosts.yml"
            hosts_yml.write_text(edit(hosts_yml.read_text()))
        inv = inventory.load(inv_path)
        try:
            with contextlib.redirect_stdout(sys.stderr):
                # what a crashed earlier run left, by name: its inventory was another temporary copy
                netns.down(cluster=name, echo=lambda *a: None)
                netns.up(inv, echo=lambda *a: None)
                if provisioned:
                    provision.provision(inv_path, cluster=name, quiet=True)
            yield inv, Path(tmp)
        finally:
            with contextlib.redirect_stdout(sys.stderr):
                netns.down(inv, echo=lambda *a: None)
            shutil.rmtree(STATE / name, ignore_errors=True)  # its key, secrets and logs: a throwaway cluster
            if active is None:
                (STATE / "active").unlink(missing_ok=True)
            else:
                (STATE / "active").write_text(active)
