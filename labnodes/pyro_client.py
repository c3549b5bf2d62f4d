"""Pyro4 on the client side, with the ring's settings on every proxy: HMAC key, json, a timeout, no
silent retries. Pyro4 is imported lazily (the CLI imports every program module at start-up).

Serializers: labnodes' proxies speak json (the stdlib's C codec: a ring message of about 500 bytes costs about
15 us to encode and decode, against about 75 us in serpent, Pyro4's pure-Python default). Daemons accept json and
serpent (SERIALIZERS), so a course's own Pyro4 client with Pyro4's defaults still works; both carry plain data
only. pickle, dill and marshal, which can run code or crash the reader on crafted input, are refused.

Pyro4's json serializer, made cheaper without changing a byte on the wire (`PlainJson`, installed in place of
Pyro4's own by pyro()). Pyro4 walks every decoded call and answer in Python (`recreate_classes`) to find dicts
marked `__class__`, and builds a new JSONEncoder for every encode: a third of what carrying a ring message costs
(measured: about 5 of 11 us per hop, encode and decode). PlainJson encodes with one encoder made once, and skips
the walk when the text cannot hold such a mark: neither `__class__` nor a `\\u` escape (the only way to write
it otherwise) is in it. Any other text (a remote exception, which Pyro4 sends as a marked dict) takes Pyro4's own
path, so what the serializer returns is the same in every case (tests/unit/test_pyro_client.py)."""

from __future__ import annotations

SERIALIZERS = ("json", "serpent")  # what every labnodes daemon accepts; labnodes' own proxies use the first
_plain_json_installed = False


def pyro():
    """The Pyro4 module (imported on first use), with PlainJson as its json serializer."""
    import Pyro4
    import Pyro4.naming  # noqa: F401  (startNS, NamingError)

    if not _plain_json_installed:
        _install_plain_json()
    return Pyro4


def plain_json_class():
    """PlainJson (see the module docstring): Pyro4's JsonSerializer, minus the walk and the encoder per call."""
    import json

    from Pyro4.util import JsonSerializer

    def plain(text: str) -> bool:
        return "__class__" not in text and "\\u" not in text

    class PlainJson(JsonSerializer):
        def __init__(self):
            super().__init__()
            self._encode = json.JSONEncoder(ensure_ascii=False, default=self.default).encode

        def dumpsCall(self, obj, method, vargs, kwargs):
            return self._encode({"object": obj, "method": method, "params": vargs, "kwargs": kwargs}).encode()

        def dumps(self, data):
            return self._encode(data).encode()

        def loadsCall(self, data):
            text = self._convertToBytes(data).decode()
            if not plain(text):
                return super().loadsCall(data)
            call = json.loads(text)
            return call["object"], call["method"], call["params"], call["kwargs"]

        def loads(self, data):
            text = self._convertToBytes(data).decode()
            return json.loads(text) if plain(text) else super().loads(data)

    return PlainJson


def _install_plain_json() -> None:
    global _plain_json_installed
    from Pyro4 import util

    ser = plain_json_class()()
    util._serializers["json"] = util._serializers_by_id[ser.serializer_id] = ser
    _plain_json_installed = True


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


def wrong_key(exc: BaseException) -> bool:
    """True for a Pyro error that is a refused HMAC key (Pyro4 says so only in its message: "hmac mismatch")."""
    return "hmac" in str(exc).lower()


def describe(exc: BaseException) -> str:
    """One line for a Pyro error, naming a likely key mismatch."""
    text = str(exc)
    if wrong_key(exc):
        return f"refused: wrong HMAC key? ({text})"
    return text or type(exc).__name__
