"""Pyro4 ring: a name server and ring nodes passing a message and two numbers round, one Euclid step per hop.

Commands
    labnodes nameserver [--host H] [--port P] [--storage FILE]
        A Pyro4 name server bound to H:P (settings ns_host, ns_port; default 127.0.0.1:9090), HMAC key
        required (setting hmac_key). Runs in the foreground until SIGTERM/SIGINT, then exits 0. With FILE
        (setting ns_storage; a cluster's name server has one) it keeps the names in that sqlite file, so a
        restart forgets none (labnodes.nameserver says why).
    labnodes ring serve --name NAME --next NEXT [--host H] [--port P] [--ns-host ..] [--ns-port ..]
        One ring node (the same program on every ring host). It binds H:P (ring_host, ring_port; port 0 = any
        free port), registers itself in the name server as `labkit.ring.<NAME>` (retrying for up to
        --register-wait seconds while the name server is unreachable, so nodes may start in any order), passes
        messages to the node registered as `labkit.ring.<NEXT>`, and on SIGTERM/SIGINT unregisters itself (if
        the name still points at it) and exits 0. Every --check-interval seconds it checks that the name
        server still knows it and registers again if not (a name server restarted without storage forgets
        everything).
    labnodes ring send --start NAME --message TEXT --numbers A,B [--timeout S] [--json] [--ns-host ..]
                       [--ns-port ..]
        Finds NAME in the name server, asks it to send the message round the ring, prints every hop (a table,
        or JSON with --json) and a summary line.
        Library form: `send(ns_host, ns_port, hmac_key, start, message, numbers, timeout) -> dict`.

Wire: Pyro4 with the json serializer (daemons also accept serpent; never pickle: labnodes.pyro_client says
why), the HMAC key on the name server, on every daemon and on every proxy, and a client-side timeout on every
proxy. Ring daemons use the thread-pool server type (the multiplex type deadlocks on the nested call back into
the start node), guarded so that a connection gets a worker thread only once its whole HMAC handshake has
arrived (labnodes.pyro_server): idle or half-open connections from anyone, key or not, wait thread-less for at
most 5 s and cannot starve the 40 threads of the name server or a node. A daemon closes links that stay idle
for ring_idle_timeout seconds; a node whose link to its successor was closed that way reconnects and retries
once.

Remote methods of a ring node
    start(text, numbers, budget) -> result   called by `ring send` on the start node
    relay(message, budget) -> receipt        called by the predecessor, one call per hop;
                                             receipt = {"id", "lap", "back_at": origin} once the lap is round
    info() -> {"name", "next", "host", "address"}

Numbers: two integers 0 <= n < 10**30, written `A,B` on the command line (spaces allowed around them): the
one rule of `labnodes.numbers`, with its messages, the same as Celery's and the math server's. Anything else
(one or three numbers, negatives, non-integers, empty, 10**30 or more) is refused with that one-line message
before anything is sent, and a node refuses such numbers in a message (ValueError with the same message).

Message (a dict, travels by value):
    {"id": hex, "origin": start node name, "text": str (<= 1000 chars), "input": [A, B],
     "numbers": [a, b] (current), "lap": int (1-based), "trace": [record, ...] (this lap's records)}
Trace record, appended by every node that receives the message:
    {"node": name, "host": socket.gethostname(), "address": "ip:port" of the node's daemon,
     "received": epoch seconds (float), "lap": int, "numbers": [a, b] after this node's step}
Euclid step, done by every receiving node: (a, b) -> (b, a mod b) while b != 0; with b == 0 the numbers pass
unchanged and a is the gcd.

Laps. The start node records the message it gets from the client (its step is the first hop), then runs each
lap as one nested chain: start -> n2 -> n3 -> ... -> start.relay. The start's own relay sees that it is the
origin, records the arrival (and does its step), hands the message to the start() thread waiting for it in the
same process and returns a small receipt at once; the receipt unwinds through every hop back to the start
node (the message itself travels the ring once, not back through it). The start node adds the lap's records to
the full trace and starts the next lap itself (with an empty trace) if b != 0. So one message never holds more
than two threads of a node (start + arrival), however many laps it needs, and its size does not grow with the
laps. A message whose origin is a node that is not waiting for it is refused (ValueError). After ring_max_laps
laps (setting of the start node) with b still != 0 the send fails. The result: {"message", "start", "id",
"input", "gcd", "lcm", "laps", "lap_ms": [per lap], "total_ms", "trace"}; gcd(0, 0) = 0 and lcm is 0 when
either number is 0, else a*b // gcd. "+ms" columns compare clocks of different hosts: they are only as good
as the hosts' time sync.

Errors (Python builtin exceptions across the wire, so any Pyro client can read them; the CLI prints one line,
exit 1; a client with the wrong HMAC key is refused by the name server and the nodes before any call):
    ValueError    bad numbers, text or message (the text says which)
    RuntimeError  "ring hop A -> B failed: B is not registered in the name server"
                  "ring hop A -> B failed: B is registered at ADDR but does not answer (...)"  (process gone)
                  "ring hop A -> B failed: B did not answer within S s"                      (hung hop)
                  "ring hop A -> B failed: B refused the connection: HMAC key mismatch (...)"
                  "ring hop A -> B failed: name server at H:P unreachable (...)"
                  "ring from A: numbers not done after N laps (ring_max_laps)"
                  "ring from A: not done within S s after N laps"
An error from a later hop passes back unchanged through the earlier hops, so the client sees the most specific
(innermost) failure. `ring send --json` gives a hop's failure a code (hop-unregistered, hop-gone, hop-timeout,
hop-wrong-key, hop-nameserver, hop-no-time: ring_lap.HOP_FAILURES) and, as its address, the node the hop could
not reach (for hop-nameserver, the name server's H:P).

Timeouts (T = ring_timeout, the per-hop setting; m = T/10, the margin one hop needs to pass an error back):
    a node that was given `budget` seconds calls its successor with timeout budget - m and hands it that as
    its own budget, so the inner calls always time out first and their error reaches each caller in time.
    lap budget   L = T + max(8, N-1)*m, N = ring_size (the number of ring hosts, which the playbook writes from
                 the inventory's ring group): the start node's timeout for one lap. Hop k of a lap waits
                 L - (k-1)*m >= T for every k <= N, so the last hop of the longest lap still gets a full T.
                 For the course's ring of 3: L = 1.8 T; for a ring of 50: L = 5.9 T.
    client       C = L + 2*m (= 2 T for N <= 9, `ring send` default --timeout): the start node finishes (or
                 fails) by C - m, each lap getting min(L, what is left).
    So a hung hop is reported by its predecessor after at most L seconds, never a hang.
    Why nested calls and not an iterative lap: the nested chain is the daisy chain the course teaches (each
    server calls the next through a proxy), every error comes back to the client along the same calls, and a
    lap holds one thread per node, so a node's 40 threads carry 38 concurrent messages at any ring length;
    the price is that a hung hop deep in a long ring is reported after up to L, not T.

Where it lives (each module readable alone; this one holds the spec above and the CLI, and re-exports the
library names below so `labnodes.ring.send`, `.RingNode`, `.ns_proxy`, ... keep working):
    ring_lap      the lap protocol, pure: names, numbers (labnodes.numbers), message, Euclid step, timeouts
    ring_node     RingNode: one hop, and the start node's laps
    ring_link     a node's pooled, re-opened Pyro links to its successor (the retries above)
    ring_serve    `ring serve`: the node's daemon, registration in the name server
    nameserver    `nameserver`: the name server program
    ring_client   `ring send` as a library call
    pyro_client   Pyro4 proxies with these settings; pyro_server: Pyro4 server settings, the guarded thread
                  pool (no worker thread before a complete handshake), SIGTERM handling
"""

