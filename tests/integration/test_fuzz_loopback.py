"""Fuzzing the socket servers on loopback (issue 9): 100,000 random lines to the real math server and a few
thousand malformed frames to the real file server. Both must stay up, and every reply must be well formed:
for the math server exactly the reply the protocol's pure function gives for that line, for the file server
one frame of at most 4096 bytes that is an ERR frame with a known code (or "ready" for a valid PUT header).
Since issue 10, the frames that follow a PUT's body where its sha256 trailer goes are fuzzed too."""

from __future__ import annotations

import hashlib
import json
import random
import socket
import struct
import threading
import time
from collections import Counter

import pytest

from labnodes import filexfer, mathserver
from tests.integration.conftest import ServerProcess

HANG_GUARD = 60.0  # seconds; only so that a broken server fails a test instead of hanging it
SEED = 9
CODES = {"bad-frame", "bad-request", "bad-name", "too-large", "not-found", "not-a-file", "bad-trailer",
         "checksum-mismatch", "source-changed", "disk-error", "idle-timeout", "too-slow", "busy", "short-stream",
         "internal-error"}


def random_line(rng: random.Random) -> bytes:
    """A request line (no LF, at most MAX_LINE bytes): valid pairs, near misses, and random bytes."""
    kind = rng.randrange(8)
    if kind == 0:
        return f"{rng.randrange(10**rng.randrange(1, 31))},{rng.randrange(10**rng.randrange(1, 31))}".encode()
    if kind == 1:  # around the limit of 10**30
        return f"{10**30 - rng.randrange(3)},{rng.randrange(10**6)}".encode() if rng.random() < 0.5 else \
            f"{10**30 + rng.randrange(3)},7".encode()
    if kind == 2:
        return rng.choice([b"", b" ", b",", b"-4,6", b"4,-6", b"+5,1", b"4.5,2", b"1,2,3", b"\xff\xfe,1", b"a,b",
                           b"\xd9\xa1,2", b"0x10,2", b"1_0,2", b"48,18\r", b"\t48 , 18\t", b"0" * 200 + b"7,3"])
    if kind == 3:
        alphabet = b"0123456789,- \t\r+.xe"
        return bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 80)))
    return bytes(rng.choice(range(256)) for _ in range(rng.randrange(0, 120))).replace(b"\n", b"")


def test_a_hundred_thousand_fuzzed_lines_get_exactly_the_protocol_s_replies(tmp_path):
    server = ServerProcess(tmp_path, ["math", "serve", "--host", "127.0.0.2", "--port", "0"], hang_guard=HANG_GUARD)
    rng = random.Random(SEED)
    connections, per_connection = 10, 10_000
    wrong, answered = [], 0
    started = time.monotonic()
    try:
        for _ in range(connections):
            lines = [random_line(rng) for _ in range(per_connection)]
            with socket.create_connection(server.address, timeout=HANG_GUARD) as sock:
                sender = threading.Thread(target=sock.sendall, args=(b"".join(line + b"\n" for line in lines),))
                sender.start()
                with sock.makefile("rb") as replies:
                    for line in lines:
                        reply = replies.readline(mathserver.MAX_REPLY)
                        expected = mathserver.answer(line).encode() + b"\n"
                        answered += 1
                        if reply != expected and len(wrong) < 10:
                            wrong.append((line, reply, expected))
                sender.join(HANG_GUARD)
        seconds = time.monotonic() - started
        print(f"math server: {answered} fuzzed lines answered in {seconds:.1f} s ({answered / seconds:.0f}/s), "
              f"{len(wrong)} wrong")
        assert not wrong, wrong
        assert server.proc.poll() is None
        for size in (mathserver.MAX_LINE + 1, 100_000):  # overlong lines: ERR, then the connection closes
            with socket.create_connection(server.address, timeout=HANG_GUARD) as sock:
                sock.sendall(b"7" * size + b"\n")
                assert sock.makefile("rb").readline() == f"ERR {mathserver.ERR_TOO_LONG}\n".encode()
        assert mathserver.ask(*server.address, ["48,18"], timeout=HANG_GUARD)[0]["gcd"] == 6
    finally:
        server.stop()


def random_frame(rng: random.Random) -> bytes:
    """A malformed (or sometimes valid) request frame."""
    kind = rng.randrange(6)
    if kind == 0:  # a length prefix outside 1..4096, or short
        return struct.pack(">I", rng.choice([0, 4097, 2**31, 2**32 - 1])) + b"{}" if rng.random() < 0.8 else b"\x00\x00"
    if kind == 1:  # the right length, random bytes
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        return struct.pack(">I", len(body)) + body
    values = [None, True, -1, 0, 2**70, 1.5, "", " ", ".", "..", "a/b", "x\\y", "\u202e", "a\x00b", "\u00e9",
              "x" * 300, [], {}, "PUT", "GET", "0" * 64, "f" * 64, "9" * 4000]
    header = {}
    if kind in (2, 3, 4):
        header["op"] = rng.choice(["PUT", "GET", "DELETE", None, 5])
    for key in ("name", "size", "sha256", "extra"):
        if rng.random() < 0.7:
            header[key] = rng.choice(values)
    data = json.dumps(header).encode()
    if kind == 5:  # valid JSON that is not an object, or broken JSON
        data = rng.choice([b"[]", b"1", b'"x"', b"{", b'{"op":', b"null", b"{" * 3000])
    data = data[:4096]
    return struct.pack(">I", len(data)) + data


