"""Unit tests of the ring's pure logic: numbers, Euclid steps, messages, traces, laps (no Pyro, no sockets).

The ring of RingNode objects below is wired by direct calls that copy the message (as Pyro's by-value
transport does); the Pyro transport itself is tested in tests/integration/test_ring_loopback.py.
"""

import copy
import logging
import math

import pytest

from labnodes import ring


@pytest.mark.parametrize(
    "text, expected",
    [
        ("48,18", (48, 18)),
        (" 48 , 18 ", (48, 18)),
        ("0,0", (0, 0)),
        ("7,0", (7, 0)),
        (f"{10**30 - 1},1", (10**30 - 1, 1)),
    ],
)
def test_parse_numbers_accepts_two_non_negative_integers(text, expected):
    assert ring.parse_numbers(text) == expected


@pytest.mark.parametrize(
    "text, reason",
    [
        ("-48,18", "negative"),
        ("48,-18", "negative"),
        (f"{10**30},1", "less than 10**30"),
        ("1" * 40 + ",1", "less than 10**30"),
        ("48,18,6", "two numbers separated by a comma"),
        ("48", "two numbers separated by a comma"),
        ("", "two numbers separated by a comma"),
        (",", "decimal digits 0-9"),
        ("a,b", "decimal digits 0-9"),
        ("4.5,2", "decimal digits 0-9"),
        ("0x10,2", "decimal digits 0-9"),
        ("١٢,3", "decimal digits 0-9"),
    ],
)
def test_parse_numbers_refuses_bad_input_with_a_reason(text, reason):
    with pytest.raises(ValueError, match=reason.replace("*", r"\*")):
        ring.parse_numbers(text)


@pytest.mark.parametrize("value", [[1], [1, 2, 3], (1.0, 2), [True, 2], ["1", 2], [-1, 2], "48,18", None])
def test_check_numbers_refuses_what_is_not_two_integers_in_range(value):
    with pytest.raises(ValueError):
        ring.check_numbers(value)


@pytest.mark.parametrize(
    "a, b, after", [(48, 18, (18, 12)), (18, 12, (12, 6)), (6, 0, (6, 0)), (0, 5, (5, 0)), (5, 7, (7, 5))]
)
def test_euclid_step_is_one_step_and_stops_at_b_zero(a, b, after):
    assert ring.euclid_step(a, b) == after


@pytest.mark.parametrize(
    "a, b, gcd, lcm",
    [
        (48, 18, 6, 144),
        (0, 0, 0, 0),
        (0, 5, 5, 0),
        (7, 0, 7, 0),
        (1, 1, 1, 1),
        (10**30, 10**30 - 1, 1, 10**30 * (10**30 - 1)),
    ],
)
def test_euclid_steps_then_gcd_lcm_give_the_edge_cases_right(a, b, gcd, lcm):
    x, y = a, b
    while y:
        x, y = ring.euclid_step(x, y)
    assert ring.gcd_lcm(a, b, x) == (gcd, lcm)


def test_new_message_has_every_field_and_an_empty_trace():
    msg = ring.new_message("hi", [48, 18], "pyro1")
    assert set(msg) == {"id", "origin", "text", "input", "numbers", "lap", "trace"}
    assert (msg["origin"], msg["text"], msg["input"], msg["numbers"], msg["lap"], msg["trace"]) == (
        "pyro1",
        "hi",
        [48, 18],
        [48, 18],
        1,
        [],
    )
    assert ring.check_message(msg) is msg


def test_receive_steps_the_numbers_and_appends_a_trace_record():
    msg = ring.new_message("hi", [48, 18], "pyro1")
    ring.receive(msg, "pyro2", "host2", "10.0.0.2:4000", 123.5)
    assert msg["numbers"] == [18, 12]
    assert msg["trace"] == [
        {
            "node": "pyro2",
            "host": "host2",
            "address": "10.0.0.2:4000",
            "received": 123.5,
            "lap": 1,
            "numbers": [18, 12],
        }
    ]


