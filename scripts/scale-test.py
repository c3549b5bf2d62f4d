"""`make scale-test`: the embedded cluster at a class's size, end to end, with the figures issue 10 asks for.

1. a hundred hosts: `fab new-inventory` (a ring of 50, 47 workers, broker, socket server, client); the hosts'
   network alone (netns.network_only), then the hosts alone up to sshd ready (netns.up, the first part of
   `fab up`), each from nothing and taken down again; then `fab up` from a clean box,
   `fab run-ring` (the message must pass 50 distinct addresses in inventory order) and `fab run-celery` (the
   jobs must reach every worker), a re-provision that changes nothing, then `fab down`;
2. a class on one server: CLUSTERS (20) clusters of 8 hosts (inventory/netns relocated, c01..c20), each brought
   up in turn, all up at once; each answers `fab demo`; memory per cluster measured while all are up (the
   box's MemAvailable drop, and the sum of the proportional set size of every process of each cluster); then
   each taken down alone, the others still answering `fab run-ring`.

Needs root and about 12 GB of free memory; takes about 15 minutes on 2 cores. Exits non-zero at the first
failure, always taking down what it brought up. Figures go to the console and to build/scale-test.json.
`LABKIT_SCALE_CLUSTERS=N` changes the class size; `--only hundred|class` runs one half.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # a script run from scripts/: labkit is the repository's package

from labkit import STATE, inventory  # noqa: E402
from labkit.backends import netns  # noqa: E402

FAB = str(REPO / ".venv" / "bin" / "fab")
CLUSTERS = int(os.environ.get("LABKIT_SCALE_CLUSTERS", "20"))
BIG = {"cluster": "h100", "subnet": "10.77.210.0/24", "ring": 50, "workers": 47}
FIGURES: dict = {}


def fab(*args: str, inv: Path, capture: bool = True) -> str:
    """Run fab as a user does, with `inv` as the inventory; fail the script on a non-zero exit."""
    env = dict(os.environ, LABKIT_INVENTORY=str(inv))
    proc = subprocess.run([FAB, *args], cwd=REPO, env=env, text=True, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE if capture else None, stderr=subprocess.STDOUT if capture else None)
    if proc.returncode != 0:
        print(proc.stdout or "")
        raise SystemExit(f"scale-test: fab {' '.join(args)} -i {inv} failed (exit {proc.returncode})")
    return proc.stdout or ""


def timed(label: str, *args: str, inv: Path, capture: bool = True) -> str:
    print(f"=== scale-test: {label}: fab {' '.join(args)}", flush=True)
    t0 = time.monotonic()
    out = fab(*args, inv=inv, capture=capture)
    FIGURES[label] = round(time.monotonic() - t0, 1)
    print(f"=== scale-test: {label}: {FIGURES[label]:.1f}s", flush=True)
    return out


def mem_available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def cluster_pss_mb(cluster: str) -> float:
    """Proportional set size of every process of `cluster` (their command line or mounts name its state)."""
    marker, total = f"/.labkit/{cluster}/", 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if marker not in cmdline and marker not in Path(entry.path, "mountinfo").read_text():
                continue
            for line in Path(entry.path, "smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def hosts_alone(inv: Path) -> None:
    """The hosts up to sshd ready beside the same hosts' network alone, each from nothing, then down again."""
    quiet = lambda *a: None  # noqa: E731
    netns.down(cluster=BIG["cluster"], echo=quiet)  # a crashed earlier run's, from another copy: by name
    t0 = time.monotonic()  # both timed around the call, the same way
    netns.network_only(inv)
    network = time.monotonic() - t0
    netns.down(inv, echo=quiet)
    t0 = time.monotonic()
    netns.up(inv)
    hosts = time.monotonic() - t0
    netns.down(inv, echo=quiet)
    FIGURES["100 hosts: network alone s (namespaces, veths, addresses; each answering TCP)"] = round(network, 2)
    FIGURES["100 hosts: up to sshd ready s"] = round(hosts, 2)
    print(f"100 hosts up to sshd ready in {hosts:.1f} s, {hosts / network:.0f}x their network alone ({network:.2f} s)")


