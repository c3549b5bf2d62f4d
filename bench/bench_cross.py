"""Benchmarks across a real cluster: each figure beside a baseline measured in the same run between the same hosts.

Brings up its own copy of inventory/netns (cluster `xb`, 10.77.83.0/24) with two more workers (worker3, worker4:
ten hosts), provisions it with the real playbooks and always takes it down at the end; needs root; quick=True
skips it (it takes several minutes). Every client side runs on a cluster host over SSH (labkit.remote.Hosts), as
the fab tasks do, so traffic crosses the cluster's veth pairs and bridge. What runs on the hosts is
bench/cross_remote.py, shipped as source and run with the host's labnodes venv python.

Rows (lower is better for times, higher for rates):
- ring lap (median, p99; as the start node times them: pyro1 -> pyro2 -> pyro3 -> pyro1, nested), from sends of
  RING_NUMBERS that take RING_LAPS laps, against the same nested chain over the same links with nothing but the
  transport: (a) raw TCP, a 512-byte line relayed pyro1 -> pyro2 -> pyro3 -> pyro1 and back, (b) Pyro4's floor,
  an empty hop() relayed the same way by Pyro4 daemons with the ring's settings (thread pool, json, HMAC), (c) the
  same hops carrying a ring message and its receipt. All timed on pyro1, where the lap is timed, the ring and the
  chains in interleaved blocks. Target: the median of the laps that run back to back (a send's 2nd and 3rd),
  as the floor's calls do, <= 1.2 x Pyro4's floor. A send's first lap comes after the ring hosts idled while the
  client looked up the start node and connected; an idle host answers later (on this VM a 2 ms idle adds about
  0.1 ms to the floor's calls, 10 ms idle triples them), so the first lap has its own row, against the floor's
  empty calls made after idling as long. (c) splits the rest: what moving the ring's message costs Pyro4 itself,
  and what labnodes's own code adds. Also: the send as the client host sees it (name-server lookup, connect,
  laps), and laps with the ring nodes at log level WARNING (their settings file edited and the nodes restarted,
  on this throwaway cluster only): what the one INFO line per hop costs.
- file transfer, client host <-> sockserver host, FILE_MB MB: `labnodes file send` and `labnodes file get` (the
  MB/s their JSON reports, and the wall time of the whole command), in two phases of FILE_RUNS runs each, medians,
  each phase after one run to warm up that is not counted (each transfer row keeps it in the JSON as `warmup`: on
  this VM the first copies into memory or onto disk not used lately are the slowest).
  (1) Files in memory: the file server's root (sockserver) and the client's files on tmpfs, the file server
  restarted onto it (on this throwaway cluster only). Against the two-core ceiling of a copy that both ends hash,
  computed as bench_sockets does (its docstring has the formula and why) from figures measured in the same run
  between the same hosts: a raw copy each way (sendfile() to a plain reader that writes and fsyncs, the
  destination on the same tmpfs, timed as labnodes times a transfer, with the CPU seconds of both ends) and one
  sha256 pass on the client host. Targets: both directions >= 0.9 x the ceiling, get >= 0.9 x send. The ceiling
  is a CPU ceiling, so it is measured where the disk is not in the way: this VM's disk writes blocks not written
  lately several times slower than blocks just freed, so on disk the raw copy and a transfer land on blocks of
  different speeds and their ratio is the disk's luck. The hosts share this machine's cores, so the two-core
  ceiling is the right one here; between two machines each end has cores of its own.
  (2) Files on disk, as users run it (the file server's root as provisioned): against the same raw copy on disk
  (no target), scp between the same hosts (a throwaway key made on the client host, authorized on the sockserver
  for the run only; target: both directions >= 1.5 x scp) and iperf3 (memory to memory, TCP's ceiling).
- math server, requests/s and p99 latency with 1, 100 and 1000 concurrent clients on the client host (closed
  loop: each client sends `48,18` and waits for its answer), against the same load generator and a trivial
  asyncio echo-line server on the sockserver host. Target: >= 30,000 req/s at 1000 clients. A closed loop
  cannot show a latency target at a rate: its 1000 clients each have a request waiting all the time, so the
  mean latency is 1000 / (req/s) by Little's law (33 ms at 30,000 req/s), whatever the server does. So the
  p99 target is measured open loop, as latency targets are: 1000 clients offering PACED_RATE req/s in all on a
  schedule, each request timed from when it was due (a queue in the server shows; nothing waits for it).
  Target: p99 <= 10 ms with every request answered. Also the 1000 clients again with the server at log level
  WARNING (as for the ring): what its one INFO line per request costs.
- Celery tasks/s by mode (one-by-one, group, chunks of 100) with 4, 2 and 1 workers running (the others
  stopped with supervisorctl; counts measured 4, 2, 1, 1, 2, 4 and each count's two runs averaged), submitted
  from the client host with `labnodes celery batch`, against Redis PING round trips/s from the client host to
  the broker. No target.

    python -m bench cross           # inside the full table
    python -m bench.bench_cross     # this table alone
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shlex
import statistics
import sys
import time
import traceback
from pathlib import Path

from bench import report
from bench.bench_sockets import two_core_ceiling
from bench.cluster import cluster
from bench.cross_remote import RING_LAPS, RING_NUMBERS
from labkit.remote import SETTINGS_FILE, Hosts, RemoteError
from labnodes import output

CLUSTER, OCTET = "xb", 83
WORKERS = 4  # the inventory's two workers and two more
LAPS, BLOCKS = 200, 4
FILE_MB, FILE_RUNS = 256, 5  # five: on this VM a transfer can take 2-3x as long when its file lands on cold blocks
CLIENTS = (1, 100, 1000)
REQUESTS = {1: 5000, 100: 100, 1000: 20}  # per client: 5000, 10000 and 20000 requests in all
MATH_ROUNDS = 3
PACED_RATE, PACED_SECONDS = 30000, 5.0  # the open-loop load at 1000 clients: requests a second, for how long
CELERY_WORKERS = (4, 2, 1)  # in this order: each step only stops workers
CELERY_COUNT = {"one": 500, "group": 2000, "chunks": 5000}
PINGS = 5000

REMOTE = (Path(__file__).parent / "cross_remote.py").read_text()
WORK = "/tmp/labkit-xbench"  # on each host (its own /tmp)
GUARD = 3600  # seconds: a helper server ends by itself after this, whatever happens to the benchmark
CLIENT_GUARD = 600  # seconds: a client action that takes longer is killed (a hang guard, not a limit)
RAW_PORT, PYRO_PORT, ECHO_PORT, IPERF_PORT, RAW_FILE_PORT, RAW_MEM_PORT = 5301, 5302, 5303, 5304, 5305, 5306
OUTBOX, INBOX = "/var/lib/labnodes/outbox", "/var/lib/labnodes/inbox"
SCP_DIR = "/var/lib/labnodes/xbench-scp"  # beside the file server's root: the same file system
MEM = "/var/lib/labnodes/xbench-mem"  # on the client: a tmpfs for the files of the memory phase
FILE_PROGRAM = "labnodes-file"  # the socket_servers role's file server
WORKER_PROGRAM = "labnodes-celery-worker"
RING_PROGRAM = "labnodes-ring"  # the pyro_ring role's supervisord program
MATH_PROGRAM = "labnodes-math"  # the socket_servers role's
MATH_ANSWER = "OK gcd=6 lcm=144"  # the math server's answer to `48,18`


# --- pure helpers (tests/unit/test_bench_cross.py) ---------------------------------------------------------

def percentile(values, q: float) -> float:
    """The q-quantile (0 < q <= 1) by nearest rank: the smallest value with at least q of all at or below it."""
    xs = sorted(values)
    if not xs:
        raise ValueError("percentile of no values")
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


def row(bench: str, value: float, unit: str, baseline_name: str, baseline: float,
        target: tuple[str, str, float] | None = None, **extra) -> dict:
    """One table row; target is (what, op, limit): what is "ratio" or "value", op is "<=" or ">=".

    ok is None without a target; extra keys (samples, series) go into the row as they are."""
    ratio = value / baseline if baseline else 0.0
    ok, text = None, ""
    if target is not None:
        what, op, limit = target
        if what not in ("ratio", "value") or op not in ("<=", ">="):
            raise ValueError(f"bad target {target!r}")
        got = ratio if what == "ratio" else value
        ok = got <= limit if op == "<=" else got >= limit
        text = f"ratio {op} {limit:g}" if what == "ratio" else f"{op} {limit:g} {unit}"
    return {"bench": bench, "value": value, "unit": unit, "baseline_name": baseline_name, "baseline": baseline,
            "ratio": ratio, "target": text, "ok": ok, **extra}


def add_workers(hosts_yml: str, total: int) -> str:
    """hosts.yml text with workers added after the last `workerN: {ansible_host: A.B.C.D}` line until there are
    `total`, each at the next address (checked free in the file)."""
    pattern = re.compile(r"^( +)worker(\d+): \{ansible_host: (\d+\.\d+\.\d+)\.(\d+)\}$", re.M)
    found = list(pattern.finditer(hosts_yml))
    if not found:
        raise ValueError("no `workerN: {ansible_host: ...}` line in the inventory")
    last = found[-1]
    indent, number, net, octet = last.group(1), int(last.group(2)), last.group(3), int(last.group(4))
    lines = []
    for i in range(total - len(found)):
        address = f"{net}.{octet + 1 + i}"
        if re.search(rf"\b{re.escape(address)}\b", hosts_yml):
            raise ValueError(f"address {address} for a new worker is taken")
        lines.append(f"\n{indent}worker{number + 1 + i}: {{ansible_host: {address}}}")
    return hosts_yml[:last.end()] + "".join(lines) + hosts_yml[last.end():]


def iperf3_mb_per_s(report: dict) -> float:
    """MB/s (10**6 bytes, as labnodes counts) received in an `iperf3 -J` report."""
    return report["end"]["sum_received"]["bits_per_second"] / 8 / 1e6


def median_by(runs: list[dict], key: str) -> dict:
    """The run whose `key` is the median (the lower middle one of an even count)."""
    ordered = sorted(runs, key=lambda r: r[key])
    return ordered[(len(ordered) - 1) // 2]


# --- running things on hosts -------------------------------------------------------------------------------

def _say(text: str) -> None:
    print(f"bench_cross: {text}", file=sys.stderr, flush=True)


def _python(hosts: Hosts, name: str, *args) -> str:
    """The command that runs cross_remote.py ACTION ARGS with the host's labnodes venv python."""
    return " ".join([hosts.labnodes_bin(name, "python"), "-c", shlex.quote(REMOTE), *map(shlex.quote, map(str, args))])


