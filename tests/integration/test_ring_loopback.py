"""Loopback integration: a real Pyro4 name server and ring nodes as `labnodes` subprocesses on 127.0.0.x.

Name server on 127.0.0.10, ring nodes pyro1/pyro2/pyro3 on 127.0.0.11/.12/.13, every process stopped by its
fixture. The client is the `labnodes ring send` CLI (a subprocess too). Waits poll for readiness, bounded.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from labnodes import LabnodesError, ring

KEY = "loopback-test-key"
NS_HOST = "127.0.0.10"
READY_WAIT = 20.0  # seconds a process may take to come up (hang guard, not a timing assertion)


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until(condition, what: str, timeout: float = READY_WAIT, procs=()):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{what}: process exited with {p.returncode}:\n{p.log_text()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Proc(subprocess.Popen):
    def log_text(self) -> str:
        self.logfile.flush()
        with open(self.logfile.name) as fh:
            return fh.read()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Environment for every labnodes process: the key, and no settings leaking in from this machine."""
    cfg = tmp_path_factory.mktemp("cfg") / "labnodes.toml"
    cfg.write_text("")
    e = {k: v for k, v in os.environ.items() if not k.startswith("LABNODES_")}
    e.update(LABNODES_CONFIG=str(cfg), LABNODES_HMAC_KEY=KEY, LABNODES_LOG_LEVEL="INFO")
    return e


@pytest.fixture(scope="module")
def launch(tmp_path_factory, env):
    """launch(args, **env_overrides) -> Proc running `labnodes ARGS`; all stopped at the end of the module."""
    procs: list[Proc] = []
    logdir = tmp_path_factory.mktemp("logs")

    def start(args, **extra):
        logfile = open(logdir / f"{len(procs)}-{args[0]}-{args[-1]}.log", "w")
        p = Proc(
            [sys.executable, "-m", "labnodes", *args],
            env={**env, **extra},
            stdin=subprocess.DEVNULL,
            stdout=logfile,
            stderr=subprocess.STDOUT,
        )
        p.logfile = logfile
        procs.append(p)
        return p

    yield start
    for p in procs:  # signal all first, then wait: they stop in parallel
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)  # in case a test left it stopped
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        p.logfile.close()


def registered(ns_port: int) -> dict:
    """Ring names registered in the name server at NS_HOST:ns_port ({} while it is unreachable)."""
    try:
        with ring.ns_proxy(NS_HOST, ns_port, KEY, 2.0) as ns:
            return ns.list(prefix=ring.NAME_PREFIX)
    except Exception:
        return {}


@pytest.fixture(scope="module")
def ns_port(launch):
    port = free_port(NS_HOST)
    p = launch(["nameserver", "--host", NS_HOST, "--port", str(port)])

    def up():
        try:
            with ring.ns_proxy(NS_HOST, port, KEY, 2.0) as ns:
                ns.ping()
            return True
        except Exception:
            return False

    wait_until(up, "name server", procs=[p])
    return port


@pytest.fixture(scope="module")
def start_ring(launch, ns_port):
    """start_ring({name: (host, next)}, **env) -> {name: Proc}, waiting until every node is registered."""

    def start(nodes: dict, **extra):
        procs = {
            name: launch(
                [
                    "ring",
                    "serve",
                    "--name",
                    name,
                    "--next",
                    nxt,
                    "--host",
                    host,
                    "--ns-host",
                    NS_HOST,
                    "--ns-port",
                    str(ns_port),
                ],
                **extra,
            )
            for name, (host, nxt) in nodes.items()
        }
        wait_until(
            lambda: all(ring.registration_name(n) in registered(ns_port) for n in nodes),
            f"ring nodes {sorted(nodes)} registered",
            procs=procs.values(),
        )
        return procs

    return start


@pytest.fixture(scope="module")
def ring3(start_ring):
    return start_ring(
        {"pyro1": ("127.0.0.11", "pyro2"), "pyro2": ("127.0.0.12", "pyro3"), "pyro3": ("127.0.0.13", "pyro1")}
    )


