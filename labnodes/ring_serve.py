"""`labnodes ring serve`: one ring node as a Pyro4 daemon, registered in the name server and kept registered.

serve_ring_node(settings, name, next_name) binds ring_host:ring_port, registers the node as
`labkit.ring.<name>` (retrying while the name server is unreachable, so nodes may start in any order),
checks every check_interval s that a restarted name server still knows it, and on SIGTERM/SIGINT unregisters
it (if the name still points at it) and returns 0.
"""

from __future__ import annotations

import logging
import threading
import time

from labnodes import LabnodesError, config, pyro_server
from labnodes.pyro_client import ns_proxy, pyro, wrong_key
from labnodes.ring_lap import check_node_name, registration_name
from labnodes.ring_link import Link
from labnodes.ring_node import RingNode

log = logging.getLogger("labnodes.ring")  # one logger for every part of the ring program


def _register(ns_args, name: str, uri: str, wait: float, stopping: threading.Event) -> None:
    """Register name -> uri, retrying while the name server is unreachable, for at most `wait` seconds
    (or until `stopping` is set)."""
    Pyro4 = pyro()
    deadline = time.monotonic() + wait
    delay = 0.1
    while not stopping.is_set():
        try:
            with ns_proxy(*ns_args, timeout=max(1.0, min(5.0, wait))) as ns:
                ns.register(name, uri, safe=False)
            return
        except Pyro4.errors.CommunicationError as exc:
            if wrong_key(exc) or time.monotonic() + delay > deadline:
                raise LabnodesError(
                    f"cannot register {name} in the name server at {ns_args[0]}:{ns_args[1]}: {exc}"
                ) from None
            log.info("name server at %s:%s not reachable yet (%s), retrying", ns_args[0], ns_args[1], exc)
            stopping.wait(delay)
            delay = min(delay * 2, 2.0)


def _unregister(ns_args, name: str, uri: str) -> None:
    Pyro4 = pyro()
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
    Pyro4 = pyro()
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
    Pyro4 = pyro_server.configure(settings.ring_idle_timeout)
    signals = pyro_server.Signals()
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
    link = Link(name, next_name, *ns_args)
    node = RingNode(
        name,
        next_name,
        ring_timeout=settings.ring_timeout,
        ring_size=settings.ring_size,
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

