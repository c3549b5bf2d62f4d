"""`labnodes ring send` as a library call: find the start node in the name server and ask it to send a
message round the ring. `send(ns_host, ns_port, hmac_key, start, message, numbers, timeout) -> dict`."""

from __future__ import annotations

import time

from labnodes import LabnodesError
from labnodes.pyro_client import describe, is_remote, ns_proxy, proxy, pyro, wrong_key
from labnodes.ring_lap import (
    check_node_name,
    check_numbers,
    check_text,
    hop_code,
    parse_numbers,
    registration_name,
)


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
    Pyro4 = pyro()
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
        raise LabnodesError(
            f"name server at {ns_host}:{ns_port}: {describe(exc)}",
            code=_code(exc),
            address=f"{ns_host}:{ns_port}",
        ) from None
    timeout = deadline - time.monotonic()  # what is left for the start node
    if timeout <= 0:
        raise LabnodesError(
            f"name server at {ns_host}:{ns_port} took the whole timeout to answer",
            code="timeout",
            address=f"{ns_host}:{ns_port}",
        )
    try:
        with proxy(uri, hmac_key, timeout) as p:
            return p.start(message, [a, b], timeout)
    except (ValueError, RuntimeError) as exc:
        if not is_remote(exc):
            raise
        raise LabnodesError(str(exc), **hop_code(str(exc))) from None  # a hop's failure: its kind and where
    except Pyro4.errors.TimeoutError:
        raise LabnodesError(
            f"start node {start} did not answer within {timeout:.2f} s",
            code="timeout",
            address=str(uri).split("@")[-1],
        ) from None
    except Pyro4.errors.PyroError as exc:
        where = str(uri).split("@")[-1]
        raise LabnodesError(
            f"start node {start} at {where}: {describe(exc)}", code=_code(exc), address=where
        ) from None


def _code(exc: BaseException) -> str:
    """LabnodesError's code for a Pyro error from the name server or the start node."""
    Pyro4 = pyro()
    if wrong_key(exc):
        return "wrong-key"
    if isinstance(exc, Pyro4.errors.TimeoutError):
        return "timeout"
    return "connect" if isinstance(exc, Pyro4.errors.CommunicationError) else ""