@pytest.mark.parametrize("text", [None, 5, "x" * (ring.MAX_TEXT + 1)])
def test_message_text_must_be_a_short_string(text):
    with pytest.raises(ValueError, match="message text"):
        ring.new_message(text, [1, 2], "pyro1")


@pytest.mark.parametrize("field, value", [("lap", "1"), ("trace", None), ("numbers", [1]), ("origin", 3)])
def test_check_message_refuses_a_malformed_message(field, value):
    msg = ring.new_message("hi", [1, 2], "pyro1")
    msg[field] = value
    with pytest.raises(ValueError):
        ring.check_message(msg)


@pytest.mark.parametrize("name", ["", "a b", "x" * 65, "ring/1", None])
def test_node_names_are_simple_tokens(name):
    with pytest.raises(ValueError, match="ring node name"):
        ring.check_node_name(name)


def test_timeout_formula_nests_inner_timeouts_inside_outer_ones():
    t = ring.timeouts(5.0)
    assert t == {"margin": 0.5, "lap": 9.0, "client": 10.0}
    # hop k of a lap waits lap - (k-1)*margin: still >= T for a ring of 9 nodes
    assert t["lap"] - 8 * t["margin"] >= 5.0


def test_the_lap_budget_grows_with_the_ring_so_its_last_hop_still_gets_a_full_hop_timeout():
    assert ring.timeouts(5.0, 3) == ring.timeouts(5.0)  # the course's ring: as before
    for size in (9, 10, 24, 50, 100):
        t = ring.timeouts(5.0, size)
        assert t["lap"] - (size - 1) * t["margin"] >= 5.0
    assert ring.timeouts(5.0, 50)["lap"] == pytest.approx(29.5)


def make_ring(names, max_laps=100, ring_size=None):
    """RingNode objects wired by direct calls; each call gets a copy of the message, as over Pyro."""
    nodes = {}
    for i, name in enumerate(names):
        nxt = names[(i + 1) % len(names)]
        nodes[name] = ring.RingNode(
            name,
            nxt,
            ring_timeout=5.0,
            ring_size=len(names) if ring_size is None else ring_size,
            max_laps=max_laps,
            host=f"h-{name}",
            address=f"10.0.0.{i + 1}:4000",
            forward=lambda msg, timeout, nxt=nxt: nodes[nxt].relay(copy.deepcopy(msg), timeout),
        )
    return nodes


def test_one_lap_visits_every_node_in_order_and_returns_to_the_start():
    nodes = make_ring(["pyro1", "pyro2", "pyro3"])
    res = nodes["pyro1"].start("hi", [48, 18], 10.0)
    assert [r["node"] for r in res["trace"]] == ["pyro1", "pyro2", "pyro3", "pyro1"]
    assert [r["numbers"] for r in res["trace"]] == [[18, 12], [12, 6], [6, 0], [6, 0]]
    assert (res["gcd"], res["lcm"], res["laps"], len(res["lap_ms"])) == (6, 144, 1, 1)
    assert res["message"] == "hi" and res["start"] == "pyro1" and res["input"] == [48, 18]


def test_every_hop_logs_one_line_on_its_node_saying_where_from_the_step_and_where_to(caplog):
    nodes = make_ring(["pyro1", "pyro2", "pyro3"])
    with caplog.at_level(logging.INFO, logger="labnodes.ring"):
        res = nodes["pyro1"].start("hi", [48, 18], 10.0)
    mid = res["id"][:8]
    assert [r.getMessage() for r in caplog.records] == [
        f"pyro1: message {mid} lap 1 hop 1 from client, numbers [48, 18] -> [18, 12], text 'hi', on to pyro2 "
        "(timeout 9.00 s)",
        f"pyro2: message {mid} lap 1 hop 2 from pyro1, numbers [18, 12] -> [12, 6], on to pyro3 (timeout 8.50 s)",
        f"pyro3: message {mid} lap 1 hop 3 from pyro2, numbers [12, 6] -> [6, 0], on to pyro1 (timeout 8.00 s)",
        f"pyro1: message {mid} lap 1 hop 4 from pyro3, numbers [6, 0] -> [6, 0]: back at its origin",
        f"pyro1: message {mid} done: gcd 6 lcm 144 in 1 laps",
    ]


