"""File transfer on loopback: real `labnodes file serve|send|get` processes, 100 MB+ files, kills, SIGTERM."""

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from labnodes.filexfer import encode_frame, read_frame
from tests.integration.conftest import ServerProcess, labnodes_cmd

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.3"  # the server's own loopback address; clients connect from 127.0.0.1
HANG_GUARD = 60.0  # seconds; only so that a broken transfer fails a test instead of hanging it
MAX_SIZE = 150_000_000  # the shared server's file_max_size, set through LABNODES_FILE_MAX_SIZE
MB = 1_000_000


def cli(tmp_path, *args) -> list[str]:
    return labnodes_cmd(tmp_path, *args)


def labnodes(tmp_path, *args) -> subprocess.CompletedProcess:
    return subprocess.run(cli(tmp_path, *args), cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD)


def sha256_of(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


def wait_until(condition, what: str):
    deadline = time.monotonic() + HANG_GUARD
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.01)


def file_server(tmp_path, env=None):
    """`labnodes file serve --port 0 --root ROOT` on HOST; `.root` is its directory."""
    root = tmp_path / "root"
    srv = ServerProcess(tmp_path, ["file", "serve", "--host", HOST, "--port", "0", "--root", str(root)], env=env,
                         hang_guard=HANG_GUARD)
    srv.root = root
    return srv


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    srv = file_server(tmp_path_factory.mktemp("files"), env={"LABNODES_FILE_MAX_SIZE": str(MAX_SIZE)})
    yield srv
    srv.stop()


@pytest.fixture
def server(tmp_path):
    """A server of the test's own (default limits), for tests that kill or stop things."""
    srv = file_server(tmp_path)
    yield srv
    srv.stop()


