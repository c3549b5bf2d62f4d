"""A cluster without a Pyro4 ring, as `fab new-inventory --ring 0` makes it: a course on Celery and sockets alone.

Before, provisioning such an inventory failed on every host with "object of type 'dict' has no attribute 'ring'"
(the hosts' settings sized the lap from `groups.ring`). Now it provisions, Celery and the socket programs work,
and what needs the ring says so in one line instead: `fab run-ring` names the missing group, `fab demo` skips the
ring saying why and runs the rest, and `fab check` fails `app.ring` alone, naming it. Everything goes through the
real `fab` command, as in test_lab_cluster.
"""

from __future__ import annotations

import json

import pytest

from tests.cluster.conftest import fab, fab_json, sized_cluster

CLUSTER, SUBNET = "noring", "10.77.205.0/24"


@pytest.fixture(scope="module")
def ringless(tmp_path_factory):
    yield from sized_cluster(tmp_path_factory, CLUSTER, SUBNET, 0, 1, said="4 hosts (no ring, 1 worker)")


def test_a_cluster_without_a_ring_provisions_and_runs_celery_and_the_math_server(ringless):
    assert "ring" not in ringless.groups
    result = fab_json("run-celery", "--count", "20", inv=ringless.path)
    for mode, r in result["modes"].items():
        assert (r["ok"], r["error_count"], set(r["hosts"])) == (20, 0, {"worker1"}), (mode, r["errors"])
    answer = fab_json("run-math", "--pair", "48,18", inv=ringless.path)["answers"][0]
    assert (answer["gcd"], answer["lcm"]) == (6, 144)


def test_fab_demo_says_it_skips_the_ring_and_runs_the_rest(ringless):
    out = fab("demo", inv=ringless.path).stdout
    ring, rest = out.split("=== Celery through the Redis broker ===")
    assert "skipped: the inventory has no host in group 'ring'" in ring, out
    assert "=== Socket math server ===" in rest and "sha256 matches on both hosts, both ways" in rest, out


def test_run_ring_names_the_missing_group(ringless):
    proc = fab("run-ring", inv=ringless.path, check=False)
    assert proc.returncode == 1 and "group 'ring' has no host" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_fab_check_fails_the_ring_run_alone_naming_the_group(ringless):
    proc = fab("check", "--json", inv=ringless.path, check=False)
    checks = json.loads(proc.stdout)["checks"]
    failed = [(c["id"], c["host"]) for c in checks if c["outcome"] != "pass"]
    assert proc.returncode == 1 and failed == [("app.ring", "broker")], failed  # keyed on the name server
    ring = next(c for c in checks if c["id"] == "app.ring")
    assert "no host in group 'ring'" in ring["found"], ring
    assert {"app.celery", "app.math", "app.file"} <= {c["id"] for c in checks if c["outcome"] == "pass"}