def test_a_lap_after_the_first_is_logged_where_it_starts_without_the_client(caplog):
    nodes = make_ring(["a", "b"])
    with caplog.at_level(logging.INFO, logger="labnodes.ring"):
        res = nodes["a"].start("x", [13, 8], 10.0)  # Fibonacci neighbours: several laps
    starts = [r.getMessage() for r in caplog.records if r.getMessage().startswith("a: ") and "on to b" in r.getMessage()]
    assert res["laps"] > 1 and len(starts) == res["laps"]
    assert "from client" in starts[0]
    assert all(m.startswith(f"a: message {res['id'][:8]} lap {i}, on to b") for i, m in enumerate(starts[1:], 2))


def test_a_ring_of_fifty_nodes_goes_round_in_order():
    names = [f"r{i}" for i in range(1, 51)]
    res = make_ring(names)["r1"].start("big", [832040, 514229], 60.0)
    first_lap = [r["node"] for r in res["trace"] if r["lap"] == 1]
    assert first_lap == names + ["r1"]
    assert res["gcd"] == 1 and res["laps"] >= 1


def test_a_ring_longer_than_its_ring_size_setting_runs_out_of_time_with_a_clear_error():
    # what a 100-host inventory hit before the playbook wrote ring_size: the 18th nested hop had no budget left
    names = [f"r{i}" for i in range(1, 51)]
    with pytest.raises(RuntimeError, match=r"ring hop r\d+ -> r\d+ failed: no time left"):
        make_ring(names, ring_size=3)["r1"].start("big", [48, 18], 60.0)


def test_fibonacci_neighbours_need_several_laps_and_every_lap_ends_at_the_start():
    nodes = make_ring(["pyro1", "pyro2", "pyro3"])
    res = nodes["pyro2"].start("fib", [832040, 514229], 10.0)
    assert (res["gcd"], res["lcm"]) == (1, 832040 * 514229)
    assert res["laps"] > 1 and len(res["lap_ms"]) == res["laps"]
    # lap 1: start's own step + 3 hops; every later lap: 3 hops ending at the start
    assert len(res["trace"]) == 1 + 3 * res["laps"]
    for lap in range(1, res["laps"] + 1):
        assert [r for r in res["trace"] if r["lap"] == lap][-1]["node"] == "pyro2"
    assert res["trace"][-1]["numbers"] == [1, 0]


