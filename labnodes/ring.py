"""Pyro4 ring: a name server and ring nodes passing a message and two numbers round, one Euclid step per hop.

Commands
    labnodes nameserver [--host H] [--port P]
        A Pyro4 name server bound to H:P (settings ns_host, ns_port; default 127.0.0.1:9090), HMAC key
        required (setting hmac_key). Runs in the foreground until SIGTERM/SIGINT, then exits 0.
    labnodes ring serve --name NAME --next NEXT [--host H] [--port P] [--ns-host ..] [--ns-port ..]
        One ring node (the same program on every ring host). It binds H:P (ring_host, ring_port; port 0 = any
        free port), registers itself in the name server as `labkit.ring.<NAME>` (retrying for up to
        --register-wait seconds while the name server is unreachable, so nodes may start in any order), passes
        messages to the node registered as `labkit.ring.<NEXT>`, and on SIGTERM/SIGINT unregisters itself (if
        the name still points at it) and exits 0. Every --check-interval seconds it checks that the name
        server still knows it and registers again if not (a restarted name server forgets everything).
    labnodes ring send --start NAME --message TEXT --numbers A,B [--timeout S] [--json] [--ns-host ..]
                       [--ns-port ..]
        Finds NAME in the name server, asks it to send the message round the ring, prints every hop (a table,
        or JSON with --json) and a summary line.
        Library form: `send(ns_host, ns_port, hmac_key, start, message, numbers, timeout) -> dict`.

Wire: Pyro4 with the serpent serializer only (never pickle), the HMAC key on the name server, on every daemon
and on every proxy, and a client-side timeout on every proxy. Ring daemons use the thread-pool server type
(the multiplex type deadlocks on the nested call back into the start node), guarded so that a connection
gets a worker thread only once its whole HMAC handshake has arrived (labnodes.pyro_server): idle or
half-open connections from anyone, key or not, wait thread-less for at most 5 s and cannot starve the 40
threads of the name server or a node. A daemon closes links that stay idle for ring_idle_timeout seconds; a
node whose link to its successor was closed that way reconnects and retries once.

Remote methods of a ring node
    start(text, numbers, budget) -> result   called by `ring send` on the start node
    relay(message, budget) -> receipt        called by the predecessor, one call per hop;
                                             receipt = {"id", "lap", "back_at": origin} once the lap is round
    info() -> {"name", "next", "host", "address"}

Numbers: two integers 0 <= n < 10**30, written `A,B` on the command line (spaces allowed around them): the
one rule of `labnodes.numbers`, with its messages, the same as Celery's and the math server's. Anything else
(one or three numbers, negatives, non-integers, empty, 10**30 or more) is refused with that one-line message
before anything is sent, and a node refuses such numbers in a message (ValueError with the same message).

Message (a dict, travels by value):
    {"id": hex, "origin": start node name, "text": str (<= 1000 chars), "input": [A, B],
     "numbers": [a, b] (current), "lap": int (1-based), "trace": [record, ...] (this lap's records)}
Trace record, appended by every node that receives the message:
    {"node": name, "host": socket.gethostname(), "address": "ip:port" of the node's daemon,
     "received": epoch seconds (float), "lap": int, "numbers": [a, b] after this node's step}
Euclid step, done by every receiving node: (a, b) -> (b, a mod b) while b != 0; with b == 0 the numbers pass
unchanged and a is the gcd.

Laps. The start node records the message it gets from the client (its step is the first hop), then runs each
lap as one nested chain: start -> n2 -> n3 -> ... -> start.relay. The start's own relay sees that it is the
origin, records the arrival (and does its step), hands the message to the start() thread waiting for it in the
same process and returns a small receipt at once; the receipt unwinds through every hop back to the start
node (the message itself travels the ring once, not back through it). The start node adds the lap's records to
the full trace and starts the next lap itself (with an empty trace) if b != 0. So one message never holds more
than two threads of a node (start + arrival), however many laps it needs, and its size does not grow with the
laps. A message whose origin is a node that is not waiting for it is refused (ValueError). After ring_max_laps
laps (setting of the start node) with b still != 0 the send fails. The result: {"message", "start", "id",
"input", "gcd", "lcm", "laps", "lap_ms": [per lap], "total_ms", "trace"}; gcd(0, 0) = 0 and lcm is 0 when
either number is 0, else a*b // gcd. "+ms" columns compare clocks of different hosts: they are only as good
as the hosts' time sync.

Errors (Python builtin exceptions across the wire, so any Pyro client can read them; the CLI prints one line,
exit 1; a client with the wrong HMAC key is refused by the name server and the nodes before any call):
    ValueError    bad numbers, text or message (the text says which)
    RuntimeError  "ring hop A -> B failed: B is not registered in the name server"
                  "ring hop A -> B failed: B is registered at ADDR but does not answer (...)"  (process gone)
                  "ring hop A -> B failed: B did not answer within S s"                      (hung hop)
                  "ring hop A -> B failed: B refused the connection: HMAC key mismatch (...)"
                  "ring hop A -> B failed: name server at H:P unreachable (...)"
                  "ring from A: numbers not done after N laps (ring_max_laps)"
                  "ring from A: not done within S s after N laps"
An error from a later hop passes back unchanged through the earlier hops, so the client sees the most specific
(innermost) failure.

Timeouts (T = ring_timeout, the per-hop setting; m = T/10, the margin one hop needs to pass an error back):
    a node that was given `budget` seconds calls its successor with timeout budget - m and hands it that as
    its own budget, so the inner calls always time out first and their error reaches each caller in time.
    lap budget   L = T + 8*m (= 1.8 T): the start node's timeout for one lap; hop k of a lap waits
                 L - (k-1)*m, which is >= T for rings of up to 9 nodes (longer rings get less, down to m).
    client       C = L + 2*m (= 2 T, `ring send` default --timeout): the start node finishes (or fails) by
                 C - m, each lap getting min(L, what is left).
    So a hung hop is reported by its predecessor after at most L seconds, never a hang.
"""

