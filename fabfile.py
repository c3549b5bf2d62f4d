"""labkit tasks: bring a cluster up, run each technology across its hosts, show it, take it down.

Every task acts on the active inventory (the last `fab up -i ...`, or $LABKIT_INVENTORY, else inventory/netns).
Run tasks print a table, or JSON with --json. The work is done in labkit.runs, labkit.provision and the inventory's
backend (labkit.backends: netns, vagrant or lab), behind the same calls: this file never asks which backend it is.
"""

from __future__ import annotations

import subprocess
import sys
import time

from fabric import task

from labkit import REPO, LabkitError, backends, inventory, provision, runs
from labkit.remote import Hosts, RemoteError
from labnodes import output


def _fail(exc: Exception):
    print(f"fab: error: {exc}", file=sys.stderr)
    sys.exit(1)


def _run(fn, headers, rows, json_, *args, **kwargs) -> dict:
    try:
        with Hosts(inventory.load()) as hosts:
            try:
                result = fn(hosts, *args, **kwargs)
            except RemoteError as exc:
                if exc.unreachable:  # say so in one line if the cluster is not up at all
                    _fail(LabkitError(runs.not_up(hosts) or str(exc)))
                raise
    except LabkitError as exc:
        _fail(exc)
    if json_:
        output.as_json(result)
    else:
        output.table(rows(result), headers)
    return result


@task(help={"inventory": "inventory to bring up and make active (default: the active one)",
            "quiet": "hide Ansible's task output"})
def up(c, inventory_=None, quiet=False):
    """Bring the inventory's hosts up (its backend: netns, vagrant or lab) and provision them with site.yml."""
    try:
        inv = inventory.load(inventory_)
        start = time.monotonic()
        backends.for_inventory(inv).up(inv)
        hosts_s = time.monotonic() - start
        report = provision.provision(inv.path, quiet=quiet, hosts=len(inv.hosts))
    except LabkitError as exc:
        _fail(exc)
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in report["timing"].get("roles", {}).items())
    changed = sum(r["changed"] for r in report["hosts"].values())
    print(f"\nup: hosts {hosts_s:.1f}s, provisioning {report['seconds']:.1f}s ({changed} changes)\n"
          f"up: per role: {timing}\n")
    status(c)


@task(name="provision", help={"inventory": "inventory to provision (default: the active one)"})
def provision_(c, inventory_=None):
    """Run playbooks/site.yml against the hosts again (a second run changes nothing)."""
    try:
        report = provision.provision(inventory.load(inventory_).path)
    except LabkitError as exc:
        _fail(exc)
    print(f"provision: {report['seconds']:.1f}s, "
          f"{sum(r['changed'] for r in report['hosts'].values())} changes")


@task(help={"inventory": "inventory whose hosts to remove (default: the active one)"})
def down(c, inventory_=None):
    """Take the cluster down: netns hosts removed, Vagrant VMs destroyed, labkit removed from lab machines."""
    try:
        inv = inventory.load(inventory_)
        backends.for_inventory(inv).down(inv)
    except LabkitError as exc:
        _fail(exc)


@task(help={"json": "print JSON instead of a table"})
def status(c, json_=False):
    """Hosts, groups, addresses, and the supervised programs on each host with their state."""
    result = _run(runs.status, runs.STATUS_HEADERS, runs.status_rows, json_)
    if not json_:
        print(f"\ncluster {result['cluster']} ({result['backend']}, {result['inventory']})")
        if not result["up"]:
            print(f"the cluster is not {'fully ' if any(h['state'] == 'up' for h in result['hosts']) else ''}up: "
                  f"bring it up with `{result['up_hint']}`")
        if result["flower"]:
            print(f"Flower (Celery monitor): {result['flower']}  user 'admin', password in "
                  f".labkit/{result['cluster']}/secrets/flower_password")
    if not result["up"]:
        sys.exit(1)


@task(help={"message": "text to send round the ring", "numbers": "two numbers A,B: one Euclid step per hop",
            "json": "print JSON instead of a table"})
def run_ring(c, message="hello", numbers="48,18", json_=False):
    """Send a message and numbers from the client round the Pyro4 ring: pyro1 -> pyro2 -> pyro3 -> pyro1."""
    result = _run(runs.ring, runs.RING_HEADERS, runs.ring_rows, json_, message=message, numbers=numbers)
    if not json_:
        print(f"\n{result['message']!r} from {result['client']['host']} went round {result['laps']} lap(s) "
              f"in {result['total_ms']:.1f} ms: gcd{tuple(result['input'])} = {result['gcd']}, "
              f"lcm = {result['lcm']}")


@task(help={"count": "GCD jobs per mode", "mode": "one, group, chunks or all", "json": "print JSON instead"})
def run_celery(c, count=200, mode="all", json_=False):
    """Submit GCD/LCM jobs from the client through the Redis broker; show results and which workers ran them."""
    result = _run(runs.celery, runs.CELERY_HEADERS, runs.celery_rows, json_, count=int(count), mode=mode)
    if not json_:
        s = result["submit"]
        print(f"\nlcm(48, 18) = {s['result']}, run by {s['worker']} on {s['host']}; "
              f"workers group: {', '.join(result['workers'])}")


@task(iterable=["pair"], help={"pair": "a request like 48,18 (repeat for more)", "json": "print JSON instead"})
def run_math(c, pair=None, json_=False):
    """Ask the socket math server on the sockserver host from the client host (default: 48,18)."""
    _run(runs.math, runs.MATH_HEADERS, runs.math_rows, json_, pairs=tuple(pair or ["48,18"]))


@task(help={"size": "file size in MB", "json": "print JSON instead of a table"})
def send_file(c, size=32, json_=False):
    """Send a random binary file from the client to the sockserver host and back; compare sha256 on both."""
    result = _run(runs.send_file, runs.SEND_FILE_HEADERS, runs.send_file_rows, json_, size_mb=int(size))
    if not json_:
        print()
        output.table(([f["where"], f["path"], f["sha256"]] for f in result["files"]), ["copy", "path", "sha256"])
        print(f"\nsha256 {'matches on both hosts, both ways' if result['match'] else 'DIFFERS'}")
    if not result["match"]:
        sys.exit(1)


@task(help={"k": "only checks whose name matches this pytest -k expression"})
def check(c, k=None):
    """Remote checks of every host with pytest + testinfra over SSH (tests/infra), against the active inventory."""
    try:
        inv = inventory.load()
    except LabkitError as exc:
        _fail(exc)
    cmd = [sys.executable, "-m", "pytest", "tests/infra", f"--ansible-inventory={inv.path}", "-p", "no:cacheprovider",
           *(["-k", k] if k else [])]
    sys.exit(subprocess.run(cmd, cwd=REPO, env=provision.ansible_env()).returncode)


@task
def demo(c):
    """All the runs, one after another: ring, Celery, math server, file transfer."""
    for title, t in [("Pyro4 ring", run_ring), ("Celery through the Redis broker", run_celery),
                     ("Socket math server", run_math), ("File transfer", send_file)]:
        print(f"\n=== {title} ===\n")
        t(c)
