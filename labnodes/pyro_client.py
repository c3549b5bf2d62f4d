"""Pyro4 on the client side, with the ring's settings on every proxy: HMAC key, json, a timeout, no
silent retries. Pyro4 is imported lazily (the CLI imports every program module at start-up).

Serializers: labnodes' proxies speak json (the stdlib's C codec: a ring message of about 500 bytes costs about
15 us to encode and decode, against about 75 us in serpent, Pyro4's pure-Python default). Daemons accept json and
serpent (SERIALIZERS), so a course's own Pyro4 client with Pyro4's defaults still works; both carry plain data
only. pickle, dill and marshal, which can run code or crash the reader on crafted input, are refused."""

from __future__ import annotations

SERIALIZERS = ("json", "serpent")  # what every labnodes daemon accepts; labnodes' own proxies use the first


def pyro():
    """The Pyro4 module (imported on first use)."""
    import Pyro4
    import Pyro4.naming  # noqa: F401  (startNS, NamingError)

    return Pyro4


def proxy(uri, hmac_key: str, timeout: float):
    """A proxy with per-object settings: HMAC key, json, client-side timeout, no silent retries."""
    p = pyro().Proxy(uri)
    p._pyroHmacKey = hmac_key
    p._pyroSerializer = SERIALIZERS[0]
    p._pyroTimeout = timeout
    p._pyroMaxRetries = 0
    return p


def ns_proxy(ns_host: str, ns_port: int, hmac_key: str, timeout: float):
    """Proxy for the name server at ns_host:ns_port (addressed directly, no broadcast lookup)."""
    return proxy(f"PYRO:Pyro.NameServer@{ns_host}:{ns_port}", hmac_key, timeout)


def is_remote(exc: BaseException) -> bool:
    """True for an exception raised by the remote method itself (Pyro attaches the remote traceback)."""
    return getattr(exc, "_pyroTraceback", None) is not None


def describe(exc: BaseException) -> str:
    """One line for a Pyro error, naming a likely key mismatch."""
    text = str(exc)
    if "hmac" in text.lower():
        return f"refused: wrong HMAC key? ({text})"
    return text or type(exc).__name__
