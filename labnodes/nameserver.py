"""`labnodes nameserver`: a Pyro4 name server bound to ns_host:ns_port with the HMAC key (hmac_key), no
broadcast, guarded against connections that never authenticate (`pyro_server`). Runs in the foreground until
SIGTERM/SIGINT, then exits 0.

With ns_storage set (a file path; a cluster's name server host has one) it keeps its names in that sqlite file
(Pyro4's sql storage), so a restart forgets nothing. In memory, a restarted name server knows no ring node until
each one's next check registers it again (up to --check-interval, 10 s, later): `fab run-ring` failed with
"start node pyro1 is not registered" for that long after a `fab provision` that restarted the programs, when a
ring node had registered with the name server that was about to stop."""

from __future__ import annotations

import logging
import sqlite3

from labnodes import LabnodesError, config, pyro_server

log = logging.getLogger("labnodes.ring")  # one logger for every part of the ring program


def serve_nameserver(settings) -> int:
    key = config.require(settings, "hmac_key")
    Pyro4 = pyro_server.configure(settings.ring_idle_timeout)
    signals = pyro_server.Signals()
    storage = f"sql:{settings.ns_storage}" if settings.ns_storage else None
    try:
        try:
            uri, daemon, _ = Pyro4.naming.startNS(
                host=settings.ns_host, port=settings.ns_port, enableBroadcast=False, hmac=key, storage=storage
            )
        except OSError as exc:
            raise LabnodesError(
                f"cannot bind the name server to {settings.ns_host}:{settings.ns_port}: {exc.strerror or exc}"
            ) from None
        except sqlite3.Error as exc:
            raise LabnodesError(f"cannot keep the name server's names in {settings.ns_storage}: {exc}") from None
        log.info("name server running on %s (%s), names %s", daemon.locationStr, uri,
                 f"kept in {settings.ns_storage}" if storage else "in memory")
        signals.serve(daemon)
    finally:
        signals.restore()
    log.info("name server stopped")
    return 0

