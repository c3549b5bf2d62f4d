"""Pyro4 server side: the process-wide settings, and a thread-pool transport that only hands a connection to a
worker thread once its whole handshake message has arrived.

Why: Pyro4's thread-pool server gives every accepted connection a worker thread at once (40 at most), and the
thread then waits up to COMMTIMEOUT for the HMAC handshake. About 40 idle TCP connections from anyone (no key
needed) held every thread for 60 s; past 40, the accept loop itself blocked trying to deny the next connection.
Every `ring send` then failed. Measured on loopback: 60 idle connections to the name server made the client's
lookup time out; with this transport the ring answers as usual under the same load.

How (GuardedThreadpool): accepted connections first wait in a "lobby", watched by the accept loop itself
with a selector and no thread each. A connection leaves the lobby for the pool only when its first message
(Pyro's 24-byte header, annotations and data: the MSG_CONNECT handshake with its HMAC) is wholly in the
kernel's receive buffer (seen with MSG_PEEK), so the worker thread checks the HMAC without waiting. A worker
is then held only by a peer that sent a complete handshake: with a wrong key that costs microseconds, with
the right key it is a real client. A connection that sends nothing, or only part of a handshake, is closed
after HANDSHAKE_TIMEOUT seconds; a handshake larger than MAX_HANDSHAKE bytes is closed at once; at most
MAX_LOBBY connections wait, the oldest is closed to make room for a new one (a real client sends its
handshake within milliseconds of connecting, so it is never the oldest). Once past the lobby, a connection
is served exactly as by Pyro4 (COMMTIMEOUT, the same pool, "no free workers" when all are busy).

`configure(idle_timeout)` sets what Pyro4 only offers globally, in a server process: thread-pool server type,
json or serpent only (SERIALIZERS), idle-link timeout, TCP_NODELAY, and installs the guarded transport for
every daemon made after it (the name server's and the ring node's). `Signals` turns SIGTERM/SIGINT into a
clean stop of a daemon.
"""

from __future__ import annotations

import collections
import logging
import selectors
import signal
import socket
import struct
import threading
import time

from labnodes.pyro_client import SERIALIZERS, pyro

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 5.0  # seconds a new connection may take to send its whole handshake message
MAX_HANDSHAKE = 64 * 1024  # bytes; a Pyro handshake is a few hundred
MAX_LOBBY = 256  # connections waiting for their handshake at once; file descriptors stay bounded
_HEADER = struct.Struct("!4sHHHHiHHHH")  # Pyro4.message.Message.header_format
_POLL = 0.05  # seconds between looks at connections that sent part of their handshake


def handshake_size(head: bytes) -> int | None:
    """Total bytes of the first message, from its 24-byte header; None if it is not a Pyro header."""
    tag, _ver, _type, _flags, _seq, data_size, _ser, anns_size, _r, _sum = _HEADER.unpack(head)
    if tag != b"PYRO" or data_size < 0:
        return None
    return _HEADER.size + anns_size + data_size