def send(env, ns_port, start, numbers="48,18", *more, key=KEY, json_out=True, **extra):
    args = [
        sys.executable,
        "-m",
        "labnodes",
        "ring",
        "send",
        "--start",
        start,
        "--message",
        "hello ring",
        f"--numbers={numbers}",
        "--ns-host",
        NS_HOST,
        "--ns-port",
        str(ns_port),
        *more,
    ]
    if json_out:
        args.append("--json")
    return subprocess.run(
        args, env={**env, "LABNODES_HMAC_KEY": key, **extra}, capture_output=True, text=True, timeout=60
    )


def test_message_visits_pyro1_pyro2_pyro3_and_returns_to_pyro1(env, ns_port, ring3):
    out = send(env, ns_port, "pyro1")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    trace = res["trace"]
    assert [r["node"] for r in trace] == ["pyro1", "pyro2", "pyro3", "pyro1"]
    hosts = [r["address"].rsplit(":", 1)[0] for r in trace]
    assert hosts == ["127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.11"]
    assert trace[0]["address"] == trace[3]["address"]
    assert all(r["host"] == socket.gethostname() for r in trace)
    assert [r["received"] for r in trace] == sorted(r["received"] for r in trace)
    assert [r["numbers"] for r in trace] == [[18, 12], [12, 6], [6, 0], [6, 0]]
    assert (res["gcd"], res["lcm"], res["laps"], res["message"], res["input"]) == (
        6,
        144,
        1,
        "hello ring",
        [48, 18],
    )


def test_each_node_writes_its_hop_of_the_message_as_one_line_in_its_log(env, ns_port, ring3):
    """The student's view: each host's log shows the message arrive, what it did and where it went next (the
    hop's line takes configure()'s hot path in a real node, not a LogRecord)."""
    out = send(env, ns_port, "pyro1")
    assert out.returncode == 0, out.stderr
    mid = json.loads(out.stdout)["id"][:8]
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} labnodes\.ring INFO "
    expect = {
        "pyro1": rf"{stamp}pyro1: message {mid} lap 1 hop 4 from pyro3, numbers \[6, 0\] -> \[6, 0\]: back at its origin",
        "pyro2": rf"{stamp}pyro2: message {mid} lap 1 hop 2 from pyro1, numbers \[18, 12\] -> \[12, 6\], on to pyro3 "
        r"\(timeout \d+\.\d\d s\)",
        "pyro3": rf"{stamp}pyro3: message {mid} lap 1 hop 3 from pyro2, numbers \[12, 6\] -> \[6, 0\], on to pyro1 "
        r"\(timeout \d+\.\d\d s\)",
    }
    for node, line in expect.items():
        wait_until(lambda: re.search(rf"^{line}$", ring3[node].log_text(), re.M), f"{node} logged its hop",
                   procs=ring3.values())


def test_fibonacci_neighbours_take_several_laps_and_give_gcd_1(env, ns_port, ring3):
    out = send(env, ns_port, "pyro2", "832040,514229")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert (res["gcd"], res["lcm"]) == (1, 832040 * 514229)
    assert res["laps"] > 1
    assert [r["node"] for r in res["trace"][:4]] == ["pyro2", "pyro3", "pyro1", "pyro2"]
    assert res["trace"][-1]["node"] == "pyro2" and res["trace"][-1]["lap"] == res["laps"]


def test_table_output_lists_every_hop_and_a_summary(env, ns_port, ring3):
    out = send(env, ns_port, "pyro3", "48, 18", json_out=False)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:4] == ["hop", "node", "host", "address"]
    assert [line.split()[1] for line in lines[2:6]] == ["pyro3", "pyro1", "pyro2", "pyro3"]
    assert "gcd(48,18) = 6, lcm = 144, 1 laps" in lines[-1]


