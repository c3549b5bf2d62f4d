"""Math server on loopback: the real `labnodes math serve` process, real clients, SIGTERM/SIGINT shutdown."""

import json
import math
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from labnodes.mathserver import ask
from tests.integration.conftest import ServerProcess, labnodes_cmd

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.2"  # the server's own loopback address; clients connect from 127.0.0.1
HANG_GUARD = 15.0  # seconds; only so that a broken server fails a test instead of hanging it


def labnodes(tmp_path, *args, **kwargs) -> subprocess.CompletedProcess:
    """Run the real CLI once."""
    return subprocess.run(labnodes_cmd(tmp_path, *args), cwd=REPO, capture_output=True, text=True,
                          timeout=HANG_GUARD, **kwargs)


def math_server(tmp_path):
    """`labnodes math serve --port 0` on HOST."""
    return ServerProcess(tmp_path, ["math", "serve", "--host", HOST, "--port", "0"], hang_guard=HANG_GUARD)


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    srv = math_server(tmp_path_factory.mktemp("math"))
    yield srv
    srv.stop()


@pytest.fixture
def server(tmp_path):
    """A server of the test's own, for tests that stop it."""
    srv = math_server(tmp_path)
    yield srv
    srv.stop()


def test_fifty_concurrent_clients_all_get_right_answers_and_every_log_line_is_written_or_counted(server):
    """A server of its own: its log holds this burst only."""
    clients = 50
    start = threading.Barrier(clients, timeout=HANG_GUARD)

    def client(seed):
        rng = random.Random(seed)
        pairs = [(rng.randrange(10**12), rng.randrange(10**12)) for _ in range(20)]
        start.wait()  # all connect at once
        results = ask(*server.address, pairs, timeout=HANG_GUARD)
        return [(r["gcd"], r["lcm"]) for r in results], [(math.gcd(a, b), math.lcm(a, b)) for a, b in pairs]

    with ThreadPoolExecutor(clients) as pool:
        for got, expected in pool.map(client, range(clients)):
            assert got == expected
    # One INFO line per connection, request and close: 1100 in well under a second, over the default cap of 100
    # a second (labnodes.logs). Every line is either in the log or counted in a "not written" line, which comes
    # before the next line written a second later.
    time.sleep(1.05)
    ask(*server.address, [(48, 18)], timeout=HANG_GUARD)
    want = clients * (1 + 20 + 1) + 3

    def written_and_counted():
        text = server.log.read_text()
        counted = sum(int(n) for n in re.findall(r"\((\d+) earlier info lines were not written", text))
        return text.count("labnodes.mathserver INFO 127.0.0.1:"), counted

    deadline = time.monotonic() + HANG_GUARD
    while sum(written_and_counted()) < want and time.monotonic() < deadline:  # the last close line
        time.sleep(0.05)
    written, counted = written_and_counted()
    print(f"{want} info lines: {written} written, {counted} counted")
    assert written + counted == want and counted > 0
    assert "127.0.0.1" in server.log.read_text().splitlines()[-1]  # the last request's own lines are written


def test_ask_command_prints_a_table_with_the_server(shared_server, tmp_path):
    host, port = shared_server.address
    done = labnodes(tmp_path, "math", "ask", "--host", host, "--port", str(port), "48,18", "7,5")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["pair", "gcd", "lcm", "server"]
    assert lines[2].split() == ["48,18", "6", "144", f"{host}:{port}"]
    assert lines[3].split() == ["7,5", "1", "35", f"{host}:{port}"]


def test_ask_command_takes_the_address_from_the_environment(shared_server, tmp_path):
    host, port = shared_server.address
    env = dict(os.environ, LABNODES_MATH_HOST=host, LABNODES_MATH_PORT=str(port))
    done = labnodes(tmp_path, "math", "ask", "--json", "48,18", env=env)
    assert done.returncode == 0, done.stderr
    assert '"lcm": 144' in done.stdout


def test_ask_command_prints_err_reply_and_exits_1(shared_server, tmp_path):
    host, port = shared_server.address
    done = labnodes(tmp_path, "math", "ask", "--host", host, "--port", str(port), "48,18", "x,1")
    assert done.returncode == 1
    assert "ERR numbers must be decimal digits 0-9" in done.stdout and "144" in done.stdout


def test_ask_command_reports_a_refused_connection_in_one_line(tmp_path):
    with socket.create_server((HOST, 0)) as probe:
        port = probe.getsockname()[1]
    done = labnodes(tmp_path, "math", "ask", "--host", HOST, "--port", str(port), "48,18")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "cannot connect" in done.stderr and done.stdout == ""
    with_json = labnodes(tmp_path, "math", "ask", "--host", HOST, "--port", str(port), "--json", "48,18")
    assert json.loads(with_json.stdout) == {"error": {"message": done.stderr.removeprefix("labnodes: error: ").strip(),
                                                      "code": "connect", "address": f"{HOST}:{port}"}}
    assert (with_json.returncode, with_json.stderr) == (1, done.stderr)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_tells_clients_closes_them_and_exits_0(server, signum):
    with socket.create_connection(server.address, timeout=HANG_GUARD) as sock, sock.makefile("rb") as replies:
        sock.sendall(b"48,18\n")
        assert replies.readline() == b"OK gcd=6 lcm=144\n"
        server.proc.send_signal(signum)
        assert replies.readline() == b"ERR server shutting down\n"
        assert replies.readline() == b""
    assert server.proc.wait(HANG_GUARD) == 0
    assert "math server stopped" in server.log.read_text()


def test_labnodes_math_serve_runs_on_uvloop(shared_server):
    """The served program (mathserver.run), not only the library's thread: uvloop, which labnodes imports only to
    serve, is loaded in it."""
    maps = Path(f"/proc/{shared_server.proc.pid}/maps").read_text()
    assert "/uvloop/loop." in maps
