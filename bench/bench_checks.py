"""Instructor checks: `labkit.checks.run` on one 8-host cluster, and class mode over 10 student folders.

Brings up its own copy of inventory/netns (cluster `ckbn`, 10.77.65.0/24; needs root) and removes it afterwards.
Baseline, measured in the same run on the same hosts: `ansible all -m ping` (one SSH round and one Python module
per host: the least any remote check costs). Targets (issue 8): one cluster <= 8 s, a class of 10 <= 60 s.

The class here is 10 student folders that all point at this one cluster (so the bench does not bring up 80
hosts): the control side runs 10 check runs at once, 80 SSH sessions and 40 application runs, against hosts that
share this box's CPU exactly as 10 embedded clusters would; the hosts' own work is the same, only their memory
is not. quick=True runs the single-cluster figure once and skips the class.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.cluster import cluster
from labkit import REPO, checks, inventory, provision
from labkit.checks import classmode

CLUSTER, OCTET = "ckbn", 65


def _ping(inv: Path) -> float:
    start = time.monotonic()
    subprocess.run([str(Path(sys.executable).parent / "ansible"), "-i", str(inv), "all", "-m", "ansible.builtin.ping"],
                   cwd=REPO, env=provision.ansible_env(), check=True, capture_output=True)
    return time.monotonic() - start


def _row(name, value, baseline_name, baseline, target, ok):
    return {"bench": name, "value": value, "unit": "s", "baseline_name": baseline_name, "baseline": baseline,
            "ratio": value / baseline if baseline else 0.0, "target": target, "ok": ok}


def run(quick: bool = False) -> list[dict]:
    with cluster(CLUSTER, OCTET) as (inv, tmp):
        rounds = 1 if quick else 5
        one, ping = [], []
        for _ in range(rounds):  # alternate, so both see the same noise
            ping.append(_ping(inv.path))
            start = time.monotonic()
            report = checks.run(inventory.load(inv.path))
            one.append(time.monotonic() - start)
            if report["status"] != "ok":
                raise RuntimeError(f"bench cluster is not healthy: {report['counts']}")
        rows = [_row(f"check one cluster ({len(inv.hosts)} hosts, {len(report['checks'])} checks, median of "
                     f"{rounds})", statistics.median(one), "ansible all -m ping", statistics.median(ping),
                     "<= 8 s", statistics.median(one) <= 8)]
        if not quick:
            students = tmp / "class"
            for i in range(10):
                shutil.copytree(inv.path, students / f"student{i:02d}")
            start = time.monotonic()
            results = classmode.run_class(students, tmp / "out", echo=lambda *a: None)
            took = time.monotonic() - start
            ok = sum(r["status"] == "ok" for r in results.values())
            rows.append(_row(f"check a class of 10 ({ok} ok; CSV, XLSX, 10 HTML)", took,
                             "10 x ansible ping", 10 * statistics.median(ping), "<= 60 s", took <= 60))
        return rows