@pytest.mark.parametrize(
    "numbers, reason",
    [
        ("-4,2", "negative numbers are not allowed"),
        ("1,2,3", "expected two numbers separated by a comma, like 48,18"),
        (f"{10**30},1", "numbers must be less than 10**30"),
        ("x,1", "numbers must be decimal digits 0-9"),
    ],
)
def test_bad_numbers_are_refused_with_one_line(env, ns_port, ring3, numbers, reason):
    out = send(env, ns_port, "pyro1", numbers)
    assert out.returncode == 1
    assert reason in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_client_with_a_wrong_hmac_key_is_refused(env, ns_port, ring3):
    out = send(env, ns_port, "pyro1", key="not-the-key", json_out=False)
    assert out.returncode == 1
    assert "HMAC" in out.stderr and out.stdout == ""
    with_json = send(env, ns_port, "pyro1", key="not-the-key", json_out=True)
    error = json.loads(with_json.stdout)["error"]  # what labkit's check picks its hint by: the code, not the words
    assert (with_json.returncode, error["code"], error["address"]) == (1, "wrong-key", f"{NS_HOST}:{ns_port}")
    assert error["message"] in with_json.stderr


def test_ring_node_with_a_wrong_hmac_key_is_refused_by_the_name_server(launch, ns_port):
    p = launch(
        [
            "ring",
            "serve",
            "--name",
            "intruder",
            "--next",
            "pyro1",
            "--host",
            "127.0.0.14",
            "--ns-host",
            NS_HOST,
            "--ns-port",
            str(ns_port),
        ],
        LABNODES_HMAC_KEY="not-the-key",
    )
    assert p.wait(timeout=30) == 1
    assert "cannot register" in p.log_text() and "hmac" in p.log_text()
    assert ring.registration_name("intruder") not in registered(ns_port)


def test_name_server_refuses_to_start_without_a_key(launch, env):
    p = launch(["nameserver", "--host", NS_HOST, "--port", str(free_port(NS_HOST))], LABNODES_HMAC_KEY="")
    assert p.wait(timeout=30) == 1
    assert "hmac_key is not set" in p.log_text()


def test_missing_hop_is_named_in_the_error(env, ns_port, start_ring):
    start_ring({"miss1": ("127.0.0.11", "miss2"), "miss2": ("127.0.0.12", "miss3")})  # miss3 never starts
    out = send(env, ns_port, "miss1")
    assert out.returncode == 1
    assert "ring hop miss2 -> miss3 failed: miss3 is not registered in the name server" in out.stderr
    assert json.loads(out.stdout)["error"] | {"message": ""} == {"message": "", "code": "hop-unregistered",
                                                                 "address": "miss3"}


def test_unknown_start_node_is_named_in_the_error(env, ns_port):
    out = send(env, ns_port, "nobody")
    assert out.returncode == 1
    assert "start node nobody is not registered" in out.stderr


def test_killed_hop_is_named_in_the_error(env, ns_port, start_ring):
    procs = start_ring(
        {"kill1": ("127.0.0.11", "kill2"), "kill2": ("127.0.0.12", "kill3"), "kill3": ("127.0.0.13", "kill1")}
    )
    assert send(env, ns_port, "kill1").returncode == 0  # links between the nodes are now open
    procs["kill3"].kill()
    procs["kill3"].wait()
    out = send(env, ns_port, "kill1")
    assert out.returncode == 1
    assert "ring hop kill2 -> kill3 failed: kill3 is registered at 127.0.0.13:" in out.stderr
    assert "does not answer" in out.stderr
    error = json.loads(out.stdout)["error"]
    assert (error["code"], error["address"]) == ("hop-gone", "kill3")


def test_hung_hop_is_named_before_the_client_gives_up(env, ns_port, start_ring):
    nodes = {
        "hang1": ("127.0.0.11", "hang2"),
        "hang2": ("127.0.0.12", "hang3"),
        "hang3": ("127.0.0.13", "hang1"),
    }
    procs = start_ring(nodes, LABNODES_RING_TIMEOUT="1")
    procs["hang3"].send_signal(signal.SIGSTOP)
    try:
        out = send(env, ns_port, "hang1", LABNODES_RING_TIMEOUT="1")
    finally:
        procs["hang3"].send_signal(signal.SIGCONT)
    assert out.returncode == 1
    assert "ring hop hang2 -> hang3 failed: hang3 did not answer within" in out.stderr
    error = json.loads(out.stdout)["error"]
    assert (error["code"], error["address"]) == ("hop-timeout", "hang3")