from __future__ import annotations

import logging
import re
import signal
import socket
import statistics
import threading
import time
import uuid

from labnodes import LabnodesError, config, numbers, pyro_server

log = logging.getLogger(__name__)

NAME_PREFIX = "labkit.ring."
MAX_TEXT = 1000
MAX_TRACE = 1000  # records in one lap's trace, i.e. ring nodes
MARGIN_FRACTION = 0.1  # m = T * MARGIN_FRACTION
SIZING_HOPS = 8  # the lap budget covers this many hops beyond the first with a full T each
MAX_IDLE_LINKS = 8  # idle connections a node keeps to its successor for reuse
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


# ---------------------------------------------------------------- pure logic (no Pyro) ----------------------


def registration_name(node: str) -> str:
    """Name-server name of a ring node."""
    return NAME_PREFIX + node


def check_node_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(f"bad ring node name {name!r}: use 1-64 letters, digits, '_', '-' or '.'")
    return name


def check_numbers(value) -> tuple[int, int]:
    """Validate two numbers as they arrive over the wire (a list or tuple of two ints); see labnodes.numbers."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"numbers must be two integers, got {type(value).__name__} {value!r:.40}")
    return numbers.check_pair(*value)


def parse_numbers(text: str) -> tuple[int, int]:
    """Parse the command-line form `A,B` (spaces allowed) with the one rule of labnodes.numbers."""
    return numbers.parse_pair(text)


def check_text(text) -> str:
    if not isinstance(text, str):
        raise ValueError(f"message text must be a string, got {type(text).__name__}")
    if len(text) > MAX_TEXT:
        raise ValueError(f"message text longer than {MAX_TEXT} characters")
    return text


def euclid_step(a: int, b: int) -> tuple[int, int]:
    """One step of Euclid's algorithm; (a, 0) stays as it is (a is then the gcd)."""
    return (b, a % b) if b else (a, b)


def gcd_lcm(a: int, b: int, gcd: int) -> tuple[int, int]:
    """Given the inputs and their gcd (as the ring computed it): (gcd, lcm). lcm is 0 if a number is 0."""
    if a == 0 or b == 0:
        return gcd, 0
    return gcd, a * b // gcd


def new_message(text: str, numbers, origin: str) -> dict:
    a, b = check_numbers(numbers)
    return {
        "id": uuid.uuid4().hex,
        "origin": origin,
        "text": check_text(text),
        "input": [a, b],
        "numbers": [a, b],
        "lap": 1,
        "trace": [],
    }


def check_message(msg) -> dict:
    """Validate a message arriving at relay() (any Pyro client with the key could send one)."""
    if not isinstance(msg, dict):
        raise ValueError("ring message must be a dict")
    for key, kind in (("id", str), ("origin", str), ("text", str), ("lap", int), ("trace", list)):
        if not isinstance(msg.get(key), kind):
            raise ValueError(f"ring message field {key!r} missing or not {kind.__name__}")
    if len(msg["trace"]) > MAX_TRACE:
        raise ValueError(f"ring message trace longer than {MAX_TRACE} records (a ring that long?)")
    check_numbers(msg.get("numbers"))
    check_numbers(msg.get("input"))
    check_text(msg["text"])
    return msg