def _remote(hosts: Hosts, name: str, *args) -> dict:
    """Run a cross_remote.py client action on a host; its last line of output, as JSON."""
    out = hosts.run(name, f"timeout {CLIENT_GUARD} {_python(hosts, name, *args)}").stdout.strip().splitlines()
    return json.loads(out[-1])


def _timed(hosts: Hosts, name: str, command: str) -> tuple[float, str]:
    """Seconds a command takes on a host, timed on that host (not over SSH), and its stdout."""
    marker = "XBENCH-NS"
    out = hosts.run(name, f"t0=$(date +%s%N) && {command} && echo {marker} $(( $(date +%s%N) - t0 ))").stdout
    body, _, tail = out.rpartition(marker)
    return int(tail.split()[0]) / 1e9, body


class Helpers:
    """Servers started detached on hosts for the benchmark (setsid, stdio to a log file, `timeout GUARD`);
    close() kills every one it started, by pid."""

    def __init__(self, hosts: Hosts):
        self.hosts = hosts
        self.started: list[tuple[str, int]] = []

    def start(self, name: str, tag: str, *args, wait: float = 60.0) -> int:
        log = f"{WORK}/{tag}.log"
        self.hosts.run(name, f"mkdir -p {WORK} && cd {WORK} && setsid -f timeout {GUARD} "
                             f"{_python(self.hosts, name, *args)} >{log} 2>&1 </dev/null")
        deadline = time.monotonic() + wait
        while True:
            text = self.hosts.run(name, f"cat {log}", check=False).stdout
            for line in text.splitlines():
                if line.startswith('{"ready"'):
                    pid = json.loads(line)["ready"]
                    self.started.append((name, pid))
                    return pid
            if "Traceback" in text or time.monotonic() > deadline:
                tail = text.strip().splitlines()[-1:] or ["no output"]
                raise RuntimeError(f"{name}: helper {tag} did not start: {tail[0]}")
            time.sleep(0.2)

    def close(self) -> None:
        for name, pid in reversed(self.started):
            with contextlib.suppress(Exception):
                self.hosts.run(name, f"kill {pid}", check=False)
        self.started.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _first(hosts: Hosts, group: str) -> str:
    return hosts.inv.groups[group][0]