@pytest.mark.parametrize("a, b", [(0, 0), (0, 9), (9, 0), (10**30 - 1, 3), (2**64 + 1, 2**32 + 7)])
def test_ring_gcd_matches_math_gcd(a, b):
    nodes = make_ring(["a", "b"])
    res = nodes["a"].start("m", [a, b], 10.0)
    assert res["gcd"] == math.gcd(a, b)
    assert res["lcm"] == (0 if a == 0 or b == 0 else a * b // math.gcd(a, b))


def test_more_laps_than_ring_max_laps_is_an_error():
    nodes = make_ring(["pyro1", "pyro2", "pyro3"], max_laps=2)
    with pytest.raises(RuntimeError, match="not done after 2 laps"):
        nodes["pyro1"].start("fib", [832040, 514229], 10.0)


def test_a_ring_of_one_node_calls_itself():
    nodes = make_ring(["solo"])
    res = nodes["solo"].start("m", [48, 18], 10.0)
    assert res["gcd"] == 6 and {r["node"] for r in res["trace"]} == {"solo"}


def test_a_failing_hop_error_passes_back_unchanged():
    nodes = make_ring(["pyro1", "pyro2", "pyro3"])

    def dead(msg, timeout):
        raise RuntimeError("ring hop pyro2 -> pyro3 failed: pyro3 is not registered in the name server")

    nodes["pyro2"].forward = dead
    with pytest.raises(RuntimeError, match="pyro2 -> pyro3 failed: pyro3 is not registered"):
        nodes["pyro1"].start("hi", [48, 18], 10.0)


@pytest.mark.parametrize("budget", [0, -1, "5", True])
def test_start_refuses_a_bad_budget(budget):
    nodes = make_ring(["pyro1"])
    with pytest.raises(ValueError, match="budget"):
        nodes["pyro1"].start("hi", [48, 18], budget)


def test_a_budget_too_small_for_a_lap_is_an_error_not_a_hang():
    nodes = make_ring(["pyro1", "pyro2", "pyro3"])
    with pytest.raises(RuntimeError, match="not done within"):
        nodes["pyro1"].start("hi", [48, 18], 0.5)


def test_start_refuses_bad_numbers_before_sending():
    nodes = make_ring(["pyro1", "pyro2"])
    with pytest.raises(ValueError, match="negative"):
        nodes["pyro1"].start("hi", [-4, 2], 10.0)


def test_origin_refuses_a_message_it_is_not_waiting_for():
    nodes = make_ring(["pyro1", "pyro2"])
    forged = ring.new_message("forged", [48, 18], "pyro1")
    with pytest.raises(ValueError, match="did not send it"):
        nodes["pyro2"].relay(forged, 5.0)  # pyro2 passes it on to pyro1, which never started it


def test_relay_returns_a_receipt_and_hands_the_message_to_the_waiting_origin():
    nodes = make_ring(["pyro1", "pyro2"])
    msg = ring.new_message("hi", [48, 18], "pyro1")
    nodes["pyro1"]._waiting[msg["id"]] = None  # what start() does before each lap
    assert nodes["pyro2"].relay(copy.deepcopy(msg), 5.0) == {"id": msg["id"], "lap": 1, "back_at": "pyro1"}
    back = nodes["pyro1"]._waiting[msg["id"]]
    assert [r["node"] for r in back["trace"]] == ["pyro2", "pyro1"] and back["numbers"] == [12, 6]


class PooledProxy:
    """Stands in for a Pyro4 proxy in a Link's pool: records every timeout set on it (a socket settimeout())."""

    def __init__(self, timeout: float):
        self._timeout, self.timeouts_set = timeout, []

    @property
    def _pyroTimeout(self) -> float:
        return self._timeout

    @_pyroTimeout.setter
    def _pyroTimeout(self, value: float) -> None:
        self.timeouts_set.append(value)
        self._timeout = value

    def _pyroRelease(self) -> None:
        pass


def test_a_pooled_link_gets_each_calls_timeout_and_is_not_set_again_when_it_has_it():
    from labnodes.ring_link import Link

    link = Link("a", "b", "127.0.0.1", 1, "k" * 32)
    link.uri = "PYRO:labkit.ring.b@127.0.0.2:9000"
    pooled = PooledProxy(5.0)
    link._give(link.uri, pooled)
    uri, p, reused = link._take(2.5)
    assert (p, reused, p._pyroTimeout) == (pooled, True, 2.5)
    link._give(uri, p)
    link._take(2.5)
    assert pooled.timeouts_set == [2.5]


def test_a_successor_that_does_not_answer_is_told_apart_from_one_that_refuses():
    """Under a network partition the hop said "process gone?" (it was not: its packets were dropped)."""
    from labnodes.pyro_client import pyro
    from labnodes.ring_link import Link

    link = Link("a", "b", "127.0.0.1", 1, "k" * 32)
    uri = "PYRO:labkit.ring.b@10.0.0.2:9000"
    for cause, why in [(TimeoutError("timed out"), "the network or a firewall between them?"),
                       (ConnectionRefusedError(111, "Connection refused"), "process gone?")]:
        exc = pyro().errors.CommunicationError(f"cannot connect to ('10.0.0.2', 9000): {cause}")
        exc.__cause__ = cause  # as Pyro4's proxy sets it (Pyro4.core.Proxy.__pyroCreateConnection)
        assert str(link._gone(uri, exc)) == (f"ring hop a -> b failed: b is registered at 10.0.0.2:9000 but does "
                                             f"not answer ({why}): cannot connect to ('10.0.0.2', 9000): {cause}")