def receive(msg: dict, node: str, host: str, address: str, received: float) -> dict:
    """What every node does with a message it receives: one Euclid step and a trace record (in place)."""
    a, b = euclid_step(*msg["numbers"])
    msg["numbers"] = [a, b]
    msg["trace"].append(
        {
            "node": node,
            "host": host,
            "address": address,
            "received": received,
            "lap": msg["lap"],
            "numbers": [a, b],
        }
    )
    return msg


def receipt(msg: dict) -> dict:
    """What the origin's relay returns instead of the message; it goes back through every hop of the lap."""
    return {"id": msg["id"], "lap": msg["lap"], "back_at": msg["origin"]}


def done(msg: dict) -> bool:
    return msg["numbers"][1] == 0


def result_of(msg: dict, trace: list[dict], lap_ms: list[float], total_ms: float) -> dict:
    """The start node's answer: the last lap's message, the trace of every lap, lap and total times."""
    a, b = msg["input"]
    gcd, lcm = gcd_lcm(a, b, msg["numbers"][0])
    return {
        "message": msg["text"],
        "start": msg["origin"],
        "id": msg["id"],
        "input": [a, b],
        "gcd": gcd,
        "lcm": lcm,
        "laps": msg["lap"],
        "lap_ms": lap_ms,
        "total_ms": total_ms,
        "trace": trace,
    }


def timeouts(ring_timeout: float) -> dict:
    """The timeout formula of the module docstring: margin m, lap budget L and the client's default C."""
    m = ring_timeout * MARGIN_FRACTION
    lap = ring_timeout + SIZING_HOPS * m
    return {"margin": m, "lap": lap, "client": lap + 2 * m}


# ---------------------------------------------------------------- Pyro plumbing -----------------------------


def _pyro(server: bool = False, idle_timeout: float = 0.0):
    """Import Pyro4 (lazily: the CLI imports every program module at start-up) and, in a server process,
    set what Pyro4 only offers globally: server type, accepted serializers, idle-link timeout, TCP_NODELAY."""
    import Pyro4
    import Pyro4.naming  # noqa: F401  (startNS)

    if server:  # also: connections get a worker thread only once their handshake is in (pyro_server)
        pyro_server.configure(idle_timeout)
    return Pyro4


def _proxy(uri, hmac_key: str, timeout: float):
    """A proxy with per-object settings: HMAC key, serpent, client-side timeout, no silent retries."""
    Pyro4 = _pyro()
    p = Pyro4.Proxy(uri)
    p._pyroHmacKey = hmac_key
    p._pyroSerializer = "serpent"
    p._pyroTimeout = timeout
    p._pyroMaxRetries = 0
    return p


def ns_proxy(ns_host: str, ns_port: int, hmac_key: str, timeout: float):
    """Proxy for the name server at ns_host:ns_port (addressed directly, no broadcast lookup)."""
    return _proxy(f"PYRO:Pyro.NameServer@{ns_host}:{ns_port}", hmac_key, timeout)


def _is_remote(exc: BaseException) -> bool:
    """True for an exception raised by the remote method itself (Pyro attaches the remote traceback)."""
    return getattr(exc, "_pyroTraceback", None) is not None