from __future__ import annotations

import statistics

from labnodes import LabnodesError, config, nameserver
from labnodes.pyro_client import describe as _describe  # noqa: F401  (kept for callers of the old names)
from labnodes.pyro_client import is_remote as _is_remote  # noqa: F401
from labnodes.pyro_client import ns_proxy
from labnodes.pyro_client import proxy as _proxy  # noqa: F401
from labnodes.ring_client import send
from labnodes.ring_lap import (
    MARGIN_FRACTION,
    MAX_TEXT,
    MAX_TRACE,
    NAME_PREFIX,
    NAME_RE,
    SIZING_HOPS,
    check_message,
    check_node_name,
    check_numbers,
    check_text,
    done,
    euclid_step,
    gcd_lcm,
    new_message,
    parse_numbers,
    receipt,
    receive,
    registration_name,
    result_of,
    timeouts,
)
from labnodes.ring_link import MAX_IDLE_LINKS, Link
from labnodes.ring_node import RingNode
from labnodes.ring_serve import serve_ring_node

serve_nameserver = nameserver.serve_nameserver

__all__ = [
    "MARGIN_FRACTION", "MAX_IDLE_LINKS", "MAX_TEXT", "MAX_TRACE", "NAME_PREFIX", "NAME_RE", "SIZING_HOPS", "Link",
    "RingNode", "check_message", "check_node_name", "check_numbers", "check_text", "done", "euclid_step",
    "gcd_lcm", "new_message", "ns_proxy", "parse_numbers", "receipt", "receive", "register", "registration_name",
    "result_of", "send", "serve_nameserver", "serve_ring_node", "timeouts",
]


