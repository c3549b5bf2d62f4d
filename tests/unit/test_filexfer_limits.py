"""File server limits (issue 9): refusals that fit a frame, names, a connection limit, an overall deadline.

What was tried before the fix, and what happened then:
  * a PUT announcing a 4,060-digit size: the too-large message echoed the size, the frame went over 4096 bytes,
    encode_frame raised in the handler: no ERR frame, a traceback in the log;
  * a PUT onto a directory: the server answered "ready" and took the whole body before refusing;
  * names " ", "\\u202e" (a bidi override), "x\\\\y": accepted;
  * a client sending one byte every 0.1 s: never idle for idle_timeout, so it held its connection for ever;
  * more connections than any limit: one thread each, no refusal.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from labnodes import filexfer
from labnodes.filexfer import MAX_HEADER, PREFIX, ProtocolError, check_name, encode_frame, read_frame

from filexfer_support import HANG_GUARD, leftovers, serve



def raw_header(address, data: bytes) -> dict:
    """Send a header of raw JSON bytes (not built by encode_frame) and read the first reply."""
    with socket.create_connection(address, timeout=HANG_GUARD) as sock:
        sock.sendall(PREFIX.pack(len(data)) + data)
        return read_frame(sock)


# --- every refusal fits a frame --------------------------------------------------------------------------


def test_put_announcing_a_4060_digit_size_gets_a_too_large_frame(server, root):
    data = b'{"op":"PUT","name":"a","size":' + b"9" * 4060 + b"}"
    assert len(data) <= MAX_HEADER
    reply = raw_header(server, data)
    assert reply["error"] == "too-large"
    assert leftovers(root) == []


@pytest.mark.parametrize("message", ["x" * 10_000, "\u00e9" * 3000, "\u65e5" * 2000], ids=["ascii", "latin", "cjk"])
def test_an_error_frame_always_fits_the_frame_limit(message):
    frame = ProtocolError("bad-request", message).frame()
    (length,) = PREFIX.unpack(frame[:4])
    assert 1 <= length <= MAX_HEADER and length == len(frame) - 4
    header = json.loads(frame[4:])
    assert header["error"] == "bad-request" and message.startswith(header["message"].removesuffix("..."))


# --- names and directories --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [" ", "   ", " a", "a ", "a\u202eb", "\u202e", "a\u200bb", "a\u2066b", "a\u2028b", "x\\y", "\ufeffa", "a\u00adb"],
    ids=repr,
)
def test_names_with_blanks_at_the_ends_invisible_controls_or_backslashes_are_refused(name):
    with pytest.raises(ProtocolError) as info:
        check_name(name)
    assert info.value.code == "bad-name"


@pytest.mark.parametrize("name", ["report 2024.pdf", "\u00e9t\u00e9.txt", "\u65e5\u672c.txt", "a\U0001f600", "a-b_c"])
def test_ordinary_names_stay_accepted(name):
    assert check_name(name) == name


def test_put_onto_a_directory_is_refused_before_ready(server, root):
    (root / "dir").mkdir()
    with socket.create_connection(server, timeout=HANG_GUARD) as sock:
        sock.sendall(encode_frame({"op": "PUT", "name": "dir", "size": 10}))
        assert read_frame(sock)["error"] == "not-a-file"  # instead of "ready"
    assert leftovers(root) == ["dir"]


# --- an overall deadline: a minimum rate ----------------------------------------------------------------


def trickle_until_answered(sock: socket.socket, data: bytes, every: float) -> dict:
    """Send data one byte at a time, `every` seconds apart, until the server answers; return its answer."""
    sock.settimeout(every)
    for i in range(len(data)):
        try:
            sock.send(data[i : i + 1])
        except OSError:
            break
        try:
            if sock.recv(1, socket.MSG_PEEK):
                break
        except TimeoutError:
            continue
    sock.settimeout(HANG_GUARD)
    return read_frame(sock)


def test_a_body_sent_a_byte_at_a_time_ends_with_too_slow(root):
    # idle 2 s, 1000 bytes/s: 3000 bytes must arrive within 2 + 3 s; at 10 bytes/s they would take 300 s
    srv, address = serve(root, idle_timeout=2.0, min_rate=1000)
    try:
        with socket.create_connection(address, timeout=HANG_GUARD) as sock:
            sock.sendall(encode_frame({"op": "PUT", "name": "a", "size": 3000}))
            assert read_frame(sock) == {"status": "ready"}
            reply = trickle_until_answered(sock, b"x" * 3000, every=0.1)
        assert reply["error"] == "too-slow", reply
        assert leftovers(root) == []
    finally:
        srv.close()


def test_a_header_sent_a_byte_at_a_time_ends_with_too_slow(root):
    srv, address = serve(root, idle_timeout=2.0, min_rate=1000)
    try:
        header = encode_frame({"op": "PUT", "name": "a" * 200, "size": 0})
        with socket.create_connection(address, timeout=HANG_GUARD) as sock:
            reply = trickle_until_answered(sock, header, every=0.1)  # 235 bytes: 24 s at this pace
        assert reply["error"] == "too-slow", reply
    finally:
        srv.close()


def test_a_get_read_a_byte_at_a_time_is_cut_off(root):
    (root / "big").write_bytes(b"x" * (8 << 20))
    srv, address = serve(root, idle_timeout=2.0, min_rate=1 << 20)  # deadline 2 + 8 s
    try:
        with socket.create_connection(address, timeout=HANG_GUARD) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(encode_frame({"op": "GET", "name": "big"}))
            assert read_frame(sock)["status"] == "sending"
            got, started = 0, time.monotonic()
            try:
                while chunk := sock.recv(100):  # 10,000 bytes/s: 8 MiB would take 14 minutes
                    got += len(chunk)
                    time.sleep(0.01)
                    assert time.monotonic() - started < HANG_GUARD * 2, "the server never cut the slow reader off"
            except ConnectionResetError:
                pass  # the server aborted the connection (what is queued for a slow reader is dropped)
        assert got < 8 << 20
    finally:
        srv.close()


# --- a connection limit -----------------------------------------------------------------------------------


def test_connections_over_the_limit_get_a_busy_frame_and_the_server_recovers(root, tmp_path):
    srv, address = serve(root, idle_timeout=HANG_GUARD, max_connections=4)
    idle = []
    try:
        for _ in range(4):
            idle.append(socket.create_connection(address, timeout=HANG_GUARD))
        deadline = time.monotonic() + HANG_GUARD
        while srv.connections() < 4:
            assert time.monotonic() < deadline, "the server never counted 4 connections"
            time.sleep(0.02)
        with socket.create_connection(address, timeout=HANG_GUARD) as extra:
            extra.sendall(encode_frame({"op": "GET", "name": "x"}))
            reply = read_frame(extra)
        assert reply["error"] == "busy" and "4" in reply["message"]
        for sock in idle:
            sock.close()
        idle.clear()
        src = tmp_path / "f"
        src.write_bytes(b"hello")
        deadline = time.monotonic() + HANG_GUARD
        while True:  # the handlers of the closed connections end as soon as they see the close
            try:
                assert filexfer.send(*address, src, timeout=HANG_GUARD)["size"] == 5
                break
            except filexfer.TransferError as exc:
                assert exc.code == "busy" and time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        for sock in idle:
            sock.close()
        srv.close()


def test_thread_count_stays_bounded_under_many_idle_connections(root):
    srv, address = serve(root, idle_timeout=HANG_GUARD, max_connections=8)
    before = threading.active_count()
    socks = []
    try:
        for _ in range(100):
            socks.append(socket.create_connection(address, timeout=HANG_GUARD))
        time.sleep(0.5)
        assert threading.active_count() - before <= 8 + 1
    finally:
        for sock in socks:
            sock.close()
        srv.close()


@pytest.mark.parametrize("shared", [0, 2])
def test_concurrent_uploads_share_a_bounded_set_of_extra_buffers_and_give_them_back(root, tmp_path, monkeypatch,
                                                                                   shared):
    # Before: each upload made 4 buffers of 4 MiB whatever the others did: 32 uploads at full speed, 512 MiB.
    monkeypatch.setattr(filexfer, "SHARED_BUFFERS", shared)
    srv, address = serve(root, idle_timeout=HANG_GUARD)
    try:
        src = tmp_path / "big.bin"
        src.write_bytes(bytes(range(256)) * (3 * filexfer.CHUNK // 256 + 7))
        errors = []

        def put(i):
            try:
                filexfer.send(*address, src, name=f"c{i}", timeout=HANG_GUARD)
            except Exception as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=put, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(HANG_GUARD * 2)
        assert not errors
        assert sorted(p.name for p in root.iterdir()) == ["c0", "c1", "c2", "c3"]
        assert all((root / f"c{i}").read_bytes() == src.read_bytes() for i in range(4))
        assert srv._buffer_budget._value == shared  # every borrowed buffer came back
    finally:
        srv.close()