class _Link:
    """The connections from one node to its successor: found in the name server, reused, reconnected.

    Idle proxies wait in a small pool; each call takes one, so concurrent messages never share a proxy (a
    shared proxy serializes calls and can deadlock two messages going round in opposite laps).
    """

    def __init__(self, src: str, dst: str, ns_host: str, ns_port: int, hmac_key: str):
        self.src, self.dst = src, dst
        self.ns_host, self.ns_port, self.hmac_key = ns_host, ns_port, hmac_key
        self.uri: str | None = None
        self.idle: list = []
        self.lock = threading.Lock()

    def _fail(self, why: str) -> RuntimeError:
        return RuntimeError(f"ring hop {self.src} -> {self.dst} failed: {why}")

    def _lookup(self, timeout: float) -> str:
        Pyro4 = _pyro()
        try:
            with ns_proxy(self.ns_host, self.ns_port, self.hmac_key, timeout) as ns:
                uri = ns.lookup(registration_name(self.dst))
        except Pyro4.errors.NamingError:
            raise self._fail(f"{self.dst} is not registered in the name server") from None
        except Pyro4.errors.PyroError as exc:
            raise self._fail(f"name server at {self.ns_host}:{self.ns_port} unreachable ({exc})") from None
        return str(uri)

    def _take(self, timeout: float):
        with self.lock:
            uri = self.uri
            proxy = self.idle.pop() if self.idle else None
        if uri is None:
            uri = self._lookup(timeout)
            with self.lock:
                self.uri = uri
        if proxy is None or str(proxy._pyroUri) != uri:
            if proxy is not None:
                proxy._pyroRelease()
            return _proxy(uri, self.hmac_key, timeout), False
        proxy._pyroTimeout = timeout
        return proxy, True

    def _give(self, proxy) -> None:
        with self.lock:
            if str(proxy._pyroUri) == self.uri and len(self.idle) < MAX_IDLE_LINKS:
                self.idle.append(proxy)
                return
        proxy._pyroRelease()

    def _forget(self, uri: str) -> None:
        with self.lock:
            if self.uri == uri:
                self.uri = None
            for p in self.idle:
                p._pyroRelease()
            self.idle.clear()

    def relay(self, msg: dict, timeout: float) -> dict:
        """Call the successor's relay(msg, timeout), waiting at most `timeout` s; return its receipt.

        Every failure to reach the successor becomes RuntimeError("ring hop SRC -> DST failed: why").
        """
        Pyro4 = _pyro()
        deadline = time.monotonic() + timeout
        proxy, reused = self._take(timeout)
        retried_uri = False
        while True:
            try:
                out = proxy.relay(msg, timeout)
            except Exception as exc:
                if _is_remote(exc):  # the successor (or a hop after it) raised: pass it back unchanged
                    self._give(proxy)
                    raise
                proxy._pyroRelease()
                if isinstance(exc, Pyro4.errors.TimeoutError):
                    raise self._fail(f"{self.dst} did not answer within {timeout:.2f} s") from None
                if not isinstance(exc, Pyro4.errors.CommunicationError):
                    raise self._fail(f"{type(exc).__name__}: {exc}") from None
                left = deadline - time.monotonic()
                uri = str(proxy._pyroUri)
                if reused and isinstance(exc, Pyro4.errors.ConnectionClosedError) and left > 0:
                    # The successor closed an idle link (its COMMTIMEOUT): reconnect once and retry.
                    log.info("%s: link to %s was closed, reconnecting", self.src, self.dst)
                    reused, timeout = False, left
                    proxy._pyroTimeout = left
                    continue
                self._forget(uri)
                if "hmac" in str(exc).lower():
                    raise self._fail(
                        f"{self.dst} refused the connection: HMAC key mismatch ({exc})"
                    ) from None
                if retried_uri or left <= 0:
                    raise self._fail(
                        f"{self.dst} is registered at {uri.split('@')[-1]} but does not answer "
                        f"(process gone?): {exc}"
                    ) from None
                new_uri = self._lookup(left)  # raises "not registered" / "name server unreachable"
                if new_uri == uri:
                    raise self._fail(
                        f"{self.dst} is registered at {uri.split('@')[-1]} but does not answer "
                        f"(process gone?): {exc}"
                    ) from None
                log.info("%s: %s moved to %s, retrying", self.src, self.dst, new_uri)
                with self.lock:
                    self.uri = new_uri
                proxy, reused, retried_uri = _proxy(new_uri, self.hmac_key, left), False, True
                timeout = left
                continue
            self._give(proxy)
            return out

    def close(self) -> None:
        with self.lock:
            for p in self.idle:
                p._pyroRelease()
            self.idle.clear()