def test_a_start_node_that_does_not_answer_is_a_timeout_at_its_address(env, ns_port, start_ring):
    """`--json` gave this failure no code, so a program could not tell it from a refusal."""
    procs = start_ring({"stop1": ("127.0.0.11", "stop2"), "stop2": ("127.0.0.12", "stop1")},
                       LABNODES_RING_TIMEOUT="1")
    procs["stop1"].send_signal(signal.SIGSTOP)
    try:
        out = send(env, ns_port, "stop1", LABNODES_RING_TIMEOUT="1")
    finally:
        procs["stop1"].send_signal(signal.SIGCONT)
    error = json.loads(out.stdout)["error"]
    assert (out.returncode, error["code"]) == (1, "timeout") and error["address"].startswith("127.0.0.11:")
    assert error["message"].startswith("start node stop1 did not answer within")


def test_link_closed_by_an_idle_timeout_is_reconnected(env, ns_port, start_ring):
    procs = start_ring(
        {"idle1": ("127.0.0.11", "idle2"), "idle2": ("127.0.0.12", "idle1")}, LABNODES_RING_IDLE_TIMEOUT="0.3"
    )
    assert send(env, ns_port, "idle1").returncode == 0
    time.sleep(1.0)  # deliberately idle for longer than the daemons' idle timeout: they close the links
    out = send(env, ns_port, "idle1")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["gcd"] == 6
    # a node writes its log lines from a writer thread, a moment after the hop (labnodes.logs)
    wait_until(lambda: "link to idle2 was closed, reconnecting" in procs["idle1"].log_text(), "idle1 logged it")


def test_sigterm_stops_a_node_cleanly_and_unregisters_it(ns_port, start_ring):
    procs = start_ring({"term1": ("127.0.0.11", "pyro1")})
    procs["term1"].terminate()
    assert procs["term1"].wait(timeout=30) == 0
    assert ring.registration_name("term1") not in registered(ns_port)
    assert "unregistered labkit.ring.term1" in procs["term1"].log_text()


def test_library_send_returns_the_same_result_as_the_cli(ns_port, ring3):
    res = ring.send(NS_HOST, ns_port, KEY, "pyro1", "lib", [48, 18], 10.0)
    assert [r["node"] for r in res["trace"]] == ["pyro1", "pyro2", "pyro3", "pyro1"]
    assert (res["gcd"], res["lcm"]) == (6, 144)


def test_node_registers_again_after_the_name_server_restarts(launch):
    port = free_port(NS_HOST)
    ns_args = ["nameserver", "--host", NS_HOST, "--port", str(port)]
    ns = launch(ns_args)
    node = launch(
        [
            "ring",
            "serve",
            "--name",
            "phoenix",
            "--next",
            "phoenix",
            "--host",
            "127.0.0.11",
            "--ns-host",
            NS_HOST,
            "--ns-port",
            str(port),
            "--check-interval",
            "0.2",
        ]
    )
    wait_until(
        lambda: ring.registration_name("phoenix") in registered(port), "first registration", procs=[ns, node]
    )
    ns.terminate()
    assert ns.wait(timeout=30) == 0
    ns = launch(ns_args)  # a new, empty name server on the same address
    wait_until(
        lambda: ring.registration_name("phoenix") in registered(port), "registration again", procs=[ns, node]
    )
    wait_until(lambda: "registered it again" in node.log_text(), "the node logged it")


def test_a_name_server_with_storage_still_knows_the_nodes_after_a_restart(launch, tmp_path):
    """In memory, a restarted name server knew no node until each one's next check (10 s): `fab run-ring` failed
    right after a `fab provision` that restarted the programs. This node checks once an hour, so only the
    storage can bring its name back."""
    port = free_port(NS_HOST)
    ns_args = ["nameserver", "--storage", str(tmp_path / "ns.sqlite"), "--host", NS_HOST, "--port", str(port)]
    ns = launch(ns_args)
    node = launch(["ring", "serve", "--name", "kept", "--next", "kept", "--host", "127.0.0.11", "--ns-host", NS_HOST,
                   "--ns-port", str(port), "--check-interval", "3600"])
    name = ring.registration_name("kept")
    uri = wait_until(lambda: registered(port).get(name), "first registration", procs=[ns, node])
    ns.terminate()
    assert ns.wait(timeout=30) == 0
    ns = launch(ns_args)
    assert wait_until(lambda: registered(port).get(name), "the name after the restart", procs=[ns, node]) == uri
    assert "registered it again" not in node.log_text()


