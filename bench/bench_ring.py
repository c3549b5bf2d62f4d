"""Benchmark of the Pyro4 ring: lap time against three raw TCP round trips between the same addresses.

A real name server (127.0.0.10) and ring nodes pyro1/pyro2/pyro3 (127.0.0.11/.12/.13) run as `labnodes`
subprocesses, logging at WARNING. The client sends 48,18 (one lap each) `laps` times; a lap is what the start
node measures around its nested chain pyro1 -> pyro2 -> pyro3 -> pyro1 (client and name server excluded).
Baseline: a tiny echo server (one subprocess, a thread on each of the three ring addresses) and a client doing
three sequential request/response round trips of 512 bytes over open connections, one to each address. A
second reference row shows Pyro4's own floor: three sequential empty Pyro calls (info()) to the three nodes
over open proxies. All are measured in interleaved blocks so that they see the same load on the box. Lower is
better for every row.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from labnodes import pyro_client, ring

NS_HOST = "127.0.0.10"
RING = {"pyro1": ("127.0.0.11", "pyro2"), "pyro2": ("127.0.0.12", "pyro3"), "pyro3": ("127.0.0.13", "pyro1")}
PAYLOAD = b"x" * 511 + b"\n"
START_WAIT = 30.0  # seconds for the servers to come up (hang guard)

ECHO_SERVER = """
import socket, sys, threading
def serve(listener):
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=echo, args=(conn,), daemon=True).start()
def echo(conn):
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)
ports = []
for host in sys.argv[1:]:
    listener = socket.create_server((host, 0))
    ports.append(str(listener.getsockname()[1]))
    threading.Thread(target=serve, args=(listener,), daemon=True).start()
print(" ".join(ports), flush=True)
sys.stdin.read()  # until the benchmark closes our stdin
"""


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _wait(condition, what: str, procs) -> None:
    deadline = time.monotonic() + START_WAIT
    while not condition():
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"bench_ring: a server exited while waiting for {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench_ring: timed out waiting for {what}")
        time.sleep(0.05)


def _ok(fn) -> bool:
    try:
        return bool(fn())
    except Exception:
        return False


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _recv_line(conn: socket.socket) -> None:
    got = 0
    while got < len(PAYLOAD):
        chunk = conn.recv(65536)
        if not chunk:
            raise RuntimeError("bench_ring: echo server closed the connection")
        got += len(chunk)


def run(quick: bool = False) -> list[dict]:
    laps = 20 if quick else 200
    triples_per_lap = 5
    key = secrets.token_hex(16)
    cfgdir = tempfile.mkdtemp(prefix="bench_ring-")
    cfg = os.path.join(cfgdir, "labnodes.toml")
    with open(cfg, "w"):
        pass
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABNODES_")}
    env.update(LABNODES_CONFIG=cfg, LABNODES_HMAC_KEY=key, LABNODES_LOG_LEVEL="WARNING")
    ns_port = _free_port(NS_HOST)
    procs: list[subprocess.Popen] = []

    def launch(args):
        p = subprocess.Popen(
            [sys.executable, "-m", "labnodes", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(p)
        return p

    conns: list[socket.socket] = []
    try:
        launch(["nameserver", "--host", NS_HOST, "--port", str(ns_port)])
        for name, (host, nxt) in RING.items():
            launch(
                [
                    "ring",
                    "serve",
                    "--name",
                    name,
                    "--next",
                    nxt,
                    "--host",
                    host,
                    "--ns-host",
                    NS_HOST,
                    "--ns-port",
                    str(ns_port),
                ]
            )
        echo = subprocess.Popen(
            [sys.executable, "-c", ECHO_SERVER, *(h for h, _ in RING.values())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(echo)
        ports = [int(p) for p in echo.stdout.readline().split()]
        for (host, _), port in zip(RING.values(), ports):
            c = socket.create_connection((host, port), timeout=10)
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conns.append(c)

        def registered():
            with ring.ns_proxy(NS_HOST, ns_port, key, 2.0) as ns:
                return len(ns.list(prefix=ring.NAME_PREFIX)) == len(RING)

        _wait(lambda: _ok(registered), "the ring", procs)

        def send():
            return ring.send(NS_HOST, ns_port, key, "pyro1", "bench", [48, 18], 10.0)

        for _ in range(3):  # warm-up: connections between the nodes, imports, thread pools
            send()
            for c in conns:
                c.sendall(PAYLOAD)
                _recv_line(c)

        with ring.ns_proxy(NS_HOST, ns_port, key, 5.0) as ns:
            uris = [ns.lookup(ring.registration_name(name)) for name in RING]
        proxies = [pyro_client.proxy(uri, key, 5.0) for uri in uris]
        for p in proxies:
            p.info()

        lap_ms, send_ms, raw_ms, pyro_ms = [], [], [], []
        for _ in range(laps):
            t = time.perf_counter()
            res = send()
            send_ms.append((time.perf_counter() - t) * 1000)
            assert res["gcd"] == 6 and res["laps"] == 1, res
            lap_ms.append(res["lap_ms"][0])
            for _ in range(triples_per_lap):
                t = time.perf_counter()
                for c in conns:
                    c.sendall(PAYLOAD)
                    _recv_line(c)
                raw_ms.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            for p in proxies:
                p.info()
            pyro_ms.append((time.perf_counter() - t) * 1000)
        for p in proxies:
            p._pyroRelease()
    finally:
        for c in conns:
            c.close()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        os.unlink(cfg)
        os.rmdir(cfgdir)

    raw_median, raw_p99 = statistics.median(raw_ms), _percentile(raw_ms, 0.99)
    lap_median, lap_p99 = statistics.median(lap_ms), _percentile(lap_ms, 0.99)
    send_median = statistics.median(send_ms)
    pyro_median = statistics.median(pyro_ms)
    base = "3 raw TCP round trips (ms)"
    return [
        {
            "bench": f"ring lap median, 3 nested hops (ms, lower is better, {laps} laps)",
            "value": lap_median,
            "unit": "ms",
            "baseline_name": base + " median",
            "baseline": raw_median,
            "ratio": lap_median / raw_median,
            "target": "ratio <= 10",
            "ok": lap_median / raw_median <= 10,
        },
        {
            "bench": "ring lap p99 (ms, lower is better)",
            "value": lap_p99,
            "unit": "ms",
            "baseline_name": base + " p99",
            "baseline": raw_p99,
            "ratio": lap_p99 / raw_p99,
            "target": "",
            "ok": None,
        },
        {
            "bench": "3 empty Pyro4 calls, one per ring node (ms, lower is better): Pyro's floor",
            "value": pyro_median,
            "unit": "ms",
            "baseline_name": base + " median",
            "baseline": raw_median,
            "ratio": pyro_median / raw_median,
            "target": "",
            "ok": None,
        },
        {
            "bench": "ring send median incl. name-server lookup + connect (ms, lower is better)",
            "value": send_median,
            "unit": "ms",
            "baseline_name": base + " median",
            "baseline": raw_median,
            "ratio": send_median / raw_median,
            "target": "",
            "ok": None,
        },
    ]


if __name__ == "__main__":
    from labnodes import output

    rows = run(quick="--quick" in sys.argv)
    output.table(
        (
            [
                r["bench"],
                f"{r['value']:.3f}",
                r["baseline_name"],
                f"{r['baseline']:.3f}",
                f"{r['ratio']:.2f}",
                r["target"],
                {True: "ok", False: "MISSED", None: ""}[r["ok"]],
            ]
            for r in rows
        ),
        ["benchmark", "value", "baseline", "baseline value", "ratio", "target", ""],
    )