def test_large_random_file_matches_after_put_and_after_get(shared_server, tmp_path):
    src = tmp_path / "random.bin"
    hasher = hashlib.sha256()
    with open(src, "wb") as f:  # 110 MB, written and hashed 1 MiB at a time
        for _ in range(110 * MB // (1 << 20) + 1):
            block = os.urandom(1 << 20)
            hasher.update(block)
            f.write(block)
    digest = hasher.hexdigest()

    sent = labnodes(tmp_path, "file", "send", *shared_server.flags, "--json", str(src))
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["sha256"] == digest
    assert sha256_of(shared_server.root / "random.bin") == digest
    src.unlink()

    out = tmp_path / "out"
    out.mkdir()
    fetched = labnodes(
        tmp_path, "file", "get", *shared_server.flags, "--json", "random.bin", "--out", str(out)
    )
    assert fetched.returncode == 0, fetched.stderr
    assert json.loads(fetched.stdout)["sha256"] == digest
    assert sha256_of(out / "random.bin") == digest
    assert sorted(os.listdir(out)) == ["random.bin"]
    assert re.search(r"PUT 'random.bin' size=\d+ sha256=\w{12} [\d.]+ MB/s ok", shared_server.log.read_text())
    (out / "random.bin").unlink()
    (shared_server.root / "random.bin").unlink()


def test_send_command_prints_a_table(shared_server, tmp_path):
    (tmp_path / "hello.txt").write_text("hello\n")
    done = labnodes(
        tmp_path, "file", "send", *shared_server.flags, str(tmp_path / "hello.txt"), "--name", "hi"
    )
    assert done.returncode == 0, done.stderr
    header, _, row = done.stdout.splitlines()
    assert header.split()[:4] == ["op", "name", "bytes", "sha256"]
    assert row.split()[:4] == ["PUT", "hi", "6", hashlib.sha256(b"hello\n").hexdigest()]


@pytest.fixture
def sparse(tmp_path):
    """A file of `size` bytes that takes no disk space (zeros), for transfers that are refused or cut off."""

    def make(size):
        path = tmp_path / "sparse.bin"
        with open(path, "wb") as f:
            f.truncate(size)
        return path

    return make


@pytest.mark.parametrize(
    "case, message",
    [
        ("bad-name", "bad name '../x'"),
        ("too-large", f"too-large: {MAX_SIZE + 1} bytes is over the limit of {MAX_SIZE} bytes"),
        ("not-found", "refused GET missing: not-found"),
        ("no-out-dir", "cannot use output directory"),
    ],
)
def test_refusal_is_one_line_on_stderr_and_exit_1(shared_server, tmp_path, sparse, case, message):
    args = {
        "bad-name": ["send", *shared_server.flags, str(sparse(10)), "--name", "../x"],
        "too-large": ["send", *shared_server.flags, str(sparse(MAX_SIZE + 1))],
        "not-found": ["get", *shared_server.flags, "missing", "--out", str(tmp_path)],
        "no-out-dir": ["get", *shared_server.flags, "x", "--out", str(tmp_path / "nowhere")],
    }[case]
    done = labnodes(tmp_path, "file", *args)
    assert done.returncode == 1
    assert done.stderr.startswith("labnodes: error:") and done.stderr.count("\n") == 1
    assert message in done.stderr
    assert not any(
        name.startswith(".") or name in ("x", "sparse.bin") for name in os.listdir(shared_server.root)
    )


def test_sender_killed_mid_transfer_leaves_no_file_and_no_temp_file(server, tmp_path, sparse):
    big = sparse(512 << 20)  # long enough to be caught half-way: the kill comes at its first bytes
    sender = subprocess.Popen(
        cli(tmp_path, "file", "send", *server.flags, str(big), "--name", "killed.bin"),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def upload_under_way():
            return any(e.name.endswith(".part") and e.stat().st_size > 0 for e in os.scandir(server.root))

        wait_until(upload_under_way, "the upload is under way")
        sender.send_signal(signal.SIGKILL)
    finally:
        sender.kill()
        sender.wait()
    wait_until(lambda: os.listdir(server.root) == [], "the server removed the temporary file")
    wait_until(lambda: "PUT 'killed.bin'" in server.log.read_text(), "the server logged the transfer")
    assert re.search(r"PUT 'killed.bin' .* (short-stream|connection-lost)", server.log.read_text())
    assert server.proc.poll() is None


def test_sigterm_during_an_upload_removes_the_temp_file_and_exits_0(server):
    with socket.create_connection((server.host, server.port), timeout=HANG_GUARD) as sock:
        sock.sendall(encode_frame({"op": "PUT", "name": "a", "size": 10 * MB}))
        assert read_frame(sock) == {"status": "ready"}
        sock.sendall(b"x" * MB)
        wait_until(lambda: os.listdir(server.root), "the temporary file exists")
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(HANG_GUARD) == 0
    assert os.listdir(server.root) == []
    assert "file server stopped" in server.log.read_text()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_forty_stalled_uploads_hold_about_what_they_sent_not_16_mib_each(tmp_path):
    # Before: each PUT allocated (and zeroed) four 4 MiB buffers at "ready": 40 stalled PUTs took the server
    # from ~46 MB to ~690 MB resident, and ~300 MB stayed after they closed. Each sends 1 MB of 100 MB here.
    srv = file_server(tmp_path, env={"LABNODES_FILE_MAX_CONNECTIONS": "64"})
    socks = []
    try:
        before = rss_mb(srv.proc.pid)
        for i in range(40):
            sock = socket.create_connection(srv.address, timeout=HANG_GUARD)
            socks.append(sock)
            sock.sendall(encode_frame({"op": "PUT", "name": f"s{i}", "size": 100 * MB}))
            assert read_frame(sock) == {"status": "ready"}
            sock.sendall(b"x" * MB)
        time.sleep(1.0)  # let the server take in what was sent
        during = max(rss_mb(srv.proc.pid) for _ in range(5) if time.sleep(0.1) is None)
        for sock in socks:
            sock.close()
        socks.clear()
        wait_until(lambda: not any(p.name.endswith(".part") for p in srv.root.iterdir()), "temp files are gone")
        time.sleep(0.5)
        after = rss_mb(srv.proc.pid)
        print(f"file server RSS: {before:.0f} MB before, {during:.0f} MB with 40 stalled uploads, {after:.0f} after")
        assert during - before < 150, f"{during - before:.0f} MB for 40 stalled uploads of 1 MB each"
        assert after - before < 50, f"{after - before:.0f} MB still held after they closed"
    finally:
        for sock in socks:
            sock.close()
        srv.stop()


def test_a_second_file_serve_on_the_root_of_a_running_one_is_one_line_and_exit_1(tmp_path):
    srv = file_server(tmp_path)
    try:
        second = labnodes(tmp_path, "file", "serve", "--host", HOST, "--port", "0", "--root", str(srv.root))
        assert second.returncode == 1
        assert second.stderr == (f"labnodes: error: another file server serves {srv.root}: two must not share a "
                                 "root (each removes the other's unfinished uploads when it starts); give this one "
                                 "another --root\n")
    finally:
        srv.stop()


def test_server_killed_mid_upload_shows_no_partial_file_and_a_retry_after_restart_succeeds(tmp_path):
    srv = file_server(tmp_path)
    data = os.urandom(3 * MB)
    src = tmp_path / "retry.bin"
    src.write_bytes(data)
    try:
        with socket.create_connection(srv.address, timeout=HANG_GUARD) as sock:
            sock.sendall(encode_frame({"op": "PUT", "name": "retry.bin", "size": len(data)}))
            assert read_frame(sock) == {"status": "ready"}
            sock.sendall(data[: MB + 17])  # a chunk and a bit: the first 4 MiB chunk is not full yet
            wait_until(lambda: any(p.name.endswith(".part") for p in srv.root.iterdir()), "the upload is under way")
            srv.proc.kill()  # SIGKILL: no clean-up at all
            srv.proc.wait()
        assert "retry.bin" not in os.listdir(srv.root)  # only the hidden temporary file, never the name
    finally:
        srv.stop()
    again = ServerProcess(tmp_path, ["file", "serve", "--host", HOST, "--port", "0", "--root", str(srv.root)],
                          hang_guard=HANG_GUARD)
    try:
        assert os.listdir(srv.root) == []  # the restarted server removed the stale temporary file
        result = labnodes(tmp_path, "file", "send", *again.flags, str(src), "--json")
        assert result.returncode == 0, result.stderr
        assert sha256_of(srv.root / "retry.bin") == hashlib.sha256(data).hexdigest()
    finally:
        again.stop()


def test_a_tethered_get_stops_when_its_stdin_ends_and_leaves_no_temporary_file(tmp_path):
    """labkit runs labnodes over SSH as `labnodes --tethered ...`: when fab is interrupted or killed, the command's
    stdin ends, and it must stop as on a Ctrl-C, removing what it half wrote. Tried: a GET whose server sent
    1 MB of a 10 MB body and then nothing; before the tether, the client waited out its idle timeout (30 s)."""
    out = tmp_path / "out"
    out.mkdir()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(HANG_GUARD)
        args = ["--tethered", "file", "get", "big.bin", "--out", str(out), "--host", "127.0.0.1",
                "--port", str(listener.getsockname()[1])]
        proc = subprocess.Popen(cli(tmp_path, *args), cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        conn, _ = listener.accept()
        with conn:
            assert read_frame(conn)["op"] == "GET"
            conn.sendall(encode_frame({"status": "sending", "name": "big.bin", "size": 10 * MB}) + bytes(MB))
            wait_until(lambda: any(p.name.startswith(".download-") for p in out.iterdir()), "the download began")
            proc.stdin.close()
            proc.wait(timeout=HANG_GUARD)
    assert proc.returncode == 130, proc.stderr.read()
    assert list(out.iterdir()) == []

