"""The parts of bench_cross that run on cluster hosts: bench_cross ships this file's source over SSH and runs it
with the host's labnodes venv python (`python -c SOURCE ACTION ARGS...`), so it imports only the standard
library and what labnodes installs (Pyro4, redis, labnodes itself). Every action prints one JSON line.

Servers (started detached by bench_cross; each prints {"ready": pid} once it listens, then serves until killed):
    echo-line HOST PORT             asyncio server on uvloop answering every line with the same line (the math
                                    baseline)
    hop HOST RAW_PORT PYRO_PORT [NEXT]
                                    one link of a nested chain, raw TCP and Pyro4 side by side: with NEXT (an
                                    address), a line received on RAW_PORT is passed to NEXT:RAW_PORT and its
                                    answer returned, and hop([message]) on the Pyro4 object `xbench.hop` at
                                    PYRO_PORT calls hop([message]) at NEXT:PYRO_PORT; without NEXT the line is
                                    echoed and hop() returns at once (the end of the chain): None, or for a
                                    message a receipt the size of the ring's. The Pyro4 daemon has the ring
                                    nodes' settings (labnodes.pyro_server.configure: thread pool, json, NODELAY,
                                    guarded transport) and the host's HMAC key.
    raw-read HOST PORT DEST         each connection's bytes written to DEST (recv_into, write, fsync), then one
                                    JSON line back: this end's CPU seconds for it and how long its fsync took
Clients (run in the foreground, print their figures):
    ring-laps N START               N sends of RING_NUMBERS (three laps) round the ring from this host
                                    (labnodes.ring_client.send, settings from the host's labnodes.toml): each
                                    send's first lap and its later laps (back to back) as the start node timed
                                    them, each send's time as this client saw it (name-server lookup included)
                                    and the part of it outside the laps (when the ring hosts wait idle); after
                                    WARM_SENDS sends that are not counted
    chain N FIRST RAW_PORT PYRO_PORT [GAP_MS]
                                    N rounds of nested round trips through the hop chain starting at FIRST (after
                                    WARM_ROUNDS that are not counted), each timed here: raw TCP (a 512-byte
                                    line), Pyro4 (an empty call), Pyro4 carrying a ring message (ring_message())
                                    and returning a receipt, and, with GAP_MS, an empty call made after GAP_MS
                                    ms of idling
    load HOST PORT CLIENTS REQUESTS LINE EXPECT
                                    CLIENTS connections, each sending LINE and reading one answer line REQUESTS
                                    times in a row (closed loop): requests/s and every request's latency;
                                    every answer must be EXPECT
    paced HOST PORT CLIENTS RATE SECONDS LINE EXPECT
                                    CLIENTS connections sending RATE requests a second in all for SECONDS, on a
                                    schedule whatever the answers do (open loop): every request's latency from
                                    its scheduled time, and how many were sent and answered
                                    Both load generators are asyncio protocols (cheaper per request than
                                    streams) on uvloop's event loop, so that one client process can offer
                                    30,000 requests a second with room to spare: on asyncio's own loop it was
                                    the limit, and its own lag made up most of the open-loop p99 (three
                                    interleaved pairs on one cluster: math 7.2-47 ms against 3.6-6.3 on
                                    uvloop, echo 9.4-129 against 4.0-7.3)
    redis-ping N                    N Redis PING round trips to the host's broker (its labnodes.toml settings)
    raw-send HOST PORT SRC          the raw copy under the file transfer's two-core ceiling: SRC to a raw-read
                                    server with sendfile(), timed from connect to the reader's answer (after its
                                    fsync), as `labnodes file send` times itself; with the CPU seconds of both ends
    sha256-cpu BYTES                CPU seconds of one thread hashing BYTES held in memory (best of two passes)
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import heapq
import json
import os
import random
import resource
import socket
import sys
import threading
import time

PAYLOAD = b"x" * 511 + b"\n"
RING_NUMBERS, RING_GCD, RING_LAPS = "89,55", 1, 3  # Fibonacci neighbours: 9 Euclid steps, 3 laps of 3 hosts
# Sends (ring-laps) and rounds (chain) at the start of every block that are not counted: the ring hosts idled while
# the other side was measured, and the first calls after an idle are slower (see bench_cross's first-lap row).
WARM_SENDS, WARM_ROUNDS = 2, 5
HOP_OBJECT = "xbench.hop"
TIMEOUT = 10.0  # seconds for any one call or round trip (hang guard)


def _say(obj) -> None:
    print(json.dumps(obj), flush=True)


def _run(coro):
    """Run `coro` on uvloop's event loop (labnodes installs uvloop for its math server): see the module docstring."""
    import uvloop

    return uvloop.run(coro)


