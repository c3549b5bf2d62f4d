"""File transfer: framing and name edge cases, and a real FileServer (thread, port 0) over real sockets."""

import argparse
import ctypes
import errno
import hashlib
import json
import os
import socket
import struct
import threading

import pytest

from labnodes import config, filexfer
from labnodes.filexfer import (
    MAX_HEADER,
    FileServer,
    ProtocolError,
    ShortRead,
    TransferError,
    check_name,
    check_put,
    encode_frame,
    get,
    read_frame,
    recv_exactly,
    send,
)

from filexfer_support import HANG_GUARD, MAX_SIZE, SHA_OF_EMPTY, leftovers, trailer, wait_until



def trickle(sock: socket.socket, data: bytes, close: bool = True) -> threading.Thread:
    """Write data one byte per send() from a thread (then close), so every recv() sees at most one byte."""

    def run():
        for i in range(len(data)):
            sock.send(data[i : i + 1])
        if close:
            sock.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.settimeout(HANG_GUARD)
    with a, b:
        yield a, b


# --- framing ----------------------------------------------------------------------------------------------


def test_recv_exactly_assembles_bytes_arriving_one_at_a_time(pair):
    reader, writer = pair
    trickle(writer, b"hello world", close=False).join()
    assert recv_exactly(reader, 11) == b"hello world"


def test_frame_arriving_one_byte_at_a_time_is_read_whole(pair):
    reader, writer = pair
    trickle(writer, encode_frame({"op": "GET", "name": "a"}) + encode_frame({"op": "x"}))
    assert read_frame(reader) == {"op": "GET", "name": "a"}
    assert read_frame(reader) == {"op": "x"}


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00\x00", struct.pack(">I", 20) + b'{"op": "G', encode_frame({"op": "GET"})[:-1]],
    ids=["nothing", "half-prefix", "half-header", "header-minus-one-byte"],
)
def test_truncated_frame_raises_short_read(pair, data):
    reader, writer = pair
    writer.sendall(data)
    writer.close()
    with pytest.raises(ShortRead):
        read_frame(reader)


@pytest.mark.parametrize("length", [0, MAX_HEADER + 1, 2**32 - 1])
def test_header_length_outside_limits_is_a_bad_frame(pair, length):
    reader, writer = pair
    writer.sendall(struct.pack(">I", length))
    with pytest.raises(ProtocolError) as info:
        read_frame(reader)
    assert info.value.code == "bad-frame"


@pytest.mark.parametrize(
    "header",
    [b"{not json", b"\xff\xfe{}", b"[1, 2]", b'"name"', b"[" * 4000, b"{}x"],
    ids=["bad-json", "not-utf8", "array", "string", "deep-nesting", "trailing-garbage"],
)
def test_header_that_is_not_a_json_object_is_a_bad_frame(pair, header):
    reader, writer = pair
    writer.sendall(struct.pack(">I", len(header)) + header)
    with pytest.raises(ProtocolError) as info:
        read_frame(reader)
    assert info.value.code == "bad-frame"


def test_encode_frame_refuses_a_header_over_the_limit():
    with pytest.raises(ValueError):
        encode_frame({"name": "x" * MAX_HEADER})


# --- names and headers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "../x",
        "/etc/passwd",
        "a/b",
        "a\x00b",
        "a\nb",
        ".hidden",
        ".upload-1.part",
        "x" * 256,
        "\u00e9" * 128,
        "\ud800",
        None,
        5,
        ["a"],
    ],
    ids=repr,
)
def test_name_that_is_not_a_plain_file_name_is_refused(name):
    with pytest.raises(ProtocolError) as info:
        check_name(name)
    assert info.value.code == "bad-name"


@pytest.mark.parametrize("name", ["a", "report 2024.pdf", "x" * 255, "\u00e9" * 127, "a..b", "-rf"])
def test_plain_file_name_is_accepted(name):
    assert check_name(name) == name


@pytest.mark.parametrize(
    "change, code",
    [
        ({"size": 1001}, "too-large"),
        ({"size": -1}, "bad-request"),
        ({"size": "5"}, "bad-request"),
        ({"size": True}, "bad-request"),
        ({"size": 1.5}, "bad-request"),
        ({"size": 10**400}, "too-large"),
        ({"sha256": SHA_OF_EMPTY}, "bad-request"),  # the older framing: the sha256 comes in the trailer now
        ({"sha256": "abc"}, "bad-request"),
        ({"name": "../x"}, "bad-name"),
    ],
)
def test_put_header_with_a_bad_field_is_refused_with_its_code(change, code):
    header = {"op": "PUT", "name": "a", "size": 10, **change}
    with pytest.raises(ProtocolError) as info:
        check_put(header, max_size=1000)
    assert info.value.code == code


