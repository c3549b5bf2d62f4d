"""The ring's lap protocol, pure (no Pyro, no sockets): node names, the message and its checks, one Euclid step
per hop, the receipt, the result, and the timeout formula. The spec is in `labnodes.ring`'s docstring."""

from __future__ import annotations

import re
import uuid

from labnodes import numbers

NAME_PREFIX = "labkit.ring."
MAX_TEXT = 1000
MAX_TRACE = 1000  # records in one lap's trace, i.e. ring nodes
MARGIN_FRACTION = 0.1  # m = T * MARGIN_FRACTION
SIZING_HOPS = 8  # the lap budget covers at least this many hops beyond the first with a full T each
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


# A hop that cannot reach its successor fails as RuntimeError("ring hop SRC -> DST failed: WHY"): Pyro4 rebuilds
# only builtin exceptions, so the text is all that comes back through the earlier hops. WHY starts as below for
# each kind (DST filled in), so `hop_code` can read the kind back: `ring send --json` reports it as the error's
# code, with DST (the name server's H:P for hop-nameserver) as its address.
HOP_FAILURES = {
    "hop-timeout": "{dst} did not answer within",  # a hung node, or the network to it drops packets
    "hop-wrong-key": "{dst} refused the connection: HMAC key mismatch",
    "hop-unregistered": "{dst} is not registered in the name server",
    "hop-gone": "{dst} is registered at",  # ... ADDR but does not answer: nothing listens there
    "hop-nameserver": "name server at",  # ... H:P unreachable: the hop could not look DST up
    "hop-no-time": "no time left",  # the lap's budget ran out before this hop: ring_timeout too short
    "hop": "",  # anything else
}
HOP_FAILED_RE = re.compile(r"ring hop (\S+) -> (\S+) failed: ")


def hop_failed(src: str, dst: str, code: str, rest: str = "") -> RuntimeError:
    """The failure of the hop src -> dst, of a kind of HOP_FAILURES: its WHY is that kind's start, then `rest`."""
    return RuntimeError(f"ring hop {src} -> {dst} failed: {HOP_FAILURES[code].format(dst=dst)}{rest}")


def hop_code(text: str) -> dict:
    """{"code", "address"} of a hop failure's text (hop_failed), read back; {} for any other text."""
    m = HOP_FAILED_RE.match(text)
    if not m:
        return {}
    dst, why = m[2], text[m.end() :]
    code = next(c for c, start in HOP_FAILURES.items() if why.startswith(start.format(dst=dst)))
    if code == "hop-nameserver":
        return {"code": code, "address": why[len(HOP_FAILURES[code]) :].split()[0]}
    return {"code": code, "address": dst}


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


def timeouts(ring_timeout: float, ring_size: int = 3) -> dict:
    """The timeout formula of the module docstring: margin m, lap budget L and the client's default C.

    A lap of N nodes is N nested calls; the last one must still get a full T, so L covers max(8, N - 1) margins.
    """
    m = ring_timeout * MARGIN_FRACTION
    lap = ring_timeout + max(SIZING_HOPS, ring_size - 1) * m
    return {"margin": m, "lap": lap, "client": lap + 2 * m}