class RingNode:
    """One ring node: receives a message, does its Euclid step, records itself and passes it to `next_name`.

    `forward(msg, timeout) -> receipt` calls the successor's relay; on a ring host it is `_Link.relay`.
    The same class runs on every ring host; only name and next_name differ.
    """

    def __init__(
        self,
        name: str,
        next_name: str,
        *,
        ring_timeout: float = 5.0,
        max_laps: int = 100,
        address: str = "",
        host: str | None = None,
        forward=None,
    ):
        self.name = check_node_name(name)
        self.next_name = check_node_name(next_name)
        self.ring_timeout = ring_timeout
        self.max_laps = max_laps
        self.address = address
        self.host = host or socket.gethostname()
        self.forward = forward
        t = timeouts(ring_timeout)
        self.margin, self.lap_budget = t["margin"], t["lap"]
        self._lock = threading.Lock()
        # message id -> the message back from its lap (None while it is still going round)
        self._waiting: dict[str, dict | None] = {}

    def info(self) -> dict:
        return {"name": self.name, "next": self.next_name, "host": self.host, "address": self.address}

    def _receive(self, msg: dict, received: float) -> None:
        before = list(msg["numbers"])
        receive(msg, self.name, self.host, self.address, received)
        if len(msg["trace"]) > 1:
            prev = msg["trace"][-2]["node"]
        else:
            prev = "client" if msg["origin"] == self.name else msg["origin"]
        log.info(
            "%s: message %s lap %d hop %d from %s, numbers %s -> %s",
            self.name,
            msg["id"][:8],
            msg["lap"],
            len(msg["trace"]),
            prev,
            before,
            msg["numbers"],
        )

    def _pass_on(self, msg: dict, budget: float) -> dict:
        timeout = budget - self.margin
        if timeout < self.margin:
            raise RuntimeError(
                f"ring hop {self.name} -> {self.next_name} failed: no time left "
                f"({budget:.2f} s budget; ring too long for ring_timeout {self.ring_timeout} s?)"
            )
        log.info(
            "%s: message %s lap %d passed on to %s (timeout %.2f s)",
            self.name,
            msg["id"][:8],
            msg["lap"],
            self.next_name,
            timeout,
        )
        try:
            return self.forward(msg, timeout)
        except Exception as exc:
            log.warning("%s: message %s lap %d: %s", self.name, msg["id"][:8], msg["lap"], exc)
            raise

    def relay(self, msg, budget) -> dict:
        """One hop: record, step, and pass on (or, at the origin, return: the lap is complete)."""
        received = time.time()
        msg = check_message(msg)
        if not isinstance(budget, (int, float)) or isinstance(budget, bool) or budget <= 0:
            raise ValueError(f"budget must be a positive number of seconds, got {budget!r}")
        self._receive(msg, received)
        if msg["origin"] == self.name:
            with self._lock:
                if msg["id"] not in self._waiting:
                    raise ValueError(
                        f"message {msg['id']} claims origin {self.name} but {self.name} did not send it"
                    )
                self._waiting[msg["id"]] = msg  # for the start() thread waiting for this lap
            log.info("%s: message %s lap %d back at its origin", self.name, msg["id"][:8], msg["lap"])
            return receipt(msg)
        return self._pass_on(msg, budget)

    def start(self, text, numbers, budget) -> dict:
        """Send a new message round the ring from this node, lap after lap, until the numbers are done."""
        received = time.time()
        t0 = time.monotonic()
        if not isinstance(budget, (int, float)) or isinstance(budget, bool) or budget <= 0:
            raise ValueError(f"budget must be a positive number of seconds, got {budget!r}")
        msg = new_message(text, numbers, self.name)
        log.info(
            "%s: message %s %r numbers %s from client", self.name, msg["id"][:8], msg["text"], msg["input"]
        )
        deadline = t0 + budget - self.margin
        self._receive(msg, received)
        trace: list[dict] = []
        lap_ms: list[float] = []
        mid = msg["id"]
        try:
            while True:
                lap_budget = min(self.lap_budget, deadline - time.monotonic())
                if lap_budget < 2 * self.margin:
                    raise RuntimeError(
                        f"ring from {self.name}: not done within {budget:.2f} s after {msg['lap'] - 1} laps"
                    )
                with self._lock:
                    self._waiting[mid] = None
                t = time.perf_counter()
                got = self._pass_on(msg, lap_budget + self.margin)
                with self._lock:
                    back = self._waiting.pop(mid)
                lap_ms.append((time.perf_counter() - t) * 1000)
                if back is None or got != receipt(back):
                    raise RuntimeError(
                        f"ring from {self.name}: lap {msg['lap']} ended without the message "
                        f"coming back (receipt {got!r})"
                    )
                msg = back
                trace.extend(msg["trace"])
                if done(msg):
                    break
                if msg["lap"] >= self.max_laps:
                    raise RuntimeError(
                        f"ring from {self.name}: numbers not done after {self.max_laps} laps (ring_max_laps)"
                    )
                msg["lap"] += 1
                msg["trace"] = []
        finally:
            with self._lock:
                self._waiting.pop(mid, None)
        res = result_of(msg, trace, lap_ms, (time.monotonic() - t0) * 1000)
        log.info(
            "%s: message %s done: gcd %s lcm %s in %d laps",
            self.name,
            msg["id"][:8],
            res["gcd"],
            res["lcm"],
            res["laps"],
        )
        return res


