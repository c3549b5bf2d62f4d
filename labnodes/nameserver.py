"""`labnodes nameserver`: a Pyro4 name server bound to ns_host:ns_port with the HMAC key (hmac_key), no
broadcast, guarded against connections that never authenticate (`pyro_server`). Runs in the foreground until
SIGTERM/SIGINT, then exits 0."""

from __future__ import annotations

import logging

from labnodes import LabnodesError, config, pyro_server

log = logging.getLogger("labnodes.ring")  # one logger for every part of the ring program


def serve_nameserver(settings) -> int:
    key = config.require(settings, "hmac_key")
    Pyro4 = pyro_server.configure(settings.ring_idle_timeout)
    signals = pyro_server.Signals()
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

