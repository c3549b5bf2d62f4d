"""One-pass verification (issue 10): the sender hashes the bytes while it sends them and vouches for them in a
trailer frame {"sha256": H} after the body; the receiver compares with what it hashed and only then keeps them.

Before: the sender hashed the whole file before its first byte went (the sha256 was in the header), and the
server hashed a file on every GET. These tests break the trailer in every way from either side (missing,
malformed, wrong, withdrawn, in the header) and change a file while it is on its way, through a real relay that
holds the transfer in the middle of its body.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import struct
import threading
import time

import pytest

from labnodes import filexfer
from labnodes.filexfer import (
    HASH_THREAD,
    PREFIX,
    WITHDRAWALS,
    ProtocolError,
    TransferError,
    check_trailer,
    encode_frame,
    get,
    read_frame,
    send,
)

from filexfer_support import HANG_GUARD, SHA_OF_EMPTY, leftovers, trailer, wait_until

BIG = 32 << 20  # a body far larger than what the socket buffers hold while a relay holds it still


def temp_file_holds(directory, size: int):
    """A condition: a temporary file in directory holds all `size` bytes of a body."""
    return lambda: any(p.name.endswith(".part") and p.stat().st_size == size for p in directory.iterdir())


# --- the trailer frame -----------------------------------------------------------------------------------


def test_trailer_gives_its_sha256_in_lower_case_and_ignores_other_fields():
    digest = hashlib.sha256(b"x").hexdigest()
    assert check_trailer({"sha256": digest.upper(), "later": 1}) == digest


@pytest.mark.parametrize(
    "frame",
    [
        {},
        {"sha256": "abc"},
        {"sha256": "g" * 64},
        {"sha256": None},
        {"sha256": 5},
        {"sha": SHA_OF_EMPTY},
        {"error": "busy", "message": "busy is not a withdrawal"},
        {"error": None},
    ],
    ids=repr,
)
def test_frame_that_is_not_a_trailer_is_a_bad_trailer(frame):
    with pytest.raises(ProtocolError) as info:
        check_trailer(frame)
    assert info.value.code == "bad-trailer"


@pytest.mark.parametrize("code", WITHDRAWALS)
def test_err_frame_with_a_withdrawal_code_withdraws_the_body(code):
    with pytest.raises(ProtocolError) as info:
        check_trailer({"error": code, "message": "the file changed"})
    assert info.value.code == code and "withdrew" in info.value.message


# --- the server receiving a PUT's trailer --------------------------------------------------------------------


def put_by_hand(address, root, body: bytes, after: bytes) -> dict:
    """A hand-written client: PUT `body`, wait until the server holds all of it in its temporary file, then
    send `after` where the trailer goes and end the stream; return the server's reply."""
    with socket.create_connection(address, timeout=HANG_GUARD) as sock:
        sock.sendall(encode_frame({"op": "PUT", "name": "a", "size": len(body)}))
        assert read_frame(sock) == {"status": "ready"}
        sock.sendall(body)
        wait_until(temp_file_holds(root, len(body)), "the server holds the whole body")
        sock.sendall(after)
        sock.shutdown(socket.SHUT_WR)
        return read_frame(sock)


@pytest.mark.parametrize("size", [1000, 3 * filexfer.CHUNK + 17])
def test_put_whose_client_ends_after_the_body_is_bad_trailer_and_leaves_nothing(server, root, size):
    reply = put_by_hand(server, root, os.urandom(size), b"")
    assert reply["error"] == "bad-trailer" and "before the trailer" in reply["message"]
    assert leftovers(root) == []


@pytest.mark.parametrize(
    "after",
    [
        struct.pack(">I", 0),
        b"\x00\x00",
        PREFIX.pack(3) + b"[1]",
        PREFIX.pack(9) + b"not json!",
        encode_frame({"sha256": "abc"}),
        encode_frame({"sha": SHA_OF_EMPTY}),
        encode_frame({"error": "busy", "message": "not a withdrawal"}),
        trailer(b"x" * 1000)[:40],
    ],
    ids=["zero-length", "half-prefix", "array", "not-json", "short-sha256", "no-sha256", "other-err", "cut-short"],
)
def test_put_with_a_malformed_trailer_is_bad_trailer_and_leaves_nothing(server, root, after):
    reply = put_by_hand(server, root, b"x" * 1000, after)
    assert reply["error"] == "bad-trailer"
    assert leftovers(root) == []