def _make_transport():
    from Pyro4.configuration import config
    from Pyro4.socketserver.threadpool import NoFreeWorkersError
    from Pyro4.socketserver.threadpoolserver import ClientConnectionJob, SocketServer_Threadpool

    class GuardedThreadpool(SocketServer_Threadpool):
        """SocketServer_Threadpool whose connections wait in a thread-less lobby until their handshake is in."""

        def init(self, daemon, host, port, unixsocket=None):
            super().init(daemon, host, port, unixsocket)
            self._lobby: collections.OrderedDict[socket.socket, tuple] = collections.OrderedDict()
            self._partial: set[socket.socket] = set()  # sent part of a handshake: looked at every _POLL s

        def events(self, eventsockets):
            assert self.sock in eventsockets
            timeout = _POLL if self._partial else min(config.POLLTIMEOUT or 1.0, 1.0)
            for key, _ in self._selector.select(timeout):
                if key.fileobj is self.sock:
                    self._accept()
                else:
                    self._look(key.fileobj)
            for csock in list(self._partial):
                self._look(csock)
            self._expire()

        def _accept(self):
            try:
                csock, caddr = self.sock.accept()
            except (socket.timeout, BlockingIOError, InterruptedError):
                return
            if self.shutting_down:
                csock.close()
                return
            if len(self._lobby) >= MAX_LOBBY:
                oldest = next(iter(self._lobby))
                log.warning("too many connections waiting for a handshake: closing %s", self._lobby[oldest][0])
                self._drop(oldest)
            csock.setblocking(False)
            self._lobby[csock] = (caddr, time.monotonic() + HANDSHAKE_TIMEOUT)
            self._selector.register(csock, selectors.EVENT_READ, self)

        def _look(self, csock):
            """Hand csock to the pool if its whole handshake is in; close it if it cannot become one."""
            if csock not in self._lobby:
                return
            try:
                head = csock.recv(_HEADER.size, socket.MSG_PEEK)
                if not head:
                    self._drop(csock)  # closed before its handshake
                    return
                if len(head) < _HEADER.size:
                    self._wait_for_more(csock)
                    return
                total = handshake_size(head)
                if total is None or total > MAX_HANDSHAKE:
                    log.warning("%s sent no Pyro handshake: closed", self._lobby[csock][0])
                    self._drop(csock)  # no worker thread for garbage; the client sees the connection close
                    return
                if len(csock.recv(total, socket.MSG_PEEK)) < total:
                    self._wait_for_more(csock)
                    return
            except BlockingIOError:
                return
            except OSError:
                self._drop(csock)
                return
            self._to_pool(csock)

        def _wait_for_more(self, csock):
            if csock not in self._partial:  # level-triggered: stop watching it, or select() would spin
                self._selector.unregister(csock)
                self._partial.add(csock)

        def _leave_lobby(self, csock):
            caddr, _ = self._lobby.pop(csock)
            if csock in self._partial:
                self._partial.discard(csock)
            else:
                self._selector.unregister(csock)
            return caddr

        def _drop(self, csock):
            self._leave_lobby(csock)
            csock.close()

        def _expire(self):
            now = time.monotonic()
            while self._lobby:
                csock, (caddr, deadline) = next(iter(self._lobby.items()))
                if deadline > now:
                    break
                log.info("%s sent no complete handshake within %g s: closed", caddr, HANDSHAKE_TIMEOUT)
                self._drop(csock)

        def _to_pool(self, csock):
            caddr = self._leave_lobby(csock)
            csock.setblocking(True)
            csock.settimeout(config.COMMTIMEOUT or None)
            job = ClientConnectionJob(csock, caddr, self.daemon)
            try:
                self.pool.process(job)
            except NoFreeWorkersError:  # the handshake is already in: denying it does not block
                job.denyConnection("no free workers, increase server threadpool size")

        def close(self):  # may run in another thread (shutdown) while the loop still runs: tolerate races
            for csock in list(getattr(self, "_lobby", ())):
                try:
                    self._drop(csock)
                except (KeyError, ValueError, OSError):
                    csock.close()
            super().close()

    return GuardedThreadpool


def configure(idle_timeout: float):
    """In a server process, before any daemon is made: Pyro4's global settings, and the guarded transport."""
    import Pyro4.socketserver.threadpoolserver as threadpoolserver

    Pyro4 = pyro()  # with labnodes' json serializer (pyro_client)
    Pyro4.config.SERVERTYPE = "thread"
    Pyro4.config.SERIALIZER = "json"
    Pyro4.config.SERIALIZERS_ACCEPTED = set(SERIALIZERS)
    Pyro4.config.COMMTIMEOUT = idle_timeout  # server side: idle links close; every proxy sets its own
    Pyro4.config.SOCK_NODELAY = True
    if not getattr(threadpoolserver.SocketServer_Threadpool, "guarded", False):
        transport = _make_transport()
        transport.guarded = True
        # Pyro4.core.Daemon imports SocketServer_Threadpool from this module each time it makes a daemon
        threadpoolserver.SocketServer_Threadpool = transport
    return Pyro4


class Signals:
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