# ---------------------------------------------------------------- servers -----------------------------------


class _Signals:
    """SIGTERM/SIGINT -> a clean stop, whenever they come: also while the server is still starting up.

    Install before anything else; serve(daemon, on_stop) runs the daemon until a signal, then on_stop() and
    daemon.shutdown() (once). The signal handler only sets a flag and starts a thread: no locks in it.
    """

    def __init__(self):
        self.stopping = threading.Event()
        self._action = None
        self._old = {s: signal.signal(s, self._handler) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handler(self, signum, frame):
        if not self.stopping.is_set():
            self.stopping.set()
            log.info("%s received, stopping", signal.Signals(signum).name)
            if self._action is not None:
                threading.Thread(target=self._action, name="stop", daemon=True).start()

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)

    def serve(self, daemon, on_stop=None) -> None:
        once = threading.Lock()

        def stop():
            if not once.acquire(blocking=False):
                return
            try:
                if on_stop is not None:
                    on_stop()
            finally:
                daemon.shutdown()

        self._action = stop
        if self.stopping.is_set():  # the signal came before _action was set
            threading.Thread(target=stop, name="stop", daemon=True).start()
        try:
            daemon.requestLoop()
        finally:
            daemon.close()


def serve_nameserver(settings) -> int:
    key = config.require(settings, "hmac_key")
    Pyro4 = _pyro(server=True, idle_timeout=settings.ring_idle_timeout)
    signals = _Signals()
    try:
        try:
            uri, daemon, _ = Pyro4.naming.startNS(
                host=settings.ns_host, port=settings.ns_port, enableBroadcast=False, hmac=key
            )
        except OSError as exc:
            raise LabnodesError(
                f"cannot bind the name server to {settings.ns_host}:{settings.ns_port}: {exc.strerror or exc}"
            ) from None
        log.info("name server running on %s (%s)", daemon.locationStr, uri)
        signals.serve(daemon)
    finally:
        signals.restore()
    log.info("name server stopped")
    return 0


def _register(ns_args, name: str, uri: str, wait: float, stopping: threading.Event) -> None:
    """Register name -> uri, retrying while the name server is unreachable, for at most `wait` seconds
    (or until `stopping` is set)."""
    Pyro4 = _pyro()
    deadline = time.monotonic() + wait
    delay = 0.1
    while not stopping.is_set():
        try:
            with ns_proxy(*ns_args, timeout=max(1.0, min(5.0, wait))) as ns:
                ns.register(name, uri, safe=False)
            return
        except Pyro4.errors.CommunicationError as exc:
            if "hmac" in str(exc).lower() or time.monotonic() + delay > deadline:
                raise LabnodesError(
                    f"cannot register {name} in the name server at {ns_args[0]}:{ns_args[1]}: {exc}"
                ) from None
            log.info("name server at %s:%s not reachable yet (%s), retrying", ns_args[0], ns_args[1], exc)
            stopping.wait(delay)
            delay = min(delay * 2, 2.0)


def _unregister(ns_args, name: str, uri: str) -> None:
    Pyro4 = _pyro()
    try:
        with ns_proxy(*ns_args, timeout=2.0) as ns:
            if str(ns.lookup(name)) == uri:
                ns.remove(name)
                log.info("unregistered %s", name)
    except Pyro4.errors.PyroError as exc:
        log.warning("could not unregister %s: %s", name, exc)


def _keep_registered(ns_args, name: str, uri: str, stop: threading.Event, interval: float) -> None:
    """Every `interval` s: if the name server forgot `name` (it restarted), register it again.

    A name that now points at another node is left alone (a replacement node wins), with a warning.
    """
    Pyro4 = _pyro()
    while not stop.wait(interval):
        try:
            with ns_proxy(*ns_args, timeout=max(1.0, min(5.0, interval))) as ns:
                try:
                    current = str(ns.lookup(name))
                except Pyro4.errors.NamingError:
                    if stop.is_set():
                        return
                    ns.register(name, uri)
                    log.info("name server had forgotten %s: registered it again", name)
                    continue
            if current != uri:
                log.warning("%s is now registered to %s, not to this node (%s)", name, current, uri)
        except Pyro4.errors.PyroError as exc:
            log.warning("cannot check registration of %s: %s", name, exc)