def _settings():
    from labnodes import config

    return config.load()


def _more_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _recv_line(sock: socket.socket, buf: bytearray) -> bytes:
    """One line from sock; `buf` keeps what arrived after it."""
    while (end := buf.find(b"\n")) < 0:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed mid-line")
        buf += chunk
    line = bytes(buf[:end + 1])
    del buf[:end + 1]
    return line


def _cpu_seconds() -> float:
    return time.process_time()  # user + system, all threads, to the nanosecond (os.times() counts 10 ms ticks)


# --- servers ----------------------------------------------------------------------------------------------

def echo_line(host: str, port: str) -> int:
    _more_files()

    async def handle(reader, writer):
        try:
            while line := await reader.readline():
                writer.write(line)
                await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    async def main():
        await asyncio.start_server(handle, host, int(port), backlog=512, reuse_address=True)
        _say({"ready": os.getpid()})
        await asyncio.Event().wait()

    _run(main())  # the math server's event loop: the baseline runs on the same loop
    return 0


def _raw_reader(listener: socket.socket, dest: str, connections: int | None = None) -> None:
    """Serve raw-read on `listener`: `connections` of them, or for ever."""
    buf = memoryview(bytearray(1 << 20))
    while connections is None or connections > 0:
        conn, _ = listener.accept()
        with conn:
            cpu = _cpu_seconds()
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                while n := conn.recv_into(buf):
                    if os.write(fd, buf[:n]) != n:
                        raise OSError(f"short write to {dest}")
                synced = time.perf_counter()
                os.fsync(fd)
                synced = time.perf_counter() - synced
            finally:
                os.close(fd)
            conn.sendall(json.dumps({"cpu": _cpu_seconds() - cpu, "fsync": synced}).encode() + b"\n")
        if connections is not None:
            connections -= 1


def raw_read(host: str, port: str, dest: str) -> int:
    listener = socket.create_server((host, int(port)))
    _say({"ready": os.getpid()})
    _raw_reader(listener, dest)
    return 0


def hop(host: str, raw_port: str, pyro_port: str, nxt: str = "") -> int:
    from labnodes import pyro_client, pyro_server

    settings = _settings()
    key = settings.hmac_key
    Pyro4 = pyro_server.configure(settings.ring_idle_timeout)

    def relay(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        onward = None
        if nxt:
            onward = socket.create_connection((nxt, int(raw_port)), timeout=TIMEOUT)
            onward.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        mine, theirs = bytearray(), bytearray()
        with conn:
            try:
                while True:
                    line = _recv_line(conn, mine)
                    if onward is not None:
                        onward.sendall(line)
                        line = _recv_line(onward, theirs)
                    conn.sendall(line)
            except (ConnectionError, OSError):
                pass
            finally:
                if onward is not None:
                    onward.close()

    def accept(listener: socket.socket) -> None:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=relay, args=(conn,), daemon=True).start()

    @Pyro4.expose
    class Hop:
        local = threading.local()

        def hop(self, message=None):
            if not nxt:
                return None if message is None else {"id": message["id"], "lap": message["lap"], "back_at": "x"}
            p = getattr(self.local, "proxy", None)
            if p is None:
                p = self.local.proxy = pyro_client.proxy(f"PYRO:{HOP_OBJECT}@{nxt}:{pyro_port}", key, TIMEOUT)
            return p.hop() if message is None else p.hop(message)

    listener = socket.create_server((host, int(raw_port)), backlog=64, reuse_port=False)
    threading.Thread(target=accept, args=(listener,), daemon=True).start()
    daemon = Pyro4.Daemon(host=host, port=int(pyro_port))
    daemon._pyroHmacKey = key
    daemon.register(Hop(), objectId=HOP_OBJECT)
    _say({"ready": os.getpid()})
    daemon.requestLoop()
    return 0


