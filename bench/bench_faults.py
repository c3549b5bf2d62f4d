"""Runs under packet loss: ring lap time (median, p99) with 0 %, 1 % and 5 % loss on a ring host, and file transfer
throughput with the same loss on the file server, each beside the healthy figure measured in the same run.

Brings up its own copy of inventory/netns (cluster `fl3`, 10.77.82.0/24), sets the loss with labkit.faults (the
same code as `fab impair`), heals after every row and takes the cluster down at the end; needs root. No target:
the rows show what loss costs (TCP retransmissions), not a pass or a miss. quick=True skips it (it takes minutes).

    python -m bench faults          # inside the full table
    python -m bench.bench_faults    # this table alone
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
from pathlib import Path

from labkit import REPO, STATE, faults, inventory, provision, runs
from labkit.backends import netns
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
    if os.geteuid() != 0:
        raise PermissionError("bench_faults needs root (it creates network namespaces)")
    active = (STATE / "active").read_text() if (STATE / "active").exists() else None
    with tempfile.TemporaryDirectory(prefix="labkit-bench-") as tmp:
        inv_path = inventory.relocate(REPO / "inventory" / "netns", Path(tmp) / "netns", CLUSTER, OCTET)
        inv = inventory.load(inv_path)
        try:
            netns.up(inv, echo=lambda *a: None)
            with contextlib.redirect_stdout(sys.stderr):
                provision.provision(inv_path, quiet=True)
            with Hosts(inv) as hosts:
                return measure(hosts)
        finally:
            netns.down(inv, echo=lambda *a: None)
            if active is None:
                (STATE / "active").unlink(missing_ok=True)
            else:
                (STATE / "active").write_text(active)


def main() -> int:
    rows = run()
    output.table(([r["bench"], f'{r["value"]:.4g} {r["unit"]}', f'{r["baseline"]:.4g} {r["unit"]}',
                   f'{r["ratio"]:.2f}'] for r in rows), ["run", "value", "healthy", "ratio"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