# --- 1. the ring -------------------------------------------------------------------------------------------

def _laps(hosts: Hosts, client: str, ring: list[str], laps: int, blocks: int) -> dict[str, list[float]]:
    """Ring sends from the client, and the nested chains from the start node, in interleaved blocks. Each send
    makes RING_LAPS laps; `laps` counts the laps after the first (back to back), as many as the chain's rounds.
    The chain's paced calls idle as long as the ring hosts idle before a send's first lap (measured first)."""
    start, got = ring[0], {}
    sends = max(1, laps // blocks // (RING_LAPS - 1))
    warm = _remote(hosts, client, "ring-laps", 10, start)  # also warms the links between the ring nodes
    gap = round(statistics.median(warm["idle_ms"]), 1)
    for block in range(blocks):
        _say(f"ring block {block + 1}/{blocks}")
        for name, args in ((client, ("ring-laps", sends, start)),
                           (start, ("chain", laps // blocks, hosts.address(ring[1]), RAW_PORT, PYRO_PORT, gap))):
            for key, values in _remote(hosts, name, *args).items():
                got.setdefault(key, []).extend(values)
    got["gap_ms"] = [gap]
    return got


def _log_level(hosts: Hosts, names: list[str], program: str, level: str | None, answers) -> None:
    """Restart `program` on each host with `log_level = level` in its settings file (None: the file as
    provisioned), then wait until `answers()` runs without a RemoteError (a restarted ring node registers, a
    server listens). Only on the benchmark's own throwaway cluster: it is how the run shows what logging costs."""
    for name in names:
        line = f"log_level = \"{level}\"  # bench_cross, for one measurement"
        edit = f"sed -i '/# bench_cross, for one measurement$/d' {SETTINGS_FILE}"
        if level:
            edit += f" && sed -i {shlex.quote('1i ' + line)} {SETTINGS_FILE}"
        hosts.run(name, f"{edit} && supervisorctl restart {program}")
    deadline = time.monotonic() + 30
    while True:
        try:
            return answers()
        except RemoteError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def measure_ring(hosts: Hosts, laps: int = LAPS, blocks: int = BLOCKS) -> list[dict]:
    client, ring = _first(hosts, "clients"), list(hosts.inv.groups["ring"])
    start = ring[0]
    with Helpers(hosts) as helpers:
        # the chain start -> ring[1] -> ... -> ring[-1] -> start: the start's hop ends it, the others pass on
        for i, name in enumerate(ring):
            nxt = hosts.address(ring[(i + 1) % len(ring)]) if i else ""
            helpers.start(name, "hop", "hop", hosts.address(name), RAW_PORT, PYRO_PORT, nxt)
        got = _laps(hosts, client, ring, laps, blocks)
        # the same again with the nodes' one INFO line per hop turned off: what logging through supervisord's
        # pipe costs (each line wakes the host's supervisord, which competes for the same two cores)
        def answers():
            _remote(hosts, client, "ring-laps", 1, start)

        _log_level(hosts, ring, RING_PROGRAM, "WARNING", answers)
        try:
            quiet = _laps(hosts, client, ring, laps // 2, blocks // 2)
        finally:
            _log_level(hosts, ring, RING_PROGRAM, None, answers)
    lap_ms, first_ms, floor_ms, message_ms = got["lap_ms"], got["first_ms"], got["pyro_ms"], got["message_ms"]
    hops = f"{len(ring)} nested hops {' -> '.join(ring + [start])}"
    lap, floor, raw = statistics.median(lap_ms), statistics.median(floor_ms), statistics.median(got["raw_ms"])
    floor_name = f"Pyro4 floor: {len(ring)} nested empty calls back to back, same links, median"
    carried = "Pyro4 floor carrying the ring's message (one trace record) and its receipt, median"
    return [
        row(f"ring lap median, laps back to back ({hops}; laps 2-{RING_LAPS} of each send, {len(lap_ms)} laps)",
            lap, "ms", floor_name, floor, ("ratio", "<=", 1.2), samples=lap_ms),
        row("ring lap p99, laps back to back", percentile(lap_ms, 0.99), "ms", floor_name.replace("median", "p99"),
            percentile(floor_ms, 0.99)),
        row("ring lap median against Pyro4 carrying the same message: what labnodes adds per lap", lap, "ms",
            carried, statistics.median(message_ms)),
        row("Pyro4 carrying the ring's message against empty calls: what moving the message costs in Pyro4",
            statistics.median(message_ms), "ms", floor_name, floor, samples=message_ms),
        row(f"ring lap median, a send's first lap (after the ring hosts idled {got['gap_ms'][0]:g} ms, median, "
            f"while the client looked up and connected; {len(first_ms)} laps)", statistics.median(first_ms), "ms",
            f"Pyro4 floor, each empty call after idling {got['gap_ms'][0]:g} ms, median",
            statistics.median(got["paced_ms"]), samples=first_ms),
        row(f"ring lap median, laps back to back, nodes at log level WARNING (no line per hop; "
            f"{len(quiet['lap_ms'])} laps)", statistics.median(quiet["lap_ms"]), "ms",
            floor_name + " (measured beside it)", statistics.median(quiet["pyro_ms"]), samples=quiet["lap_ms"]),
        row("ring lap median against raw TCP", lap, "ms",
            f"raw TCP: a 512-byte line relayed the same {len(ring)} hops, median", raw),
        row("Pyro4 floor median against raw TCP", floor, "ms", "raw TCP, the same hops, median", raw,
            samples=floor_ms),
        row(f"ring send of {RING_NUMBERS} ({RING_LAPS} laps) as {client} sees it (name server lookup, connect, "
            f"laps), median", statistics.median(got["send_ms"]), "ms", floor_name, floor),
    ]


# --- 2. file transfer --------------------------------------------------------------------------------------

def _sha256(hosts: Hosts, name: str, path: str) -> str:
    return hosts.run(name, f"sha256sum {shlex.quote(path)}").stdout.split()[0]


def _iperf3(hosts: Hosts, client: str, server: str, reverse: bool, seconds: int = 3) -> float:
    address = hosts.address(server)
    deadline = time.monotonic() + 15
    while hosts.run(server, f"ss -ltnH 'sport = :{IPERF_PORT}'").stdout.strip():  # the last one-off server
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server}: port {IPERF_PORT} stays taken")
        time.sleep(0.2)
    hosts.run(server, f"iperf3 -s -1 -D -B {address} -p {IPERF_PORT}")
    deadline = time.monotonic() + 15
    while True:  # -D returns before the server listens
        got = hosts.run(client, f"iperf3 -c {address} -p {IPERF_PORT} -t {seconds} -J {'-R' if reverse else ''}",
                        check=False)
        if got.exited == 0:
            return iperf3_mb_per_s(json.loads(got.stdout))
        if time.monotonic() > deadline:
            raise RuntimeError(f"iperf3 from {client} to {server} failed: {got.stdout.strip()[-200:]}")
        time.sleep(0.3)


@contextlib.contextmanager
def _scp_key(hosts: Hosts, client: str, server: str):
    """A throwaway key made on the client host, authorized for root on the server for the block only; yields
    the scp options that use it (and the server's host key, read from the server: nothing is trusted blindly)."""
    key, known = f"{WORK}/scp_key", f"{WORK}/known_hosts"
    hosts.run(client, f"mkdir -p {WORK} && rm -f {key} {key}.pub && "
                      f"ssh-keygen -q -t ed25519 -N '' -C labkit-xbench -f {key}")
    pub = hosts.run(client, f"cat {key}.pub").stdout.strip()
    host_key = " ".join(hosts.run(server, "cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[:2])
    hosts.run(client, f"echo {shlex.quote(hosts.address(server) + ' ' + host_key)} > {known}")
    auth = "/root/.ssh/authorized_keys"
    hosts.run(server, f"echo {shlex.quote(pub)} >> {auth}")
    try:
        yield (f"-i {key} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes "
               f"-o UserKnownHostsFile={known}")
    finally:
        hosts.run(server, f"grep -vxF {shlex.quote(pub)} {auth} > {auth}.xbench; cat {auth}.xbench > {auth}; "
                          f"rm -f {auth}.xbench", check=False)
        left = hosts.run(server, f"grep -cxF {shlex.quote(pub)} {auth}", check=False).stdout.strip()
        hosts.run(client, f"rm -f {key} {key}.pub {known}", check=False)
        if left not in ("", "0"):
            raise RuntimeError(f"{server}: the throwaway scp key is still in {auth}")


@contextlib.contextmanager
def _in_memory(hosts: Hosts, client: str, server: str, root: str, size_mb: int):
    """The file server's root (on the server) and MEM (on the client) on tmpfs, the file server restarted onto
    its new root; at the end, both unmounted and the server restarted onto its disk again. Only on the
    benchmark's own throwaway cluster, as for the log levels."""
    size = f"{4 * size_mb + 64}m"  # the source, a raw copy, a temporary file and a spare
    mode, owner = hosts.run(server, f"stat -c '%a %U:%G' {root}").stdout.split()
    port = hosts.setting(server, "file_port")
    try:  # the finally also undoes a mount whose chown or restart failed
        hosts.run(server, f"mount -t tmpfs -o size={size},mode={mode} xbench {root} && chown {owner} {root} "
                          f"&& supervisorctl restart {FILE_PROGRAM}")
        try:
            hosts.run(client, f"mkdir -p {MEM} && mount -t tmpfs -o size={size} xbench {MEM} && mkdir {MEM}/out")
            hosts.run(client, f"for i in $(seq 100); do (: </dev/tcp/{hosts.address(server)}/{port}) 2>/dev/null "
                              f"&& exit 0; sleep 0.1; done; exit 1")  # the file server listens again
            yield
        finally:
            hosts.run(client, f"umount {MEM} && rmdir {MEM}", check=False)
    finally:
        # stopped first: the server holds its root open, and umount refuses a busy mount
        hosts.run(server, f"supervisorctl stop {FILE_PROGRAM}; umount {root}; supervisorctl start {FILE_PROGRAM}",
                  check=False)


def measure_files(hosts: Hosts, size_mb: int = FILE_MB, runs: int = FILE_RUNS) -> list[dict]:
    client, server = _first(hosts, "clients"), _first(hosts, "sockservers")
    address, client_address = hosts.address(server), hosts.address(client)
    name = f"labkit-xbench-{size_mb}M.bin"
    root = hosts.setting(server, "file_root")
    src, back, stored = f"{OUTBOX}/{name}", f"{INBOX}/{name}", f"{root}/{name}"
    scp_there, scp_back = f"{SCP_DIR}/{name}", f"{SCP_DIR}/{name}"
    raw = f"{SCP_DIR}/raw-{name}"  # the raw copy's destination on either host, beside the file server's root
    mem_src, mem_back, mem_raw = f"{MEM}/{name}", f"{MEM}/out/{name}", f"{MEM}/raw-{name}"
    mem_raw_there = f"{root}/xbench-raw-{name}"  # in the memory phase the server's root is a tmpfs
    labnodes = hosts.labnodes_bin(client)
    size = size_mb * 10**6
    figures: dict[str, list[float]] = {}
    hosts.run(client, f"mkdir -p {OUTBOX} {INBOX} {SCP_DIR} && head -c {size} /dev/urandom > {src}")
    hosts.run(server, f"mkdir -p {SCP_DIR}")
    digest = _sha256(hosts, client, src)
    hash_cpu = _remote(hosts, client, "sha256-cpu", size)["cpu"]

    warming = False  # a phase's first run is not counted (below)

    def add(key: str, value: float) -> None:
        figures.setdefault(("warmup_" if warming else "") + key, []).append(value)

    def settle() -> None:
        """Each transfer starts with no dirty pages: labnodes' receiver fsyncs, and no run should also pay for
        the write-back of an earlier one (or of scp's copy, which scp does not fsync)."""
        for name_ in (client, server):
            hosts.run(name_, "sync")

    def fresh(host: str, path: str) -> None:
        """Every copy lands as a new file, as a GET's and scp's do: replacing a 256 MB file (freeing its
        blocks) made a PUT up to half as fast."""
        hosts.run(host, f"rm -f {path}")
        settle()

    def raw_copy(sender: str, path: str, to: str, port: int, key: str) -> None:
        """The raw copy under the ceiling: sendfile() to a plain reader that writes and fsyncs (cross_remote)."""
        got = _remote(hosts, sender, "raw-send", to, port, path)
        add(key, got["seconds"])
        add(key + "_cpu", got["cpu"])
        add(key + "_fsync", got["fsync"])

    def labnodes_copy(key: str, host: str, path: str, command: str) -> None:
        """`labnodes file ...` into a new file at host:path; the MB/s its JSON reports and its wall time."""
        fresh(host, path)
        seconds, out = _timed(hosts, client, f"{labnodes} file {command} --json")
        result = json.loads(out)
        add(key, float(result["mb_per_s"]))
        add(key + "_wall", size / 1e6 / seconds)
        if result["sha256"] != digest:
            raise RuntimeError(f"labnodes file {command}: sha256 differs from the original's")

    def copies(phase: str, src_: str, back_: str, raws: tuple[str, str], port: int) -> None:
        """One run of a phase: a raw copy up, `labnodes file send`, a raw copy down, `labnodes file get`."""
        fresh(server, raws[0])
        raw_copy(client, src_, address, port, f"{phase}_raw_up")
        labnodes_copy(f"{phase}_send", server, stored, f"send {src_}")
        fresh(client, raws[1])
        raw_copy(server, stored, client_address, port, f"{phase}_raw_down")
        labnodes_copy(f"{phase}_get", client, back_, f"get {name} --out {back_.rsplit('/', 1)[0]}")

    def phase(helpers: Helpers, key: str, where: str, src_: str, back_: str, raws: tuple[str, str], port: int,
              also=lambda: None) -> None:
        """Phase `key` ("disk", "mem"): its raw readers (the server's raw copy lands at raws[0], the client's at
        raws[1]), then one run to warm up and `runs` runs, each `copies` and `also`."""
        nonlocal warming
        helpers.start(server, f"raw-read-{key}", "raw-read", address, port, raws[0])
        helpers.start(client, f"raw-read-{key}", "raw-read", client_address, port, raws[1])
        for i in range(runs + 1):
            _say(f"file run {i}/{runs}, {where}" if i else f"file runs {where}: one to warm up, not counted")
            warming = i == 0
            copies(key, src_, back_, raws, port)
            also()

    def scp_and_iperf3() -> None:
        fresh(server, scp_there)
        seconds, _ = _timed(hosts, client, f"scp -q {scp} {src} root@{address}:{scp_there}")
        add("scp_up", size / 1e6 / seconds)
        fresh(client, scp_back)
        seconds, _ = _timed(hosts, client, f"scp -q {scp} root@{address}:{scp_there} {scp_back}")
        add("scp_down", size / 1e6 / seconds)
        add("iperf_up", _iperf3(hosts, client, server, reverse=False))
        add("iperf_down", _iperf3(hosts, client, server, reverse=True))

    try:
        with _scp_key(hosts, client, server) as scp, Helpers(hosts) as helpers:
            phase(helpers, "disk", "on disk", src, back, (raw, raw), RAW_FILE_PORT, also=scp_and_iperf3)
            sums = {_sha256(hosts, client, back), _sha256(hosts, server, stored), _sha256(hosts, client, scp_back),
                    _sha256(hosts, server, scp_there), _sha256(hosts, server, raw), _sha256(hosts, client, raw)}
            with _in_memory(hosts, client, server, root, size_mb):
                hosts.run(client, f"cp {src} {mem_src}")
                hashed = _remote(hosts, client, "sha256-file-cpu", mem_src)
                file_hash_cpu = hashed["cpu"]
                phase(helpers, "mem", "in memory", mem_src, mem_back, (mem_raw_there, mem_raw), RAW_MEM_PORT)
                sums |= {hashed["sha256"], _sha256(hosts, client, mem_back), _sha256(hosts, server, stored),
                         _sha256(hosts, server, mem_raw_there), _sha256(hosts, client, mem_raw)}
        if sums != {digest}:
            raise RuntimeError("a copy's sha256 differs from the original's")
    finally:
        hosts.run(client, f"rm -rf {src} {back} {SCP_DIR}", check=False)
        hosts.run(server, f"rm -rf {stored} {SCP_DIR}", check=False)
    return file_rows(figures, hash_cpu, file_hash_cpu, size_mb, runs, client, server)


def file_rows(figures: dict[str, list[float]], hash_cpu: float, file_hash_cpu: float, size_mb: int, runs: int,
              client: str, server: str) -> list[dict]:
    """measure_files' rows from each run's figures: medians, the ceilings, the targets. hash_cpu: one sha256 pass
    over bytes in memory; file_hash_cpu: over the file as a program reads it (for the rows that count the
    sender's read)."""
    m = {k: statistics.median(v) for k, v in figures.items() if not k.startswith("warmup_")}
    mb = float(size_mb)  # MB of 10**6 bytes, as FILE_MB counts them
    up, down = (two_core_ceiling(mb, m[f"mem_{k}"], m[f"mem_{k}_cpu"], hash_cpu) for k in ("raw_up", "raw_down"))
    read_up, read_down = (two_core_ceiling(mb, m[f"mem_{k}"], m[f"mem_{k}_cpu"], hash_cpu, file_hash_cpu)
                          for k in ("raw_up", "raw_down"))
    what = f"{size_mb} MB, {client} <-> {server}, median of {runs}"
    raw_name = "raw sendfile copy (write + fsync)"
    counted = "ceiling also counting the sender's read of the file for its hash"
    return [
        row(f"file send, files in memory ({what}) against the two-core ceiling", m["mem_send"], "MB/s",
            f"ceiling of a copy both ends hash, {client} -> {server}, computed", up, ("ratio", ">=", 0.9),
            runs=figures["mem_send"], warmup=figures.get("warmup_mem_send", [])),
        row("file get, files in memory, against the two-core ceiling", m["mem_get"], "MB/s",
            f"ceiling, {server} -> {client}, computed", down, ("ratio", ">=", 0.9), runs=figures["mem_get"],
            warmup=figures.get("warmup_mem_get", [])),
        row("file get against file send, files in memory", m["mem_get"], "MB/s", "file send", m["mem_send"],
            ("ratio", ">=", 0.9)),
        row("two-core ceiling, files in memory, computed (the formula: bench_sockets)", up, "MB/s",
            f"{raw_name} {client} -> {server}, in memory", mb / m["mem_raw_up"]),
        row(f"sha256, one core ({hash_cpu:.2f} CPU s for {size_mb} MB)", mb / hash_cpu, "MB/s",
            f"{raw_name} {client} -> {server}, in memory", mb / m["mem_raw_up"]),
        row(f"sha256 of the file as a program reads it (read + hash), one core ({file_hash_cpu:.2f} CPU s)",
            mb / file_hash_cpu, "MB/s", "sha256 of bytes in memory, one core", mb / hash_cpu),
        row("file send, files in memory, against the ceiling that counts the sender's read", m["mem_send"], "MB/s",
            f"{counted}, {client} -> {server}", read_up),
        row("file get, files in memory, against the ceiling that counts the sender's read", m["mem_get"], "MB/s",
            f"{counted}, {server} -> {client}", read_down),
        row(f"{raw_name} in memory, CPU s per wall s, both ends", m["mem_raw_up_cpu"] / m["mem_raw_up"], "cores",
            "cores here", float(os.cpu_count() or 1)),
        row("file send, files on disk (MB/s its JSON reports)", m["disk_send"], "MB/s",
            f"{raw_name} on disk, {client} -> {server}", mb / m["disk_raw_up"], runs=figures["disk_send"],
            warmup=figures.get("warmup_disk_send", [])),
        row("file get, files on disk", m["disk_get"], "MB/s", f"{raw_name} on disk, {server} -> {client}",
            mb / m["disk_raw_down"], runs=figures["disk_get"], warmup=figures.get("warmup_disk_get", [])),
        row("file get against file send, files on disk", m["disk_get"], "MB/s", "file send", m["disk_send"]),
        row(f"{raw_name} on disk: its fsync at the end, s", m["disk_raw_up_fsync"], "s",
            f"{raw_name}, all of it, s", m["disk_raw_up"]),
        row("file send on disk (JSON MB/s)", m["disk_send"], "MB/s", "scp upload, the same hosts (wall)",
            m["scp_up"], ("ratio", ">=", 1.5)),
        row("file get on disk (JSON MB/s)", m["disk_get"], "MB/s", "scp download (wall)", m["scp_down"],
            ("ratio", ">=", 1.5)),
        row("file send on disk, wall time of the command", m["disk_send_wall"], "MB/s", "scp upload (wall)",
            m["scp_up"]),
        row("file get on disk, wall time of the command", m["disk_get_wall"], "MB/s", "scp download (wall)",
            m["scp_down"]),
        row("file send on disk (JSON MB/s) against TCP's ceiling", m["disk_send"], "MB/s",
            f"iperf3 {client} -> {server}, memory to memory", m["iperf_up"]),
        row("file get on disk (JSON MB/s) against TCP's ceiling", m["disk_get"], "MB/s",
            f"iperf3 -R {server} -> {client}", m["iperf_down"]),
    ]


# --- 3. the math server ------------------------------------------------------------------------------------

def measure_math(hosts: Hosts, clients=CLIENTS, rounds: int = MATH_ROUNDS) -> list[dict]:
    client, server = _first(hosts, "clients"), _first(hosts, "sockservers")
    address, port = hosts.address(server), hosts.setting(server, "math_port")
    best: dict[tuple[str, int], dict] = {}

    def load(to_port: int, n: int, expect: str, requests: int | None = None) -> dict:
        """n clients on the client host, each sending `48,18` and checking the answer; with req/s and p99."""
        got = _remote(hosts, client, "load", address, to_port, n, requests or REQUESTS.get(n, 20), "48,18", expect)
        if got["wrong"]:
            raise RuntimeError(f"port {to_port} with {n} clients: {got['wrong']} wrong answers")
        return got | {"req_per_s": got["requests"] / got["seconds"], "p99_ms": percentile(got["latency_ms"], 0.99)}

    with Helpers(hosts) as helpers:
        helpers.start(server, "echo", "echo-line", address, ECHO_PORT)
        for n in clients:
            runs: dict[str, list[dict]] = {"math": [], "echo": []}
            for r in range(rounds):
                _say(f"math with {n} clients, round {r + 1}/{rounds}")
                runs["math"].append(load(port, n, MATH_ANSWER))
                runs["echo"].append(load(ECHO_PORT, n, "48,18"))
            for which in runs:
                best[which, n] = median_by(runs[which], "req_per_s")
        n = clients[-1]

        def paced(to_port: int, expect: str) -> dict:
            """PACED_RATE req/s from the largest count of clients on a schedule (open loop); p99 from when due."""
            got = _remote(hosts, client, "paced", address, to_port, n, PACED_RATE, PACED_SECONDS, "48,18", expect)
            if got["wrong"] or got["requests"] != got["sent"]:
                raise RuntimeError(f"port {to_port}, paced: {got['wrong']} wrong answers, "
                                   f"{got['sent'] - got['requests']} of {got['sent']} unanswered")
            return got | {"p99_ms": percentile(got["latency_ms"], 0.99)}

        runs = {"math": [], "echo": []}
        for r in range(rounds):
            _say(f"math with {n} clients offering {PACED_RATE} req/s, round {r + 1}/{rounds}")
            runs["math"].append(paced(port, MATH_ANSWER))
            runs["echo"].append(paced(ECHO_PORT, "48,18"))
        best["paced", n], best["paced echo", n] = (median_by(runs[w], "p99_ms") for w in ("math", "echo"))

        # the largest closed-loop load again with the server's INFO line per request (and connection) turned off
        def answers():
            load(port, 1, MATH_ANSWER, requests=1)

        _log_level(hosts, [server], MATH_PROGRAM, "WARNING", answers)
        try:
            quiet = []
            for r in range(rounds):
                _say(f"math with {n} clients, log level WARNING, round {r + 1}/{rounds}")
                quiet.append(load(port, n, MATH_ANSWER))
        finally:
            _log_level(hosts, [server], MATH_PROGRAM, None, answers)
    rows = []
    for n in clients:
        m, e = best["math", n], best["echo", n]
        last = n == clients[-1]
        rows.append(row(f"math server req/s, {n} client{'s' if n > 1 else ''} on {client} "
                        f"({m['requests']} requests, median of {rounds})", m["req_per_s"], "req/s",
                        "echo-line server, same load", e["req_per_s"],
                        ("value", ">=", 30000) if last else None,
                        **({"series": {"x": list(clients), "y": [best["math", c]["req_per_s"] for c in clients],
                                       "x_label": "concurrent clients", "y_label": "math req/s"}} if last else {})))
        rows.append(row(f"math server p99 latency, {n} client{'s' if n > 1 else ''}"
                        + (" (closed loop: mean = clients / req/s by Little's law)" if last else ""),
                        m["p99_ms"], "ms", "echo-line server p99", e["p99_ms"]))
    p, pe = best["paced", clients[-1]], best["paced echo", clients[-1]]
    rows.append(row(f"math server p99 latency, {clients[-1]} clients offering {PACED_RATE} req/s (open loop, "
                    f"{p['requests']} requests all answered, from when each was due; median of {rounds})",
                    p["p99_ms"], "ms", "echo-line server p99, same load", pe["p99_ms"], ("value", "<=", 10),
                    samples=p["latency_ms"][::10]))  # every 10th: the histogram's shape, a tenth of the JSON
    q = median_by(quiet, "req_per_s")
    rows.append(row(f"math server req/s, {clients[-1]} clients, server at log level WARNING (no line per request)",
                    q["req_per_s"], "req/s", "echo-line server, same load", best["echo", clients[-1]]["req_per_s"]))
    rows.append(row("math server p99 latency, the same, at log level WARNING", q["p99_ms"], "ms",
                    "echo-line server p99", best["echo", clients[-1]]["p99_ms"]))
    return rows


# --- 4. Celery ---------------------------------------------------------------------------------------------

def _workers_running(hosts: Hosts, client: str, expected: list[str], wait: float = 90.0) -> None:
    """Wait until a small group lands on every expected worker host and on no other."""
    deadline = time.monotonic() + wait
    while True:
        got = hosts.labnodes(client, "celery", "batch", "--count", str(50 * len(expected)), "--mode", "group")
        ran = set(got["modes"]["group"]["hosts"])
        if ran == set(expected):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"Celery tasks ran on {sorted(ran)}, not on exactly {expected}")
        time.sleep(1)


def worker_steps(counts) -> list[int]:
    """The worker counts to measure in order: down from the most, then back up (each count twice, so that a
    drift in the box's load over the run weighs on every count alike): (4, 2, 1) -> [4, 2, 1, 1, 2, 4]."""
    down = sorted(set(counts), reverse=True)
    return down + down[::-1]


def measure_celery(hosts: Hosts, counts=CELERY_WORKERS, tasks: dict = CELERY_COUNT) -> list[dict]:
    client, workers = _first(hosts, "clients"), list(hosts.inv.groups["workers"])
    rates: dict[tuple[str, int], list[float]] = {}
    pings: list[float] = []
    counts = [n for n in counts if n <= len(workers)]
    running = set(workers)
    for n in worker_steps(counts):
        for w in workers[n:]:
            if w in running:
                hosts.run(w, f"supervisorctl stop {WORKER_PROGRAM}")
                running.discard(w)
        for w in workers[:n]:
            if w not in running:
                hosts.run(w, f"supervisorctl start {WORKER_PROGRAM}")
                running.add(w)
        _workers_running(hosts, client, workers[:n])
        got = _remote(hosts, client, "redis-ping", PINGS)
        pings.append(got["pings"] / got["seconds"])
        for mode, count in tasks.items():
            _say(f"celery {mode} with {n} workers")
            r = hosts.labnodes(client, "celery", "batch", "--count", str(count), "--mode", mode)["modes"][mode]
            if r["error_count"] or r["ok"] != count:
                raise RuntimeError(f"celery {mode} with {n} workers: {r['error_count']} errors: {r['errors'][:1]}")
            rates.setdefault((mode, n), []).append(r["tasks_per_s"])
    ping = statistics.median(pings)
    rate = {k: statistics.mean(v) for k, v in rates.items()}
    names = {"one": "one-by-one", "group": "group", "chunks": "chunks of 100"}
    rows = []
    for mode in tasks:
        for n in sorted(counts, reverse=True):
            extra = {}
            if n == max(counts) and len(counts) > 1:
                xs = sorted(counts)
                extra["series"] = {"x": xs, "y": [rate[mode, c] for c in xs], "x_label": "workers running",
                                   "y_label": f"{names[mode]} tasks/s"}
            rows.append(row(f"Celery {names[mode]}, {n} worker{'s' if n > 1 else ''} "
                            f"({tasks[mode]} tasks, mean of {len(rates[mode, n])} runs)",
                            rate[mode, n], "tasks/s", f"Redis PING round trips/s from {client}", ping, **extra))
    return rows


# --- the run -----------------------------------------------------------------------------------------------

SECTIONS = (("ring", measure_ring), ("file transfer", measure_files), ("math server", measure_math),
            ("celery", measure_celery))


def measure(hosts: Hosts) -> list[dict]:
    """Every section; one that fails shows as a MISSED row with its error and the others still run."""
    rows = []
    for name, fn in SECTIONS:
        _say(f"{name} ...")
        try:
            rows += fn(hosts)
        except Exception as exc:
            traceback.print_exc()
            rows.append(row(f"{name}: FAILED: {str(exc)[:200]}", 0.0, "", "", 0.0) | {"ok": False})
    return rows


def run(quick: bool = False) -> list[dict]:
    if quick:
        return []
    _say(f"bringing up and provisioning cluster {CLUSTER} ...")
    with cluster(CLUSTER, OCTET, edit=lambda text: add_workers(text, WORKERS)) as (inv, _), Hosts(inv) as hosts:
        return measure(hosts)


def main() -> int:
    output.table((report.cells(r) for r in run()), report.HEADER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