def test_a_name_server_whose_storage_cannot_be_opened_says_so_in_one_line(launch, tmp_path):
    args = ["nameserver", "--storage", str(tmp_path / "missing" / "ns.sqlite"), "--host", NS_HOST,
            "--port", str(free_port(NS_HOST))]
    p = launch(args)
    assert p.wait(timeout=30) == 1
    assert f"labnodes: error: cannot keep the name server's names in {tmp_path}/missing/ns.sqlite: unable to open " \
           "database file" in p.log_text()


def test_node_started_before_the_name_server_registers_once_it_is_up(launch):
    port = free_port(NS_HOST)
    node = launch(
        [
            "ring",
            "serve",
            "--name",
            "early",
            "--next",
            "early",
            "--host",
            "127.0.0.11",
            "--ns-host",
            NS_HOST,
            "--ns-port",
            str(port),
        ]
    )
    wait_until(
        lambda: "not reachable yet" in node.log_text(), "node waiting for the name server", procs=[node]
    )
    ns = launch(["nameserver", "--host", NS_HOST, "--port", str(port)])
    wait_until(lambda: ring.registration_name("early") in registered(port), "registration", procs=[ns, node])


def test_sigterm_while_waiting_for_the_name_server_exits_cleanly(launch):
    node = launch(
        [
            "ring",
            "serve",
            "--name",
            "waiting",
            "--next",
            "waiting",
            "--host",
            "127.0.0.11",
            "--ns-host",
            NS_HOST,
            "--ns-port",
            str(free_port(NS_HOST)),
        ]
    )
    wait_until(
        lambda: "not reachable yet" in node.log_text(), "node waiting for the name server", procs=[node]
    )
    node.terminate()
    assert node.wait(timeout=30) == 0
    assert "stopped before it was registered" in node.log_text()


@pytest.mark.parametrize("numbers", ["-4,2", [4, -2], [1, 2, 3]])
def test_library_send_refuses_bad_numbers_with_a_labnodes_error(ns_port, numbers):
    with pytest.raises(LabnodesError):
        ring.send(NS_HOST, ns_port, KEY, "pyro1", "lib", numbers, 10.0)


@pytest.mark.parametrize("sends", [b"", b"PYRO\x00\x30"], ids=["nothing", "half-a-header"])
def test_idle_connections_without_the_key_do_not_starve_the_ring(env, ns_port, start_ring, sends):
    # Before: Pyro4's thread pool has 40 threads and a connection that never completes its HMAC handshake held
    # one for COMMTIMEOUT (60 s); past 40, the accept loop itself blocked for 60 s trying to deny the next one.
    # 60 such connections to the name server and to each node (whose links are new, so they must be opened)
    # made every `ring send` fail.
    suffix = "n" if not sends else "h"
    names = [f"starve{i}{suffix}" for i in (1, 2, 3)]
    hosts = ["127.0.0.31", "127.0.0.32", "127.0.0.33"] if not sends else ["127.0.0.34", "127.0.0.35", "127.0.0.36"]
    start_ring({name: (host, names[(i + 1) % 3]) for i, (name, host) in enumerate(zip(names, hosts, strict=True))})
    with ring.ns_proxy(NS_HOST, ns_port, KEY, 5.0) as ns:
        uris = [ns.lookup(ring.registration_name(name)) for name in names]
    addresses = [(NS_HOST, ns_port)] + [(uri.host, uri.port) for uri in uris]
    intruders = []
    try:
        for address in addresses:
            for _ in range(60):
                sock = socket.create_connection(address, timeout=10)
                intruders.append(sock)
                if sends:
                    sock.sendall(sends)
        time.sleep(1.0)  # every server has accepted them all by now
        for attempt in range(2):  # a second send goes through the links the first one opened
            started = time.monotonic()
            out = send(env, ns_port, names[0])
            print(f"ring send {attempt + 1} with {len(intruders)} intruders: {time.monotonic() - started:.2f} s")
            assert out.returncode == 0, f"send {attempt + 1}: {out.stderr}"
            assert [r["node"] for r in json.loads(out.stdout)["trace"]][:4] == [*names, names[0]]
    finally:
        for sock in intruders:
            sock.close()