# --- clients ----------------------------------------------------------------------------------------------

def ring_laps(n: str, start: str) -> int:
    from labnodes import ring_client

    s = _settings()
    first, later, sends, idle = [], [], [], []
    for i in range(int(n) + WARM_SENDS):  # the first WARM_SENDS warm the ring up and are not counted
        t = time.perf_counter()
        res = ring_client.send(s.ns_host, s.ns_port, s.hmac_key, start, "xbench", RING_NUMBERS, 2 * s.ring_timeout)
        took = (time.perf_counter() - t) * 1000
        if res["gcd"] != RING_GCD or res["laps"] != RING_LAPS:
            raise RuntimeError(f"the ring answered {res['gcd']} after {res['laps']} laps, "
                               f"not {RING_GCD} after {RING_LAPS}")
        if i < WARM_SENDS:
            continue
        sends.append(took)
        first.append(res["lap_ms"][0])
        later += res["lap_ms"][1:]
        idle.append(took - sum(res["lap_ms"]))
    _say({"first_ms": first, "lap_ms": later, "send_ms": sends, "idle_ms": idle})
    return 0


def ring_message() -> dict:
    """A ring message as the middle hop of a later lap carries it (one trace record; a later lap's three hops
    carry 0, 1 and 2 records: the start node empties the trace at each new lap)."""
    from labnodes import ring_lap

    msg = ring_lap.new_message("xbench", [int(x) for x in RING_NUMBERS.split(",")], "pyro1")
    msg["lap"] = 2
    return ring_lap.receive(msg, "pyro2", "pyro2", "10.77.83.22:40000", time.time())