def hundred(tmp: Path) -> None:
    inv = tmp / BIG["cluster"]
    fab("new-inventory", str(inv), "--cluster", BIG["cluster"], "--subnet", BIG["subnet"], "--ring",
        str(BIG["ring"]), "--workers", str(BIG["workers"]), inv=inv)
    loaded = inventory.load(inv)
    try:
        hosts_alone(inv)
        timed("100 hosts: fab up (hosts and provisioning)", "up", "-i", str(inv), "--quiet", inv=inv, capture=False)
        ring = json.loads(timed("100 hosts: fab run-ring", "run-ring", "--json", inv=inv))
        first_lap = [hop for hop in ring["trace"] if hop["lap"] == 1][:-1]
        addresses = [hop["address"].rsplit(":", 1)[0] for hop in first_lap]
        expected = [loaded.host(n).address for n in loaded.groups["ring"]]
        if addresses != expected or len(set(addresses)) != BIG["ring"]:
            raise SystemExit(f"scale-test: the ring's lap went {addresses}, not {expected}")
        FIGURES["100 hosts: ring lap ms (median)"] = sorted(ring["lap_ms"])[len(ring["lap_ms"]) // 2]
        print(f"ring of {BIG['ring']}: {len(set(addresses))} distinct addresses in inventory order, "
              f"gcd {ring['gcd']}, laps {ring['laps']}, lap {FIGURES['100 hosts: ring lap ms (median)']:.1f} ms")
        celery = json.loads(timed("100 hosts: fab run-celery", "run-celery", "--count", "400", "--json", inv=inv))
        reached = set().union(*(set(r["hosts"]) for r in celery["modes"].values()))
        bad = {m: (r["ok"], r["error_count"]) for m, r in celery["modes"].items() if r["ok"] != r["tasks"]}
        if reached != set(loaded.groups["workers"]) or bad:
            raise SystemExit(f"scale-test: Celery reached {len(reached)} of {BIG['workers']} workers; wrong: {bad}")
        print(f"Celery: every one of {len(reached)} workers ran jobs; "
              + ", ".join(f"{m} {r['tasks_per_s']} tasks/s" for m, r in celery["modes"].items()))
        out = timed("100 hosts: re-provision", "provision", "-i", str(inv), inv=inv)
        print(out.strip().splitlines()[-1])
        FIGURES["100 hosts: memory MB (PSS, all processes)"] = round(cluster_pss_mb(BIG["cluster"]))
    finally:
        timed("100 hosts: fab down", "down", "-i", str(inv), inv=inv)
        shutil.rmtree(STATE / BIG["cluster"], ignore_errors=True)


def klass(tmp: Path) -> None:
    names = [f"c{i:02d}" for i in range(1, CLUSTERS + 1)]
    invs = {n: inventory.relocate(REPO / "inventory" / "netns", tmp / n, n, 110 + i) for i, n in enumerate(names)}
    before = mem_available_mb()
    up: list[str] = []
    try:
        for n in names:
            timed(f"class: {n} fab up", "up", "-i", str(invs[n]), "--quiet", inv=invs[n])
            up.append(n)
        time.sleep(10)  # let start-up settle before measuring
        drop = before - mem_available_mb()
        pss = {n: round(cluster_pss_mb(n)) for n in names}
        FIGURES["class: clusters up at once"] = len(up)
        FIGURES["class: memory per cluster MB (MemAvailable drop / clusters)"] = round(drop / len(names))
        FIGURES["class: memory per cluster MB (PSS, median)"] = sorted(pss.values())[len(pss) // 2]
        print(f"{len(names)} clusters up: MemAvailable fell by {drop:.0f} MB ({drop / len(names):.0f} MB a "
              f"cluster); PSS per cluster {min(pss.values())}-{max(pss.values())} MB")
        for n in names:
            timed(f"class: {n} fab demo", "demo", inv=invs[n])
        for i, n in enumerate(names):
            timed(f"class: {n} fab down", "down", "-i", str(invs[n]), inv=invs[n])
            up.remove(n)
            for other in up[:1] + up[-1:]:  # the others did not notice
                fab("run-ring", inv=invs[other])
    finally:
        for n in up:
            fab("down", "-i", str(invs[n]), inv=invs[n])
        for n in names:
            shutil.rmtree(STATE / n, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["hundred", "class"], help="run one half")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("scale-test: needs root (it creates network namespaces)")
    active = (STATE / "active").read_text() if (STATE / "active").exists() else None
    try:
        with tempfile.TemporaryDirectory(prefix="labkit-scale-") as tmp:
            if args.only in (None, "hundred"):
                hundred(Path(tmp))
            if args.only in (None, "class"):
                klass(Path(tmp))
    finally:
        if active is None:
            (STATE / "active").unlink(missing_ok=True)
        else:
            (STATE / "active").write_text(active)
        (REPO / "build").mkdir(exist_ok=True)
        (REPO / "build" / "scale-test.json").write_text(json.dumps(FIGURES, indent=2) + "\n")
    print("\n=== scale-test: figures\n" + "\n".join(f"{k}: {v}" for k, v in FIGURES.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