def _add_ns_flags(p) -> None:
    p.add_argument("--ns-host", dest="ns_host", metavar="H", help="name server address (setting ns_host)")
    p.add_argument(
        "--ns-port", dest="ns_port", metavar="P", type=int, help="name server port (setting ns_port)"
    )


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "nameserver",
        help="run the Pyro4 name server (foreground)",
        description="Run a Pyro4 name server with the HMAC key from the settings.",
    )
    p.add_argument("--host", dest="ns_host", metavar="H", help="address to bind (setting ns_host)")
    p.add_argument("--port", dest="ns_port", metavar="P", type=int, help="port to bind (setting ns_port)")
    p.add_argument("--storage", dest="ns_storage", metavar="FILE",
                   help="sqlite file that keeps the names across restarts (setting ns_storage; default: in memory)")
    p.set_defaults(func=_cmd_nameserver)

    ring = subparsers.add_parser(
        "ring",
        help="Pyro4 ring: serve a node or send a message round",
        description="Pyro4 ring nodes (see `python -m pydoc labnodes.ring`).",
    )
    rsub = ring.add_subparsers(dest="ring_command", required=True, metavar="COMMAND")

    s = rsub.add_parser("serve", help="run one ring node (foreground)")
    s.add_argument("--name", required=True, help="this node's name (registered as labkit.ring.NAME)")
    s.add_argument("--next", required=True, dest="next_name", metavar="NEXT", help="the successor's name")
    s.add_argument("--host", dest="ring_host", metavar="H", help="address to bind and advertise (ring_host)")
    s.add_argument("--port", dest="ring_port", metavar="P", type=int, help="port, 0 = any free (ring_port)")
    s.add_argument(
        "--register-wait",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds to keep retrying registration while the name server is unreachable (30)",
    )
    s.add_argument(
        "--check-interval",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds between checks that the name server still knows this node (10)",
    )
    _add_ns_flags(s)
    s.set_defaults(func=_cmd_serve)

    c = rsub.add_parser("send", help="send a message round the ring and print every hop")
    c.add_argument(
        "--start", required=True, metavar="NAME", help="the ring node that starts and ends the lap"
    )
    c.add_argument("--message", default="hello", metavar="TEXT", help="message text (default: hello)")
    c.add_argument(
        "--numbers", default="48,18", metavar="A,B", help="two integers for gcd/lcm (default 48,18)"
    )
    c.add_argument(
        "--timeout", type=config.seconds, metavar="S", help="seconds to wait in all (default 2 x ring_timeout)"
    )
    c.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_ns_flags(c)
    c.set_defaults(func=_cmd_send)


def _cmd_nameserver(args, settings) -> int:
    return nameserver.serve_nameserver(settings)


def _cmd_serve(args, settings) -> int:
    if args.register_wait < 0 or args.check_interval <= 0:
        raise LabnodesError("--register-wait must be >= 0 and --check-interval > 0")
    return serve_ring_node(
        settings,
        args.name,
        args.next_name,
        register_wait=args.register_wait,
        check_interval=args.check_interval,
    )


def _cmd_send(args, settings) -> int:
    from labnodes import output

    key = config.require(settings, "hmac_key")
    try:
        numbers = parse_numbers(args.numbers)
    except ValueError as exc:
        raise LabnodesError(str(exc)) from None
    timeout = args.timeout if args.timeout is not None else timeouts(settings.ring_timeout, settings.ring_size)["client"]
    res = send(settings.ns_host, settings.ns_port, key, args.start, args.message, numbers, timeout)
    if args.json:
        output.as_json(res)
        return 0
    t0 = res["trace"][0]["received"]
    rows = [
        (
            i,
            r["node"],
            r["host"],
            r["address"],
            f"{(r['received'] - t0) * 1000:+.2f}",
            r["lap"],
            f"{r['numbers'][0]},{r['numbers'][1]}",
        )
        for i, r in enumerate(res["trace"], 1)
    ]
    output.table(rows, ["hop", "node", "host", "address", "+ms", "lap", "numbers"])
    a, b = res["input"]
    print(
        f"message {res['message']!r} from {res['start']}: gcd({a},{b}) = {res['gcd']}, "
        f"lcm = {res['lcm']}, {res['laps']} laps, lap time median {statistics.median(res['lap_ms']):.2f} ms, "
        f"total {res['total_ms']:.2f} ms"
    )
    return 0

