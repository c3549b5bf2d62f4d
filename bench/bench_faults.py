"""Runs under packet loss: ring lap time (median, p99) with 0 %, 1 % and 5 % loss on a ring host, and file transfer
throughput with the same loss on the file server, each beside the healthy figure measured in the same run; and how
long a Celery job takes when every worker's main process is SIGKILLed while it runs (the job comes back through
Redis's redelivery after the visibility timeout, on the restarted worker), beside the same job with no fault.

Brings up its own copy of inventory/netns (cluster `fl3`, 10.77.82.0/24), sets the loss with labkit.faults (the
same code as `fab impair`), heals after every row and takes the cluster down at the end; needs root. No target:
the rows show what loss costs (TCP retransmissions), not a pass or a miss. quick=True skips it (it takes minutes).

    python -m bench faults          # inside the full table
    python -m bench.bench_faults    # this table alone
"""

from __future__ import annotations

import statistics
import sys
import threading
import time

from bench.cluster import cluster
from labkit import faults, runs
from labkit.remote import Hosts
from labnodes import output

CLUSTER, OCTET = "fl3", 82
LOSSES = (0, 1, 5)
LAPS, FILE_MB, FILE_RUNS = 30, 32, 3


def _p99(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.99 * (len(xs) - 1))))]


def _ring(hosts: Hosts, laps: int) -> list[float]:
    return [runs.ring(hosts)["total_ms"] for _ in range(laps)]


def _file(hosts: Hosts, size_mb: int, times: int) -> float:
    """Median MB/s of client -> sockserver and back over `times` transfers (sha256 checked each time)."""
    rates = []
    for _ in range(times):
        r = runs.send_file(hosts, size_mb=size_mb)
        if not r["match"]:
            raise RuntimeError("sha256 differs after a transfer under loss")
        rates += [float(r["send"]["mb_per_s"]), float(r["get"]["mb_per_s"])]
    return statistics.median(rates)


def _celery_job(hosts: Hosts, seconds: float, kill_after: float | None) -> float:
    """Seconds from submitting `lab.sleep(seconds)` on the client to its result; with kill_after, every worker's
    main process is SIGKILLed that long after the submit (supervisord restarts it; the job must still come back)."""
    client = hosts.inv.groups["clients"][0]
    done: dict = {}

    def submit():
        start = time.monotonic()
        done["result"] = hosts.labnodes(client, "celery", "submit", "sleep", str(seconds))
        done["seconds"] = time.monotonic() - start

    worker = threading.Thread(target=submit)
    worker.start()
    if kill_after is not None:
        time.sleep(kill_after)
        for host in hosts.inv.groups["workers"]:
            faults.fault(hosts, "kill", f"{host}:labnodes-celery-worker")
    worker.join()
    if done.get("result", {}).get("result") != seconds:
        raise RuntimeError(f"the Celery job did not come back: {done.get('result')}")
    return done["seconds"]


def measure_celery(hosts: Hosts, seconds: float = 3.0) -> list[dict]:
    healthy = _celery_job(hosts, seconds, None)
    killed = _celery_job(hosts, seconds, kill_after=1.0)
    return [{"bench": "Celery job, every worker killed mid-job", "value": killed, "unit": "s",
             "baseline_name": "the same job, no fault", "baseline": healthy, "ratio": killed / healthy,
             "target": "", "ok": None}]


def measure(hosts: Hosts, laps: int = LAPS, size_mb: int = FILE_MB, times: int = FILE_RUNS) -> list[dict]:
    ring_host, file_host = hosts.inv.groups["ring"][1], hosts.inv.groups["sockservers"][0]
    rows, healthy = [], {}
    for loss in LOSSES:
        for what, host in (("ring", ring_host), ("file", file_host)):
            if loss:
                faults.impair(hosts, host, loss=loss)
            try:
                if what == "ring":
                    laps_ms = _ring(hosts, laps)
                    figures = {"ring lap median": (statistics.median(laps_ms), "ms"),
                               "ring lap p99": (_p99(laps_ms), "ms")}
                else:
                    figures = {"file transfer": (_file(hosts, size_mb, times), "MB/s")}
            finally:
                faults.heal(hosts, host)
            for name, (value, unit) in figures.items():
                base = healthy.setdefault(name, value)
                rows.append({"bench": f"{name}, {loss}% loss on {host}", "value": value, "unit": unit,
                             "baseline_name": f"{name}, healthy", "baseline": base,
                             "ratio": value / base if base else 0.0, "target": "", "ok": None})
    return rows


def run(quick: bool = False) -> list[dict]:
    if quick:
        return []
    with cluster(CLUSTER, OCTET) as (inv, _), Hosts(inv) as hosts:
        return measure(hosts) + measure_celery(hosts)


def main() -> int:
    rows = run()
    output.table(([r["bench"], f'{r["value"]:.4g} {r["unit"]}', f'{r["baseline"]:.4g} {r["unit"]}',
                   f'{r["ratio"]:.2f}'] for r in rows), ["run", "value", "healthy", "ratio"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
