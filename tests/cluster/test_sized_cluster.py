"""A bigger embedded cluster, as `fab new-inventory` makes it: 24 hosts, a ring of 10 and 11 Celery workers.

The course's cluster has a ring of 3 and two workers; a student who grows it must get the same tasks working.
This is the CI-sized cut of issue 10's hundred hosts (`make scale-test` runs those): the lap's nested calls
sized for ten hops, every ring host passing the message from its own address in order, and Celery's jobs
reaching every worker. Everything goes through the real `fab` command, as in test_lab_cluster.
"""

from __future__ import annotations

import pytest

from tests.cluster.conftest import fab_json, sized_cluster

CLUSTER, SUBNET, RING, WORKERS = "sz24", "10.77.204.0/24", 10, 11


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    yield from sized_cluster(tmp_path_factory, CLUSTER, SUBNET, RING, WORKERS, said="24 hosts")


def test_the_inventory_has_the_size_asked_for(big):
    assert len(big.hosts) == 24
    assert (len(big.groups["ring"]), len(big.groups["workers"])) == (RING, WORKERS)


def test_a_ring_of_ten_passes_the_message_from_ten_addresses_in_order(big):
    result = fab_json("run-ring", "--numbers", "832040,514229", inv=big.path)  # Fibonacci: several laps
    ring = list(big.groups["ring"])
    first_lap = [hop for hop in result["trace"] if hop["lap"] == 1]
    assert [hop["node"] for hop in first_lap] == ring + ring[:1]
    assert [hop["host"] for hop in first_lap] == ring + ring[:1]
    addresses = [hop["address"].rsplit(":", 1)[0] for hop in first_lap[:-1]]
    assert addresses == [big.host(n).address for n in ring] and len(set(addresses)) == RING
    assert result["gcd"] == 1 and result["laps"] > 1


def test_celery_jobs_reach_every_one_of_eleven_workers(big):
    result = fab_json("run-celery", "--count", "220", inv=big.path)
    ran_on = set()
    for mode, r in result["modes"].items():
        assert (r["ok"], r["error_count"]) == (220, 0), (mode, r["errors"])
        ran_on |= set(r["hosts"])
    assert ran_on == set(big.groups["workers"])