@pytest.mark.parametrize("size", [1000, 3 * filexfer.CHUNK + 17])
def test_put_with_a_wrong_sha256_in_the_trailer_is_checksum_mismatch_and_leaves_nothing(server, root, size):
    body = os.urandom(size)
    reply = put_by_hand(server, root, body, trailer(body[:-1]))
    assert reply["error"] == "checksum-mismatch"
    assert leftovers(root) == []


@pytest.mark.parametrize("code", WITHDRAWALS)
def test_put_withdrawn_by_its_client_is_discarded_and_answered_in_kind(server, root, code):
    reply = put_by_hand(server, root, b"x" * 1000, encode_frame({"error": code, "message": "changed"}))
    assert reply["error"] == code
    assert leftovers(root) == []


def test_put_with_the_sha256_in_its_header_is_refused_before_ready(server, root):
    with socket.create_connection(server, timeout=HANG_GUARD) as sock:  # a client of the older framing
        sock.sendall(encode_frame({"op": "PUT", "name": "a", "size": 5, "sha256": SHA_OF_EMPTY}))
        reply = read_frame(sock)
    assert reply["error"] == "bad-request" and "trailer" in reply["message"]
    assert leftovers(root) == []


# --- the client receiving a GET's trailer ----------------------------------------------------------------