def chain(n: str, first: str, raw_port: str, pyro_port: str, gap_ms: str = "0") -> int:
    from labnodes import pyro_client

    key = _settings().hmac_key
    gap = float(gap_ms) / 1000
    message = ring_message()
    sock = socket.create_connection((first, int(raw_port)), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray()
    got = {"raw_ms": [], "pyro_ms": [], "message_ms": [], "paced_ms": []}
    with sock, pyro_client.proxy(f"PYRO:{HOP_OBJECT}@{first}:{pyro_port}", key, TIMEOUT) as p:
        for i in range(int(n) + WARM_ROUNDS):  # the first WARM_ROUNDS warm the links up and are not counted
            t = time.perf_counter()
            sock.sendall(PAYLOAD)
            if _recv_line(sock, buf) != PAYLOAD:
                raise RuntimeError("the raw chain changed the line")
            t1 = time.perf_counter()
            p.hop()
            t2 = time.perf_counter()
            if p.hop(message)["id"] != message["id"]:
                raise RuntimeError("the chain lost the message")
            t3 = time.perf_counter()
            if i >= WARM_ROUNDS:
                got["raw_ms"].append((t1 - t) * 1000)
                got["pyro_ms"].append((t2 - t1) * 1000)
                got["message_ms"].append((t3 - t2) * 1000)
            if gap:
                time.sleep(gap)
                t4 = time.perf_counter()
                p.hop()
                if i >= WARM_ROUNDS:
                    got["paced_ms"].append((time.perf_counter() - t4) * 1000)
    _say(got)
    return 0


class _Client(asyncio.Protocol):
    """One load-generator connection: sends `line`, checks every reply against `expect`, and times each reply
    from when its request was due. Closed loop (`closed` requests): the next request goes as soon as a reply
    arrives, so due = sent. Open loop (send() called on a schedule): due is the scheduled time, even when the
    request goes out late or the replies lag; a slow server cannot hide its queue (no coordinated omission)."""

    def __init__(self, line: bytes, expect: bytes, latencies: list[float]):
        self.line, self.expect, self.latencies = line, expect, latencies
        self.due: collections.deque[float] = collections.deque()
        self.buf = bytearray()
        self.wrong = self.left = 0
        self.record = False
        self.idle: asyncio.Future | None = None  # done when no reply is outstanding and no request is left

    def connection_made(self, transport) -> None:
        self.transport = transport

    def send(self, due: float) -> None:
        self.due.append(due)
        self.transport.write(self.line)

    def run(self, requests: int, record: bool) -> asyncio.Future:
        """Closed loop: `requests` requests one after another; the future is done after the last reply."""
        self.left, self.record = requests - 1, record
        self.idle = asyncio.get_running_loop().create_future()
        self.send(time.perf_counter())
        return self.idle

    def drained(self) -> asyncio.Future:
        """Open loop: a future done once every request sent so far has its reply."""
        self.idle = asyncio.get_running_loop().create_future()
        if not self.due:
            self.idle.set_result(None)
        return self.idle

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self.buf += data
        start = 0
        while (end := self.buf.find(b"\n", start)) >= 0:
            if self.buf[start:end + 1] != self.expect:
                self.wrong += 1
            start = end + 1
            due = self.due.popleft()
            if self.record:
                self.latencies.append(now - due)
            if self.left > 0:
                self.left -= 1
                self.send(now)
        del self.buf[:start]
        if not self.due and self.idle is not None and not self.idle.done():
            self.idle.set_result(None)

    def connection_lost(self, exc) -> None:
        if self.idle is not None and not self.idle.done():
            self.idle.set_exception(ConnectionError(f"the server closed a connection ({exc})"))


async def _connect(host: str, port: int, clients: int, line: bytes, expect: bytes, latencies: list[float]):
    """`clients` connections, each warmed up by one request (its reply checked, not timed)."""
    loop = asyncio.get_running_loop()
    conns: list[_Client] = []
    for i in range(0, clients, 100):  # in steps, so the server's listen backlog never overflows
        made = await asyncio.gather(*(loop.create_connection(lambda: _Client(line, expect, latencies), host, port)
                                      for _ in range(min(100, clients - i))))
        conns += [protocol for _, protocol in made]
    await asyncio.wait_for(asyncio.gather(*(c.run(1, False) for c in conns)), TIMEOUT)
    return conns


async def _load(host: str, port: int, clients: int, requests: int, line: bytes, expect: bytes) -> dict:
    """Closed loop: every connection sends `requests` requests, each as soon as the last reply arrived."""
    latencies: list[float] = []
    conns = await _connect(host, port, clients, line, expect, latencies)
    start = time.perf_counter()
    await asyncio.gather(*(c.run(requests, True) for c in conns))  # a lost connection fails it; a hang: bench_cross's guard
    seconds = time.perf_counter() - start
    for c in conns:
        c.transport.close()
    return {"clients": clients, "requests": len(latencies), "seconds": seconds, "wrong": sum(c.wrong for c in conns),
            "latency_ms": [round(x * 1000, 4) for x in latencies]}


async def _paced(host: str, port: int, clients: int, rate: float, seconds: float, line: bytes,
                 expect: bytes) -> dict:
    """Open loop: `rate` requests a second in all for `seconds`, each connection at rate / clients a second
    from a random phase, whatever the replies do; latency counts from each request's scheduled time."""
    latencies: list[float] = []
    conns = await _connect(host, port, clients, line, expect, latencies)
    for c in conns:
        c.record = True
    period, rng = clients / rate, random.Random(1)
    start = time.perf_counter() + 0.01
    end = start + seconds
    schedule = [(start + rng.random() * period, i) for i in range(len(conns))]
    heapq.heapify(schedule)
    sent = 0
    while schedule[0][0] < end:
        now = time.perf_counter()
        while schedule[0][0] <= now:
            due, i = heapq.heappop(schedule)
            conns[i].send(due)
            sent += 1
            heapq.heappush(schedule, (due + period, i))
        await asyncio.sleep(max(0.0, schedule[0][0] - time.perf_counter()))
    await asyncio.wait_for(asyncio.gather(*(c.drained() for c in conns)), TIMEOUT)  # the last replies
    for c in conns:
        c.transport.close()
    return {"clients": clients, "offered": rate, "requests": len(latencies), "sent": sent, "seconds": seconds,
            "wrong": sum(c.wrong for c in conns), "latency_ms": [round(x * 1000, 4) for x in latencies]}


def load(host: str, port: str, clients: str, requests: str, line: str, expect: str) -> int:
    _more_files()
    enc = (line.encode() + b"\n", expect.encode() + b"\n")
    _say(_run(_load(host, int(port), int(clients), int(requests), *enc)))
    return 0


def paced(host: str, port: str, clients: str, rate: str, seconds: str, line: str, expect: str) -> int:
    _more_files()
    enc = (line.encode() + b"\n", expect.encode() + b"\n")
    _say(_run(_paced(host, int(port), int(clients), float(rate), float(seconds), *enc)))
    return 0


def redis_ping(n: str) -> int:
    import redis

    s = _settings()
    client = redis.Redis(host=s.redis_host, port=s.redis_port, password=s.redis_password,
                         username=s.redis_user or None, socket_timeout=TIMEOUT)
    try:
        client.ping()
        start = time.perf_counter()
        for _ in range(int(n)):
            client.ping()
        seconds = time.perf_counter() - start
    finally:
        client.close()
    _say({"pings": int(n), "seconds": seconds})
    return 0


def _raw_send(host: str, port: int, src: str) -> dict:
    cpu, started = _cpu_seconds(), time.perf_counter()
    with socket.create_connection((host, port), timeout=6 * TIMEOUT) as sock, open(src, "rb") as f:
        sock.sendfile(f)
        sock.shutdown(socket.SHUT_WR)
        reader = json.loads(_recv_line(sock, bytearray()))
    seconds = time.perf_counter() - started
    return {"bytes": os.path.getsize(src), "seconds": seconds, "cpu": _cpu_seconds() - cpu + reader["cpu"],
            "fsync": reader["fsync"]}


def raw_send(host: str, port: str, src: str) -> int:
    _say(_raw_send(host, int(port), src))
    return 0


def sha256_cpu_seconds(size: int) -> float:
    """CPU seconds of one thread hashing `size` bytes held in memory: the best of two passes (also bench_sockets')."""
    block, best = os.urandom(4 << 20), float("inf")
    for _ in range(2):
        hasher, started = hashlib.sha256(), time.thread_time()
        for _ in range(size // len(block)):
            hasher.update(block)
        hasher.update(block[:size % len(block)])
        best = min(best, time.thread_time() - started)
    return best


def sha256_cpu(size: str) -> int:
    _say({"cpu": sha256_cpu_seconds(int(size))})
    return 0


def sha256_file_cpu_seconds(path: str) -> tuple[float, str]:
    """CPU seconds of one thread hashing a file as a program reads it: read() into one 1 MiB buffer, then hash
    (as sha256sum does, and as a sender that hashes the file it sends must: the bytes are in the page cache,
    not in its memory). Best of two passes, so the file is in the page cache; with the sha256, which shows the
    whole file was read."""
    buf, best = memoryview(bytearray(1 << 20)), float("inf")
    for _ in range(2):
        hasher, started = hashlib.sha256(), time.thread_time()
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                hasher.update(buf[:n])
        best = min(best, time.thread_time() - started)
    return best, hasher.hexdigest()


def sha256_file_cpu(path: str) -> int:
    cpu, digest = sha256_file_cpu_seconds(path)
    _say({"cpu": cpu, "sha256": digest})
    return 0


ACTIONS = {"echo-line": echo_line, "hop": hop, "ring-laps": ring_laps, "chain": chain, "load": load, "paced": paced,
           "redis-ping": redis_ping, "raw-read": raw_read, "raw-send": raw_send, "sha256-cpu": sha256_cpu,
           "sha256-file-cpu": sha256_file_cpu}


def main(argv: list[str]) -> int:
    return ACTIONS[argv[0]](*argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