# --- a real server ------------------------------------------------------------------------------------------


def write_random(path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def raw_request(address, header: dict, body: bytes = b"", wait_ready: bool = True, after=None) -> dict:
    """Speak the protocol by hand: send a header (and, after "ready", body, then `after`: by default the
    body's right trailer); return the last reply."""
    with socket.create_connection(address, timeout=HANG_GUARD) as sock:
        sock.sendall(encode_frame(header))
        reply = read_frame(sock)
        if header.get("op") == "PUT" and reply.get("status") == "ready" and wait_ready:
            sock.sendall(body + (trailer(body) if after is None else after))
            reply = read_frame(sock)
        return reply


@pytest.mark.parametrize("size", [0, 1, 100_000, 3 * filexfer.CHUNK + 17])
def test_put_then_get_gives_the_same_bytes(server, root, tmp_path, size):
    src = tmp_path / "src.bin"
    digest = write_random(src, size)
    sent = send(*server, src, name="data.bin")
    assert (sent["size"], sent["sha256"]) == (size, digest)
    out = tmp_path / "out"
    out.mkdir()
    fetched = get(*server, "data.bin", out)
    assert fetched["sha256"] == digest
    assert hashlib.sha256((out / "data.bin").read_bytes()).hexdigest() == digest
    assert leftovers(root) == ["data.bin"] and leftovers(out) == ["data.bin"]


def test_each_chunk_received_goes_to_the_disk_as_it_is_written_on_both_ends(server, root, tmp_path, monkeypatch):
    """A receiver starts each chunk's write-back as it writes it (sync_file_range), so that the fsync at the
    end waits for the last chunks only: the ranges started cover the file from its first byte to its last."""
    started = []
    real = filexfer._start_write_back
    monkeypatch.setattr(filexfer, "_start_write_back", lambda fd, off, n: (started.append((off, n)), real(fd, off, n)))
    size = 2 * filexfer.CHUNK + 12345
    src, out = tmp_path / "src.bin", tmp_path / "out"
    out.mkdir()
    digest = write_random(src, size)
    chunks = [(0, filexfer.CHUNK), (filexfer.CHUNK, filexfer.CHUNK), (2 * filexfer.CHUNK, 12345)]
    send(*server, src, name="data.bin")  # the server receives
    assert started == chunks
    started.clear()
    assert get(*server, "data.bin", out)["sha256"] == digest  # the client receives
    assert started == chunks


def test_the_write_back_call_is_the_c_librarys_sync_file_range(tmp_path):
    call = filexfer._sync_file_range()
    assert call is not None  # Linux's C library has it: without it, write-back waits for the fsync
    with open(tmp_path / "f", "wb") as f:
        f.write(b"x" * 65536)
        f.flush()
        assert call(f.fileno(), 0, 65536, filexfer.SYNC_FILE_RANGE_WRITE) == 0
    r, w = os.pipe()  # not a file: the call reaches the kernel, which says so
    try:
        assert call(r, 0, 1, filexfer.SYNC_FILE_RANGE_WRITE) == -1 and ctypes.get_errno() == errno.ESPIPE
    finally:
        os.close(r)
        os.close(w)
    filexfer._start_write_back(-1, 0, 1)  # its result is not looked at: the fsync reports errors


def test_put_overwrites_an_existing_file_atomically(server, root, tmp_path):
    src = tmp_path / "a"
    src.write_bytes(b"first")
    send(*server, src, name="same")
    src.write_bytes(b"second version")
    send(*server, src, name="same")
    assert (root / "same").read_bytes() == b"second version"
    assert leftovers(root) == ["same"]


@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "a/b", "a\x00b", ".hidden", "", "x" * 256])
def test_put_with_a_bad_name_is_refused_and_writes_nothing(server, root, tmp_path, name):
    reply = raw_request(server, {"op": "PUT", "name": name, "size": 0})
    assert reply["error"] == "bad-name"
    assert leftovers(root) == []
    assert not (tmp_path / "escape").exists()


@pytest.mark.parametrize("name", ["../root/x", "/etc/passwd", "a\x00b"])
def test_get_with_a_bad_name_is_refused(server, name):
    assert raw_request(server, {"op": "GET", "name": name})["error"] == "bad-name"