def get_from_a_peer(out, head: bytes, body: bytes, after: bytes):
    """GET "a" from a hand-written server that sends head and body, waits until the client holds the whole
    body in its temporary file, then sends `after` where the trailer goes and closes."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(HANG_GUARD)

    def run():
        with listener, listener.accept()[0] as conn:
            conn.settimeout(HANG_GUARD)
            read_frame(conn)
            conn.sendall(head + body)
            wait_until(temp_file_holds(out, len(body)), "the client holds the whole body")
            conn.sendall(after)

    peer = threading.Thread(target=run, daemon=True)
    peer.start()
    try:
        return get(*listener.getsockname()[:2], "a", out, timeout=HANG_GUARD)
    finally:
        peer.join(HANG_GUARD)


BODY = os.urandom(100_000)


@pytest.mark.parametrize(
    "after, code",
    [
        (b"", "bad-trailer"),
        (struct.pack(">I", 0), "bad-trailer"),
        (encode_frame({"sha256": "abc"}), "bad-trailer"),
        (encode_frame({"error": "busy", "message": "not a withdrawal"}), "bad-trailer"),
        (trailer(BODY)[:30], "bad-trailer"),
        (trailer(BODY[:-1]), "checksum-mismatch"),
        (encode_frame({"error": "source-changed", "message": "a changed while it was sent"}), "source-changed"),
        (encode_frame({"error": "disk-error", "message": "cannot read a"}), "disk-error"),
    ],
    ids=["missing", "zero-length", "short-sha256", "other-err", "cut-short", "wrong-sha256", "withdrawn",
         "withdrawn-disk"],
)
def test_get_with_a_bad_or_withdrawing_trailer_fails_and_leaves_nothing(out, after, code):
    head = encode_frame({"status": "sending", "name": "a", "size": len(BODY)})
    with pytest.raises(TransferError) as info:
        get_from_a_peer(out, head, BODY, after)
    assert info.value.code == code
    assert leftovers(out) == []


def test_get_refuses_a_reply_with_the_sha256_in_its_header(out):
    head = encode_frame({"status": "sending", "name": "a", "size": 5, "sha256": SHA_OF_EMPTY})  # the older framing
    listener = socket.create_server(("127.0.0.1", 0))

    def run():
        with listener, listener.accept()[0] as conn:
            read_frame(conn)
            conn.sendall(head + b"hello")

    threading.Thread(target=run, daemon=True).start()
    with pytest.raises(TransferError) as info:
        get(*listener.getsockname()[:2], "a", out, timeout=HANG_GUARD)
    assert info.value.code == "bad-request" and "trailer" in str(info.value)
    assert leftovers(out) == []


# --- what the client says about the file ---------------------------------------------------------------------


def test_send_with_the_expected_sha256_stores_that_file_and_refuses_any_other(server, root, tmp_path):
    src = tmp_path / "src.bin"
    data = os.urandom(BIG)
    src.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    assert send(*server, src, name="f", sha256=digest.upper())["sha256"] == digest
    src.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # was `+ b"?"`: the same file when the last byte was "?"
    with pytest.raises(TransferError) as info:
        send(*server, src, name="f", sha256=digest)
    assert info.value.code == "checksum-mismatch"
    assert leftovers(root) == ["f"] and hashlib.sha256((root / "f").read_bytes()).hexdigest() == digest


# --- a file that changes while it is sent ------------------------------------------------------------------


class Relay:
    """A TCP relay on loopback that stops forwarding one direction ("up": client to server, "down": server to
    client) after `after` bytes until release(): a transfer held still in the middle of its body."""

    def __init__(self, target, hold: str, after: int = 1 << 20):
        self.target, self.hold, self.after = target, hold, after
        self.holding, self.released = threading.Event(), threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(HANG_GUARD)
        self.address = self.listener.getsockname()[:2]
        threading.Thread(target=self._run, daemon=True).start()

    def release(self):
        self.released.set()

    def _run(self):
        with self.listener:
            client = self.listener.accept()[0]
        with client, socket.create_connection(self.target, timeout=HANG_GUARD) as server:
            client.settimeout(HANG_GUARD)
            pumps = [
                threading.Thread(target=self._pump, args=(client, server, self.hold == "up")),
                threading.Thread(target=self._pump, args=(server, client, self.hold == "down")),
            ]
            for pump in pumps:
                pump.start()
            for pump in pumps:
                pump.join(HANG_GUARD * 2)

    def _pump(self, src, dst, held: bool):
        moved = 0
        try:
            while True:
                if held and moved >= self.after and not self.released.is_set():
                    self.holding.set()
                    self.released.wait(HANG_GUARD)
                data = src.recv(self.after - moved if held and moved < self.after else 1 << 16)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
                moved += len(data)
        except OSError:  # one side reset: end both
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def change(path, how: str) -> None:
    """Change a file near its end, far beyond what the held transfer has sent."""
    if how == "truncated":
        os.truncate(path, BIG // 2)
        return
    before = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(BIG - (1 << 20))
        f.write(b"changed while it was being sent")
    if how == "written, mtime put back":  # a writer that hides its change from the size-and-mtime check
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert os.stat(path).st_mtime_ns == before.st_mtime_ns


def hashing_done() -> bool:
    return not any(t.name == HASH_THREAD for t in threading.enumerate())


@pytest.mark.parametrize(
    "op, how, codes",
    [
        ("PUT", "written", {"source-changed"}),  # the client sees the mtime move and withdraws
        ("PUT", "written, mtime put back", {"checksum-mismatch"}),  # hashed before, sent after: the server sees it
        ("PUT", "truncated", {"source-changed"}),  # the body falls short: the client closes
        ("GET", "written", {"source-changed"}),
        ("GET", "written, mtime put back", {"checksum-mismatch"}),
        ("GET", "truncated", {"short-stream", "connection-lost"}),  # the server cuts the connection
    ],
)
def test_file_changed_while_it_is_sent_is_never_stored(server, root, out, tmp_path, op, how, codes):
    data = os.urandom(BIG)
    path = tmp_path / "src.bin" if op == "PUT" else root / "f"
    path.write_bytes(data)
    relay = Relay(server, hold="up" if op == "PUT" else "down")
    failure = []

    def transfer():
        try:
            send(*relay.address, path, name="f", timeout=HANG_GUARD) if op == "PUT" else get(
                *relay.address, "f", out, timeout=HANG_GUARD
            )
        except TransferError as exc:
            failure.append(exc)

    client = threading.Thread(target=transfer)
    client.start()
    try:
        assert relay.holding.wait(HANG_GUARD), "the transfer never reached the relay's hold"
        if how == "written, mtime put back":
            wait_until(hashing_done, "the sender has hashed the whole file (before it changes)")
        change(path, how)
    finally:
        relay.release()
        client.join(HANG_GUARD * 2)
    assert failure and failure[0].code in codes, failure
    if op == "PUT":
        wait_until(lambda: leftovers(root) == [], "the server removed its temporary file")
    else:
        assert leftovers(out) == []
        assert leftovers(root) == ["f"]


def within_one_tick(attempt):
    """Run attempt() until one run starts and ends within one tick of the clock file times come from (a run
    that straddles a tick proves nothing: the write may then be older than the tick); return its result."""
    for _ in range(1000):  # a loaded machine straddles many ticks
        tick = time.clock_gettime_ns(filexfer.COARSE_CLOCK)
        result = attempt()
        if time.clock_gettime_ns(filexfer.COARSE_CLOCK) == tick:
            return result
    raise AssertionError("no attempt ran within one clock tick")


@pytest.mark.parametrize("op", ["PUT", "GET"])
def test_file_written_in_the_current_clock_tick_is_refused_before_any_byte(server, root, out, tmp_path,
                                                                           monkeypatch, op):
    # A write in the same tick would leave the mtime as it is: the sender must not start on such a file. It
    # waits (a tick at a time) up to SETTLE_FOR; set to 0 here, it refuses at the first look.
    monkeypatch.setattr(filexfer, "SETTLE_FOR", 0.0)
    path = tmp_path / "src.bin" if op == "PUT" else root / "f"
    path.write_bytes(b"x" * 100_000)

    def attempt():
        with open(path, "r+b") as f:
            f.write(b"y")
        try:
            send(*server, path, name="f", timeout=HANG_GUARD) if op == "PUT" else get(
                *server, "f", out, timeout=HANG_GUARD
            )
        except TransferError as exc:
            return exc
        # sent: the write fell in an earlier tick than the sender's look (a slow, loaded run); within_one_tick
        # tries again, and what this attempt stored must not count against the next one
        (root / "f" if op == "PUT" else out / "f").unlink()
        return None

    refusal = within_one_tick(attempt)
    assert refusal is not None and refusal.code == "source-changed" and "kept changing" in str(refusal)
    assert leftovers(root) == ([] if op == "PUT" else ["f"]) and leftovers(out) == []


@pytest.mark.parametrize("offset", [-1.0, -3600.0, 3600.0], ids=["a second ago", "an hour ago", "in an hour"])
def test_file_with_an_mtime_outside_the_current_tick_is_sent_at_once(tmp_path, monkeypatch, offset):
    # In the past: every later write is stamped later. Ahead of the real time (a file unpacked from a machine
    # whose clock runs ahead): no write now can stamp it. Neither may be refused, nor wait.
    monkeypatch.setattr(filexfer, "SETTLE_FOR", 0.0)
    path = tmp_path / "f"
    path.write_bytes(b"x")
    mtime = time.time_ns() + int(offset * 1e9)
    os.utime(path, ns=(mtime, mtime))
    with open(path, "rb") as f:
        assert filexfer.settled_stat(f.fileno()).st_mtime_ns == mtime


@pytest.mark.parametrize("op", ["PUT", "GET"])
def test_sender_that_cannot_read_what_it_sent_withdraws_it(server, root, out, tmp_path, monkeypatch, op):
    # No disk fails on demand: the sender's hashing read (pread) fails with EIO, as on a bad sector; the body
    # itself goes by sendfile(), so the receiver gets all of it and must still discard it.
    path = tmp_path / "src.bin" if op == "PUT" else root / "f"
    path.write_bytes(os.urandom(4 << 20))

    def failing_preadv(*args):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "preadv", failing_preadv)
    with pytest.raises(TransferError) as info:
        send(*server, path, name="f") if op == "PUT" else get(*server, "f", out)
    assert info.value.code == "disk-error" and "Input/output error" in str(info.value)
    assert leftovers(root) == ([] if op == "PUT" else ["f"]) and leftovers(out) == []