def read_reply(sock: socket.socket) -> dict | None:
    """Read what the server sends until it closes; the first frame must be well formed and at most 4096 bytes."""
    raw = b""
    while chunk := sock.recv(65536):
        raw += chunk
    if not raw:
        return None
    (length,) = struct.unpack(">I", raw[:4])
    assert 1 <= length <= filexfer.MAX_HEADER and len(raw) >= 4 + length, raw[:80]
    return json.loads(raw[4 : 4 + length])


@pytest.fixture
def file_server(tmp_path):
    """A real `labnodes file serve` process on 127.0.0.3 serving tmp_path/root, stopped after the test."""
    server = ServerProcess(tmp_path, ["file", "serve", "--host", "127.0.0.3", "--port", "0", "--root",
                                      str(tmp_path / "root")], hang_guard=HANG_GUARD)
    yield server
    server.stop()


def test_malformed_frames_get_well_formed_err_frames_and_the_server_stays_up(tmp_path, file_server):
    server, root = file_server, tmp_path / "root"
    rng = random.Random(SEED)
    counts: Counter[str] = Counter()
    started = time.monotonic()
    for _ in range(2000):
        with socket.create_connection(server.address, timeout=HANG_GUARD) as sock:
            sock.sendall(random_frame(rng))
            sock.shutdown(socket.SHUT_WR)  # nothing more: a short header ends as short-stream
            reply = read_reply(sock)
        if reply is None:
            counts["(no frame)"] += 1
            continue
        if "error" in reply:
            assert reply["error"] in CODES and isinstance(reply["message"], str), reply
            key = reply["error"]
        else:
            assert reply in ({"status": "ready"},) or reply.get("status") == "sending", reply
            key = reply["status"]
        counts[key] += 1
    seconds = time.monotonic() - started
    print(f"file server: 2000 fuzzed frames in {seconds:.1f} s: {dict(sorted(counts.items()))}")
    assert "internal-error" not in counts
    assert server.proc.poll() is None
    src = tmp_path / "ok.bin"
    src.write_bytes(b"still up")
    assert filexfer.send(*server.address, src, timeout=HANG_GUARD)["size"] == 8
    assert not [p for p in root.iterdir() if p.name.endswith(".part")]


def random_trailer(rng: random.Random, body: bytes) -> bytes:
    """What a broken or hostile client sends after a PUT's body instead of the right trailer."""
    kind = rng.randrange(4)
    if kind == 0:
        return random_frame(rng)
    if kind == 1:  # a trailer whose sha256 is wrong or malformed
        wrong = hashlib.sha256(body + b"!").hexdigest()
        return filexfer.encode_frame({"sha256": rng.choice([None, 5, "", "0" * 64, "f" * 63, "g" * 64, wrong, [wrong]])})
    if kind == 2:  # an ERR frame where the trailer goes: a withdrawal, or a code that is not one
        code = rng.choice(["source-changed", "disk-error", "busy", "stored", "x" * 300, None, 5, {}])
        return filexfer.encode_frame({"error": code, "message": rng.choice(["m", None, "\u00e9" * 900, 7])})
    right = filexfer.encode_frame({"sha256": hashlib.sha256(body).hexdigest()})
    return right[: rng.randrange(len(right))]  # cut short (the stream ends there)


def test_fuzzed_trailers_get_well_formed_err_frames_and_store_nothing(tmp_path, file_server):
    server, root = file_server, tmp_path / "root"
    rng = random.Random(SEED)
    counts: Counter[str] = Counter()
    for _ in range(500):
        body = rng.randbytes(rng.randrange(0, 300))
        with socket.create_connection(server.address, timeout=HANG_GUARD) as sock:
            sock.sendall(filexfer.encode_frame({"op": "PUT", "name": "fuzzed", "size": len(body)}))
            assert filexfer.read_frame(sock) == {"status": "ready"}
            sock.sendall(body + random_trailer(rng, body))
            sock.shutdown(socket.SHUT_WR)
            reply = read_reply(sock)
        assert reply is not None and isinstance(reply.get("message"), str), reply
        assert reply["error"] in {"bad-trailer", "checksum-mismatch", "source-changed", "disk-error"}, reply
        counts[reply["error"]] += 1
    print(f"file server: 500 fuzzed trailers: {dict(sorted(counts.items()))}")
    assert server.proc.poll() is None
    assert list(root.iterdir()) == []  # nothing stored, no temporary file left