def serve_ring_node(
    settings, name: str, next_name: str, register_wait: float = 30.0, check_interval: float = 10.0
) -> int:
    key = config.require(settings, "hmac_key")
    try:
        check_node_name(name)
        check_node_name(next_name)
    except ValueError as exc:
        raise LabnodesError(str(exc)) from None
    Pyro4 = _pyro(server=True, idle_timeout=settings.ring_idle_timeout)
    signals = _Signals()
    try:
        return _serve_ring_node(Pyro4, signals, settings, key, name, next_name, register_wait, check_interval)
    finally:
        signals.restore()


def _serve_ring_node(Pyro4, signals, settings, key, name, next_name, register_wait, check_interval) -> int:
    try:
        daemon = Pyro4.Daemon(host=settings.ring_host, port=settings.ring_port)
    except OSError as exc:
        raise LabnodesError(
            f"cannot bind ring node {name} to {settings.ring_host}:{settings.ring_port}: "
            f"{exc.strerror or exc}"
        ) from None
    daemon._pyroHmacKey = key
    ns_args = (settings.ns_host, settings.ns_port, key)
    link = _Link(name, next_name, *ns_args)
    node = RingNode(
        name,
        next_name,
        ring_timeout=settings.ring_timeout,
        max_laps=settings.ring_max_laps,
        address=daemon.locationStr,
        forward=link.relay,
    )
    Pyro4.expose(RingNode)
    uri = str(daemon.register(node, objectId=registration_name(name)))
    reg = registration_name(name)
    try:
        _register(ns_args, reg, uri, register_wait, signals.stopping)
    except BaseException:
        daemon.close()
        raise
    if signals.stopping.is_set():  # stopped while waiting for the name server: nothing registered
        daemon.close()
        log.info("ring node %s stopped before it was registered", name)
        return 0
    log.info(
        "ring node %s on %s (host %s) registered as %s, next is %s",
        name,
        daemon.locationStr,
        node.host,
        reg,
        next_name,
    )
    stop_checks = threading.Event()
    threading.Thread(
        target=_keep_registered,
        args=(ns_args, reg, uri, stop_checks, check_interval),
        name="registration",
        daemon=True,
    ).start()

    def on_stop():
        stop_checks.set()
        _unregister(ns_args, reg, uri)

    signals.serve(daemon, on_stop=on_stop)
    link.close()
    log.info("ring node %s stopped", name)
    return 0


# ---------------------------------------------------------------- client ------------------------------------


def send(
    ns_host: str, ns_port: int, hmac_key: str, start: str, message: str, numbers, timeout: float
) -> dict:
    """Ask the ring node `start` to send `message` with `numbers` round the ring; return its result dict.

    Every failure raises LabnodesError with one line naming what failed (for a hop: which hop).
    """
    try:
        a, b = parse_numbers(numbers) if isinstance(numbers, str) else check_numbers(numbers)
        check_text(message)
        check_node_name(start)
    except ValueError as exc:
        raise LabnodesError(str(exc)) from None
    if not hmac_key:
        raise LabnodesError("hmac_key is not set: the ring refuses clients without the key")
    Pyro4 = _pyro()
    reg = registration_name(start)
    deadline = time.monotonic() + timeout
    try:
        with ns_proxy(ns_host, ns_port, hmac_key, timeout) as ns:
            uri = ns.lookup(reg)
    except Pyro4.errors.NamingError:
        raise LabnodesError(
            f"start node {start} is not registered in the name server at {ns_host}:{ns_port}"
        ) from None
    except Pyro4.errors.PyroError as exc:
        raise LabnodesError(f"name server at {ns_host}:{ns_port}: {_describe(exc)}") from None
    timeout = deadline - time.monotonic()  # what is left for the start node
    if timeout <= 0:
        raise LabnodesError(f"name server at {ns_host}:{ns_port} took the whole timeout to answer")
    try:
        with _proxy(uri, hmac_key, timeout) as p:
            return p.start(message, [a, b], timeout)
    except (ValueError, RuntimeError) as exc:
        if not _is_remote(exc):
            raise
        raise LabnodesError(str(exc)) from None
    except Pyro4.errors.TimeoutError:
        raise LabnodesError(f"start node {start} did not answer within {timeout:.2f} s") from None
    except Pyro4.errors.PyroError as exc:
        raise LabnodesError(f"start node {start} at {str(uri).split('@')[-1]}: {_describe(exc)}") from None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if "hmac" in text.lower():
        return f"refused: wrong HMAC key? ({text})"
    return text or type(exc).__name__


