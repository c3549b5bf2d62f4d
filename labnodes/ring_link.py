"""A ring node's link to its successor: a small pool of Pyro proxies, found in the name server, reused, and
re-opened when the successor closed an idle link or moved.

`Link(src, dst, ns_host, ns_port, hmac_key).relay(msg, timeout)` calls the successor's relay() and returns its
receipt. An error raised by the successor (or a hop after it) passes back unchanged; every failure to reach
the successor becomes RuntimeError("ring hop SRC -> DST failed: why") (ring_lap.hop_failed; the code that
`ring send --json` gives it in brackets), why being one of:
    "DST did not answer within S s"                               (hung hop; never retried)     [hop-timeout]
    "DST refused the connection: HMAC key mismatch (...)"                                       [hop-wrong-key]
    "DST is not registered in the name server"                                                  [hop-unregistered]
    "name server at H:P unreachable (...)"                                                      [hop-nameserver]
    "DST is registered at ADDR but does not answer (process gone?): ..."  (refused: nothing listens there)
    "DST is registered at ADDR but does not answer (the network or a firewall between them?): ..."  (timed out)
                                                                                                [hop-gone]
At most two retries, within the same timeout, each for one reason:
    1. a pooled link the successor had closed (its idle timeout, COMMTIMEOUT): one fresh connection to the
       same address;
    2. the successor does not answer at that address: look it up again, and if it moved (a restarted node
       gets a new port), one call at the new address.
"""

from __future__ import annotations

import logging
import threading
import time

from labnodes.pyro_client import is_remote, ns_proxy, proxy, pyro, wrong_key
from labnodes.ring_lap import hop_failed, registration_name

log = logging.getLogger("labnodes.ring")

MAX_IDLE_LINKS = 8  # idle connections a node keeps to its successor for reuse


class Link:
    """The connections from one node to its successor.

    Idle proxies wait in a small pool; each call takes one, so concurrent messages never share a proxy (a
    shared proxy serializes calls and can deadlock two messages going round in opposite laps).
    """

    def __init__(self, src: str, dst: str, ns_host: str, ns_port: int, hmac_key: str):
        self.src, self.dst = src, dst
        self.ns_host, self.ns_port, self.hmac_key = ns_host, ns_port, hmac_key
        self.uri: str | None = None
        self.idle: list[
            tuple[str, object]
        ] = []  # (uri, proxy): the uri kept as text, not made again per call
        self.lock = threading.Lock()

    def relay(self, msg: dict, timeout: float) -> dict:
        """Call the successor's relay(msg, timeout), waiting at most `timeout` s in all; return its receipt."""
        deadline = time.monotonic() + timeout
        uri, p, reused = self._take(timeout)
        out, exc = self._call(uri, p, msg, timeout)
        if exc is None:
            return out
        left = deadline - time.monotonic()
        if reused and isinstance(exc, pyro().errors.ConnectionClosedError) and left > 0:  # retry 1
            log.info("%s: link to %s was closed, reconnecting", self.src, self.dst)
            out, exc = self._call(uri, proxy(uri, self.hmac_key, left), msg, left)
            if exc is None:
                return out
            left = deadline - time.monotonic()
        self._forget(uri)
        gone = self._gone(uri, exc)
        if left <= 0:
            raise gone
        new_uri = self._lookup(left)  # raises "not registered" / "name server unreachable"
        if new_uri == uri:
            raise gone
        log.info("%s: %s moved to %s, retrying", self.src, self.dst, new_uri)  # retry 2
        with self.lock:
            self.uri = new_uri
        left = deadline - time.monotonic()
        out, exc = self._call(new_uri, proxy(new_uri, self.hmac_key, left), msg, left)
        if exc is None:
            return out
        self._forget(new_uri)
        raise self._gone(new_uri, exc)

    def close(self) -> None:
        with self.lock:
            for _, p in self.idle:
                p._pyroRelease()
            self.idle.clear()

    # --- one call --------------------------------------------------------------------------------------

    def _call(self, uri: str, p, msg: dict, timeout: float):
        """One call through proxy p: (receipt, None), or (None, the connection error that may be retried).

        Raises what must not be retried: the successor's own error (unchanged), a timeout (a hung hop), an
        HMAC refusal, anything that is not a connection error."""
        Pyro4 = pyro()
        try:
            out = p.relay(msg, timeout)
        except Exception as exc:
            if is_remote(exc):  # the successor (or a hop after it) raised: pass it back unchanged
                self._give(uri, p)
                raise
            p._pyroRelease()
            if isinstance(exc, Pyro4.errors.TimeoutError):
                raise self._fail("hop-timeout", f" {timeout:.2f} s") from None
            if not isinstance(exc, Pyro4.errors.CommunicationError):
                raise self._fail("hop", f"{type(exc).__name__}: {exc}") from None
            if wrong_key(exc):
                self._forget(uri)
                raise self._fail("hop-wrong-key", f" ({exc})") from None
            return None, exc
        self._give(uri, p)
        return out, None

    # --- the pool and the name server ------------------------------------------------------------------

    def _fail(self, code: str, rest: str = "") -> RuntimeError:
        return hop_failed(self.src, self.dst, code, rest)

    def _gone(self, uri: str, exc: BaseException) -> RuntimeError:
        where = uri.split("@")[-1]
        # refused: nothing listens there (a node that ended); no answer at all: packets dropped on the way
        why = (
            "the network or a firewall between them?"
            if isinstance(exc.__cause__, TimeoutError)
            else "process gone?"
        )
        return self._fail("hop-gone", f" {where} but does not answer ({why}): {exc}")

    def _lookup(self, timeout: float) -> str:
        Pyro4 = pyro()
        try:
            with ns_proxy(self.ns_host, self.ns_port, self.hmac_key, timeout) as ns:
                uri = ns.lookup(registration_name(self.dst))
        except Pyro4.errors.NamingError:
            raise self._fail("hop-unregistered") from None
        except Pyro4.errors.PyroError as exc:
            raise self._fail(
                "hop-nameserver", f" {self.ns_host}:{self.ns_port} unreachable ({exc})"
            ) from None
        return str(uri)

    def _take(self, timeout: float):
        """(uri, a proxy to it for one call, whether it was pooled: a pooled link may have been closed since)."""
        with self.lock:
            uri = self.uri
            p_uri, p = self.idle.pop() if self.idle else (None, None)
        if uri is None:
            uri = self._lookup(timeout)
            with self.lock:
                self.uri = uri
        if p is None or p_uri != uri:
            if p is not None:
                p._pyroRelease()
            return uri, proxy(uri, self.hmac_key, timeout), False
        if p._pyroTimeout != timeout:  # a hop's budget is mostly the same lap after lap: no settimeout() then
            p._pyroTimeout = timeout
        return uri, p, True

    def _give(self, uri, p) -> None:
        with self.lock:
            if uri == self.uri and len(self.idle) < MAX_IDLE_LINKS:
                self.idle.append((uri, p))
                return
        p._pyroRelease()

    def _forget(self, uri: str) -> None:
        with self.lock:
            if self.uri == uri:
                self.uri = None
            for _, p in self.idle:
                p._pyroRelease()
            self.idle.clear()
