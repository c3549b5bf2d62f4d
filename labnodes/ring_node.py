"""The ring node: the one class every ring host serves (Pyro-exposed by `ring_serve`), its laps and hops.

`RingNode(name, next_name, forward=...)`: relay() is one hop (record, Euclid step, pass on; at the origin,
hand the message to the waiting start() and return a receipt); start() runs lap after lap until the numbers
are done. `forward(msg, timeout) -> receipt` reaches the successor; without Pyro (unit tests) it can be any
function. The protocol and its timeouts are specified in `labnodes.ring`'s docstring.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

from labnodes.ring_lap import check_message, check_node_name, new_message, receipt, receive, result_of, timeouts
from labnodes.ring_lap import done, hop_failed
from labnodes import logs

log = logging.getLogger("labnodes.ring")  # one logger for every part of the ring program
ARRIVAL = "%s: message %s lap %d hop %d from %s, numbers %s -> %s"  # how a hop's log line starts


class RingNode:
    """One ring node: receives a message, does its Euclid step, records itself and passes it to `next_name`.

    `forward(msg, timeout) -> receipt` calls the successor's relay; on a ring host it is `ring_link.Link.relay`.
    The same class runs on every ring host; only name and next_name differ.
    """

    def __init__(
        self,
        name: str,
        next_name: str,
        *,
        ring_timeout: float = 5.0,
        ring_size: int = 3,
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
        t = timeouts(ring_timeout, ring_size)
        self.margin, self.lap_budget = t["margin"], t["lap"]
        self._lock = threading.Lock()
        # message id -> the message back from its lap (None while it is still going round)
        self._waiting: dict[str, dict | None] = {}

    def info(self) -> dict:
        return {"name": self.name, "next": self.next_name, "host": self.host, "address": self.address}

    def _receive(self, msg: dict, received: float) -> tuple:
        """Record this node's arrival and step; the words of its log line (where from, the numbers) for ARRIVAL,
        which is formatted only if the line is written."""
        before = msg["numbers"]
        receive(msg, self.name, self.host, self.address, received)  # msg["numbers"] is a new list after it
        if len(msg["trace"]) > 1:
            prev = msg["trace"][-2]["node"]
        else:
            prev = "client" if msg["origin"] == self.name else msg["origin"]
        return self.name, msg["id"][:8], msg["lap"], len(msg["trace"]), prev, before, msg["numbers"]

    def _pass_on(self, msg: dict, budget: float, what: str, words: tuple) -> dict:
        """Call the successor with this hop's budget; logs the hop as one line (`what % words`, and where to)."""
        timeout = budget - self.margin
        if timeout < self.margin:
            raise hop_failed(
                self.name, self.next_name, "hop-no-time",
                f" ({budget:.2f} s budget; ring too long for ring_timeout {self.ring_timeout} s?)",
            )
        logs.info(log, what + ", on to %s (timeout %.2f s)", *words, self.next_name, timeout)
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
        arrival = self._receive(msg, received)
        if msg["origin"] == self.name:
            with self._lock:
                if msg["id"] not in self._waiting:
                    raise ValueError(
                        f"message {msg['id']} claims origin {self.name} but {self.name} did not send it"
                    )
                self._waiting[msg["id"]] = msg  # for the start() thread waiting for this lap
            logs.info(log, ARRIVAL + ": back at its origin", *arrival)
            return receipt(msg)
        return self._pass_on(msg, budget, ARRIVAL, arrival)

    def start(self, text, numbers, budget) -> dict:
        """Send a new message round the ring from this node, lap after lap, until the numbers are done."""
        received = time.time()
        t0 = time.monotonic()
        if not isinstance(budget, (int, float)) or isinstance(budget, bool) or budget <= 0:
            raise ValueError(f"budget must be a positive number of seconds, got {budget!r}")
        msg = new_message(text, numbers, self.name)
        deadline = t0 + budget - self.margin
        what, words = ARRIVAL + ", text %r", (*self._receive(msg, received), msg["text"])  # from the client
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
                got = self._pass_on(msg, lap_budget + self.margin, what, words)
                what, words = "%s: message %s lap %d", (self.name, mid[:8], msg["lap"] + 1)  # the next lap's
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