# ---------------------------------------------------------------- CLI ---------------------------------------


def _add_ns_flags(p) -> None:
    p.add_argument("--ns-host", dest="ns_host", metavar="H", help="name server address (setting ns_host)")
    p.add_argument(
        "--ns-port", dest="ns_port", metavar="P", type=int, help="name server port (setting ns_port)"
    )


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "nameserver",
        help="run the Pyro4 name server (foreground)",
        description="Run a Pyro4 name server with the HMAC key from the settings.",
    )
    p.add_argument("--host", dest="ns_host", metavar="H", help="address to bind (setting ns_host)")
    p.add_argument("--port", dest="ns_port", metavar="P", type=int, help="port to bind (setting ns_port)")
    p.set_defaults(func=_cmd_nameserver)

    ring = subparsers.add_parser(
        "ring",
        help="Pyro4 ring: serve a node or send a message round",
        description="Pyro4 ring nodes (see `python -m pydoc labnodes.ring`).",
    )
    rsub = ring.add_subparsers(dest="ring_command", required=True, metavar="COMMAND")

    s = rsub.add_parser("serve", help="run one ring node (foreground)")
    s.add_argument("--name", required=True, help="this node's name (registered as labkit.ring.NAME)")
    s.add_argument("--next", required=True, dest="next_name", metavar="NEXT", help="the successor's name")
    s.add_argument("--host", dest="ring_host", metavar="H", help="address to bind and advertise (ring_host)")
    s.add_argument("--port", dest="ring_port", metavar="P", type=int, help="port, 0 = any free (ring_port)")
    s.add_argument(
        "--register-wait",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds to keep retrying registration while the name server is unreachable (30)",
    )
    s.add_argument(
        "--check-interval",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds between checks that the name server still knows this node (10)",
    )
    _add_ns_flags(s)
    s.set_defaults(func=_cmd_serve)

    c = rsub.add_parser("send", help="send a message round the ring and print every hop")
    c.add_argument(
        "--start", required=True, metavar="NAME", help="the ring node that starts and ends the lap"
    )
    c.add_argument("--message", default="hello", metavar="TEXT", help="message text (default: hello)")
    c.add_argument(
        "--numbers", default="48,18", metavar="A,B", help="two integers for gcd/lcm (default 48,18)"
    )
    c.add_argument(
        "--timeout", type=float, metavar="S", help="seconds to wait in all (default 2 x ring_timeout)"
    )
    c.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_ns_flags(c)
    c.set_defaults(func=_cmd_send)


def _cmd_nameserver(args, settings) -> int:
    return serve_nameserver(settings)


def _cmd_serve(args, settings) -> int:
    if args.register_wait < 0 or args.check_interval <= 0:
        raise LabnodesError("--register-wait must be >= 0 and --check-interval > 0")
    return serve_ring_node(
        settings,
        args.name,
        args.next_name,
        register_wait=args.register_wait,
        check_interval=args.check_interval,
    )


def _cmd_send(args, settings) -> int:
    from labnodes import output

    key = config.require(settings, "hmac_key")
    try:
        numbers = parse_numbers(args.numbers)
    except ValueError as exc:
        raise LabnodesError(str(exc)) from None
    timeout = args.timeout if args.timeout is not None else timeouts(settings.ring_timeout)["client"]
    if timeout <= 0:
        raise LabnodesError("--timeout must be positive")
    res = send(settings.ns_host, settings.ns_port, key, args.start, args.message, numbers, timeout)
    if args.json:
        output.as_json(res)
        return 0
    t0 = res["trace"][0]["received"]
    rows = [
        (
            i,
            r["node"],
            r["host"],
            r["address"],
            f"{(r['received'] - t0) * 1000:+.2f}",
            r["lap"],
            f"{r['numbers'][0]},{r['numbers'][1]}",
        )
        for i, r in enumerate(res["trace"], 1)
    ]
    output.table(rows, ["hop", "node", "host", "address", "+ms", "lap", "numbers"])
    a, b = res["input"]
    print(
        f"message {res['message']!r} from {res['start']}: gcd({a},{b}) = {res['gcd']}, "
        f"lcm = {res['lcm']}, {res['laps']} laps, lap time median {statistics.median(res['lap_ms']):.2f} ms, "
        f"total {res['total_ms']:.2f} ms"
    )
    return 0