def test_get_of_a_symlink_pointing_out_of_the_root_is_refused(server, root, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("not for you")
    (root / "link").symlink_to(secret)
    reply = raw_request(server, {"op": "GET", "name": "link"})
    assert reply["error"] == "not-a-file" and "not for you" not in json.dumps(reply)


def test_put_onto_a_symlink_replaces_the_link_not_its_target(server, root, tmp_path):
    target = tmp_path / "target"
    target.write_text("untouched")
    (root / "link").symlink_to(target)
    src = tmp_path / "src"
    src.write_text("new")
    send(*server, src, name="link")
    assert target.read_text() == "untouched"
    assert not (root / "link").is_symlink() and (root / "link").read_text() == "new"


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_get_of_something_that_is_not_a_regular_file_is_refused(server, root, kind):
    (root / "thing").mkdir() if kind == "directory" else os.mkfifo(root / "thing")
    assert raw_request(server, {"op": "GET", "name": "thing"})["error"] == "not-a-file"


def test_put_onto_a_directory_is_refused_and_leaves_no_temp_file(server, root):
    (root / "dir").mkdir()
    reply = raw_request(server, {"op": "PUT", "name": "dir", "size": 0})
    assert reply["error"] == "not-a-file"
    assert leftovers(root) == ["dir"]


def test_get_of_a_missing_file_is_not_found(server):
    assert raw_request(server, {"op": "GET", "name": "nope"})["error"] == "not-found"


def test_size_over_the_limit_is_refused_from_the_header_before_any_byte(server, root):
    header = {"op": "PUT", "name": "big", "size": MAX_SIZE + 1}
    reply = raw_request(server, header, wait_ready=False)  # the refusal comes instead of "ready"
    assert reply["error"] == "too-large"
    assert leftovers(root) == []


@pytest.mark.parametrize("size", [5, 3 * filexfer.CHUNK + 17])
def test_checksum_mismatch_is_refused_and_leaves_nothing(server, root, size):
    body = os.urandom(size)
    reply = raw_request(server, {"op": "PUT", "name": "a", "size": size}, body, after=trailer(body + b"x"))
    assert reply["error"] == "checksum-mismatch"
    assert leftovers(root) == []


@pytest.mark.parametrize(
    "header, code",
    [
        ({"op": "DELETE", "name": "a"}, "bad-request"),
        ({"name": "a"}, "bad-request"),
        ({"op": "PUT", "name": "a"}, "bad-request"),
    ],
)
def test_bad_request_gets_an_err_frame(server, header, code):
    assert raw_request(server, header)["error"] == code


def test_garbage_instead_of_a_frame_gets_a_bad_frame_err(server):
    with socket.create_connection(server, timeout=HANG_GUARD) as sock:
        sock.sendall(b"GET /etc/passwd HTTP/1.0\r\n\r\n")
        assert read_frame(sock)["error"] == "bad-frame"


def test_upload_cut_off_half_way_leaves_no_temp_file(server, root):
    with socket.create_connection(server, timeout=HANG_GUARD) as sock:
        sock.sendall(encode_frame({"op": "PUT", "name": "a", "size": 1000}))
        assert read_frame(sock) == {"status": "ready"}
        sock.sendall(b"x" * 500)
        wait_until(lambda: leftovers(root), "the temporary file exists")
    wait_until(lambda: not leftovers(root), "the temporary file is removed")


def test_stalled_upload_gets_idle_timeout_and_leaves_nothing(root):
    srv = FileServer(root, "127.0.0.1", 0, idle_timeout=0.3)
    address = srv.start_in_thread()
    try:
        with socket.create_connection(address, timeout=HANG_GUARD) as sock:
            sock.sendall(encode_frame({"op": "PUT", "name": "a", "size": 1000}))
            assert read_frame(sock) == {"status": "ready"}
            sock.sendall(b"x" * 10)
            assert read_frame(sock)["error"] == "idle-timeout"
        assert leftovers(root) == []
    finally:
        srv.close()


def test_server_shutdown_during_an_upload_removes_the_temp_file(root):
    srv = FileServer(root, "127.0.0.1", 0)
    address = srv.start_in_thread()
    with socket.create_connection(address, timeout=HANG_GUARD) as sock:
        sock.sendall(encode_frame({"op": "PUT", "name": "a", "size": 1000}))
        assert read_frame(sock) == {"status": "ready"}
        sock.sendall(b"x" * 10)
        wait_until(lambda: leftovers(root), "the temporary file exists")
        srv.close()
        assert leftovers(root) == []
        with pytest.raises((ShortRead, ProtocolError, OSError)):
            read_frame(sock)


def test_stale_temp_files_of_a_killed_server_are_removed_at_start(root):
    (root / ".upload-deadbeef.part").write_bytes(b"half")
    (root / "kept").write_bytes(b"file")
    FileServer(root, "127.0.0.1", 0).close()
    assert leftovers(root) == ["kept"]


def test_a_second_server_on_the_same_root_is_refused_until_the_first_closes(root, tmp_path):
    """The second server's start-up removed the first one's unfinished uploads (.upload-*.part) as stale."""
    from labnodes import LabnodesError

    first = FileServer(root, "127.0.0.1", 0)
    try:
        (root / ".upload-inflight.part").write_bytes(b"the first server's upload, under way")
        with pytest.raises(LabnodesError, match=f"another file server serves {root}: two must not share a root"):
            FileServer(root, "127.0.0.1", 0)
        assert leftovers(root) == [".upload-inflight.part"]
        FileServer(tmp_path / "elsewhere", "127.0.0.1", 0).close()  # another root: no conflict
    finally:
        first.close()
    FileServer(root, "127.0.0.1", 0).close()  # the lock went with the first server


# --- the client against peers that misbehave ---------------------------------------------------------------


def one_shot_server(reply: bytes):
    """A hand-written peer: accept one connection, read the request frame, send `reply`, close."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(HANG_GUARD)

    def run():
        with listener, listener.accept()[0] as conn:
            conn.settimeout(HANG_GUARD)
            read_frame(conn)
            conn.sendall(reply)

    threading.Thread(target=run, daemon=True).start()
    return listener.getsockname()[:2]


@pytest.mark.parametrize(
    "reply, code",
    [
        (
            encode_frame({"status": "sending", "name": "a", "size": 5}) + b"hello" + trailer(b""),
            "checksum-mismatch",
        ),
        (encode_frame({"status": "sending", "name": "a", "size": 5000}) + b"hello", "short-stream"),
        (encode_frame({"status": "sending", "name": "../a", "size": 0}) + trailer(b""), "bad-request"),
        (encode_frame({"status": "sending", "name": "a", "size": -1}), "bad-request"),
        (struct.pack(">I", 10**6), "bad-frame"),
        (b"", "short-stream"),
    ],
    ids=["checksum-mismatch", "short-stream", "other-name", "negative-size", "huge-header", "closed"],
)
def test_get_from_a_misbehaving_server_fails_and_leaves_nothing(tmp_path, reply, code):
    address = one_shot_server(reply)
    with pytest.raises(TransferError) as info:
        get(*address, "a", tmp_path)
    assert info.value.code == code
    assert leftovers(tmp_path) == []


def test_get_refuses_a_reply_over_its_size_limit_and_writes_nothing(server, tmp_path):
    src = tmp_path / "src.bin"
    write_random(src, 1000)
    send(*server, src, name="big")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(TransferError) as info:
        get(*server, "big", out, max_size=999)
    assert info.value.code == "too-large" and "1000 bytes is over the limit of 999" in str(info.value)
    assert leftovers(out) == []
    assert get(*server, "big", out, max_size=1000)["size"] == 1000  # the limit itself is allowed


def test_send_and_get_report_a_refused_connection(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as probe:
        address = probe.getsockname()[:2]
    (tmp_path / "f").write_bytes(b"x")
    for attempt in (lambda: send(*address, tmp_path / "f"), lambda: get(*address, "f", tmp_path)):
        with pytest.raises(TransferError, match="cannot connect") as info:
            attempt()
        assert (info.value.code, info.value.address) == ("connect", "%s:%d" % address)


def test_send_refuses_a_missing_file_and_get_a_missing_directory(server, tmp_path):
    with pytest.raises(TransferError, match="cannot read"):
        send(*server, tmp_path / "missing")
    with pytest.raises(TransferError, match="output directory"):
        get(*server, "x", tmp_path / "missing")


# --- the `file send` / `file get` commands -----------------------------------------------------------------


def run_file(argv):
    parser = argparse.ArgumentParser()
    filexfer.register(parser.add_subparsers())
    args = parser.parse_args(["file", *argv])
    return args.func(args, config.load(env={}, overrides=vars(args)))


def test_send_and_get_commands_print_json(server, tmp_path, capsys):
    src = tmp_path / "notes.txt"
    digest = write_random(src, 1234)
    port = str(server[1])
    assert run_file(["send", "--port", port, "--json", str(src)]) == 0
    sent = json.loads(capsys.readouterr().out)
    (tmp_path / "out").mkdir()
    assert run_file(["get", "--port", port, "--json", "notes.txt", "--out", str(tmp_path / "out")]) == 0
    fetched = json.loads(capsys.readouterr().out)
    assert sent["sha256"] == fetched["sha256"] == digest and fetched["size"] == 1234


def test_refused_send_command_raises_one_clear_error(server, tmp_path):
    src = tmp_path / "f"
    src.write_bytes(b"x")
    with pytest.raises(TransferError, match=r"bad name '\.\./f'") as info:
        run_file(["send", "--port", str(server[1]), str(src), "--name", "../f"])
    assert "\n" not in str(info.value)