def test_more_idle_connections_than_the_lobby_holds_do_not_starve_the_name_server(env, ns_port, ring3):
    from labnodes import pyro_server

    intruders = []
    try:
        for _ in range(pyro_server.MAX_LOBBY + 100):  # the oldest are closed to make room
            intruders.append(socket.create_connection((NS_HOST, ns_port), timeout=10))
        time.sleep(1.0)
        out = send(env, ns_port, "pyro1")
        assert out.returncode == 0, out.stderr
    finally:
        for sock in intruders:
            sock.close()


def test_a_killed_hop_started_again_elsewhere_is_found_without_restarting_the_others(env, ns_port, start_ring):
    # The predecessor's pooled link points at the dead address: it must look the node up again and retry
    # once at its new address (ring_link's retry 2), within the same timeout.
    nodes = {"back1": ("127.0.0.11", "back2"), "back2": ("127.0.0.12", "back3"), "back3": ("127.0.0.13", "back1")}
    procs = start_ring(nodes)
    assert send(env, ns_port, "back1").returncode == 0  # links between the nodes are now open
    with ring.ns_proxy(NS_HOST, ns_port, KEY, 5.0) as ns:
        old = str(ns.lookup(ring.registration_name("back3")))
    procs["back3"].kill()
    procs["back3"].wait()
    start_ring({"back3": ("127.0.0.14", "back1")})  # another address, as a node moved to another host
    wait_until(lambda: str(registered(ns_port).get(ring.registration_name("back3"), old)) != old, "new address")
    out = send(env, ns_port, "back1")
    assert out.returncode == 0, out.stderr
    assert [r["address"].split(":")[0] for r in json.loads(out.stdout)["trace"]][:3] == [
        "127.0.0.11", "127.0.0.12", "127.0.0.14"]
    wait_until(lambda: "back3 moved to" in procs["back2"].log_text(), "back2 logged it")


@pytest.mark.parametrize("serializer", ["pickle", "marshal"])
@pytest.mark.parametrize("target", ["name server", "ring node"])
def test_pickle_and_marshal_are_refused_even_with_the_right_key(ns_port, ring3, target, serializer):
    import Pyro4

    with ring.ns_proxy(NS_HOST, ns_port, KEY, 5.0) as ns:
        uri = ns.lookup(ring.registration_name("pyro1"))
    p = ring.ns_proxy(NS_HOST, ns_port, KEY, 5.0) if target == "name server" else ring._proxy(uri, KEY, 5.0)
    p._pyroSerializer = serializer
    with p, pytest.raises(Pyro4.errors.PyroError, match="serializer") as refused:
        p.ping() if target == "name server" else p.info()
    print(f"{target}: {refused.value!r}")


def test_a_client_with_pyro4s_default_serializer_still_sends_round_the_ring(ns_port, ring3):
    """labnodes' proxies speak json; a course's own client keeps Pyro4's default, serpent."""
    with ring.ns_proxy(NS_HOST, ns_port, KEY, 5.0) as ns:
        ns._pyroSerializer = "serpent"
        uri = ns.lookup(ring.registration_name("pyro1"))
    with ring._proxy(uri, KEY, 10.0) as p:
        p._pyroSerializer = "serpent"
        res = p.start("serpent client", [48, 18], 9.0)
    assert (res["gcd"], res["lcm"]) == (6, 144)
    assert [r["node"] for r in res["trace"]] == ["pyro1", "pyro2", "pyro3", "pyro1"]
