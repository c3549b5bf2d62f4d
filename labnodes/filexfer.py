"""File transfer over TCP: length-prefixed JSON headers, raw bytes streamed, verified in one pass by a sha256
trailer, then renamed.

Frames
    frame = LEN HEADER [BODY]
    LEN    = 4-byte big-endian unsigned length of HEADER, 1..4096 (MAX_HEADER)
    HEADER = a UTF-8 JSON object
    BODY   = raw bytes, only where a header announces them with "size"; always followed by a trailer frame

One request per connection; the server closes the connection after its last reply.

    PUT  client: {"op": "PUT", "name": N, "size": S}
         server: {"status": "ready"}                      or an ERR frame (refused from the header alone)
         client: exactly S raw bytes, then the trailer {"sha256": H}
         server: {"status": "stored", "name": N, "size": S, "sha256": H}   or an ERR frame
    GET  client: {"op": "GET", "name": N}
         server: {"status": "sending", "name": N, "size": S}, exactly S raw bytes, then the trailer
                 {"sha256": H}; or an ERR frame instead of the "sending" header

    ERR frame: {"error": CODE, "message": "one line for people"}
               (a message is cut to 600 characters, so every ERR frame fits the 4096-byte header limit;
               a message never echoes a number or name the client sent that could be long)

The trailer is an ordinary frame. H is the sha256 (64 hex digits, either case) of the S bytes, computed by the
sender while it sends them, so each end reads the bytes once: the sender needs no pass over the file before
the first byte goes. The receiver hashes the bytes as they arrive and keeps them (renames its temporary file
into place) only if its sha256 equals the trailer's; otherwise checksum-mismatch, and the temporary file is
removed. A reader ignores fields it does not know, in a trailer as in a header.

Withdrawal: a sender that has sent the whole body but cannot vouch for it sends an ERR frame where the
trailer goes, with code source-changed (the file changed while it was sent) or disk-error (it could not be
read); the receiver discards the body. The server answers a withdrawn PUT with an ERR frame of the same code.
Anything else in the trailer's place is bad-trailer: an ERR frame with another code, no frame at all (the
connection ended after the body or inside the trailer), a broken frame, or an object without a valid "sha256".

The sha256 is never in a header. A PUT header with "sha256" (the framing before trailers, which hashed the
whole file before sending) is refused as bad-request before "ready", and a GET client refuses a "sending"
reply that has one, so a client and server of different versions fail at once with one line instead of
waiting for a trailer that never comes. A caller that knows the sha256 in advance gives it to the library
(send(..., sha256=H)): the client then does not hash but puts H in its trailer, so the server's check also
refuses a file that is not the one the caller meant.

A file that changes while it is sent is never stored as good. Hashing bytes while they are sent cannot see a
change by itself (a write that lands before both the sending and the hashing read reaches it gives a torn
body whose sha256 matches), so the sender also compares the file's size and mtime before the first byte and
after the last, and withdraws (source-changed) if they moved. The kernel stamps file times from a coarse
clock that advances in ticks (4 ms here), so a write in the same tick as the previous one would leave the
mtime as it was. The sender therefore starts only once the mtime is older than the coarse clock read just
before its fstat (every later write is stamped at least that), or ahead of the real time (set by hand: no
write now can give it): a file written a moment ago waits at most a tick, and a file that keeps changing for
1 s is refused (source-changed, before any byte). The ctime is not compared: renaming over or unlinking an
open file changes it, and a GET whose file a PUT of the same name replaces mid-way still sends the old file,
whole and consistent. A change that leaves size and mtime alone (a writer that puts the mtime back, a write
through mmap that the file system does not date) is still caught when it falls between the hashing thread's
read and sendfile()'s read of the same bytes: the receiver then says checksum-mismatch. If the file shrinks
under sendfile(), the body falls short and the sender closes the connection (the receiver: short-stream).

The server answers "ready" before the client sends any byte of a PUT: a refusal (bad name, too large) then
costs no transfer, and it arrives intact (a server that closed a socket while the client was still sending
would make the kernel reset the connection, and the reset can destroy the ERR frame on its way). A GET reply
of at most 64 KiB travels in one buffer with its header and trailer; so does a PUT body of at most 64 KiB
with its trailer.

Error codes
    bad-frame          header length outside 1..4096, not UTF-8, not JSON, or not an object
    bad-request        unknown "op", a field missing or of the wrong type ("size" a non-negative integer), or
                       a "sha256" in a PUT header or a "sending" reply (a peer of the older framing)
    bad-name           the name is not a plain file name: empty, ".", "..", contains "/" or "\\" or NUL or a
                       control character, an invisible character (Unicode format, e.g. the bidi override
                       U+202E or a zero-width space, or a line/paragraph separator), begins or ends with a
                       blank (so " " is refused), starts with "." (reserved for temporary files), over 255
                       bytes in UTF-8
    too-large          "size" is over file_max_size; refused before any byte is written (the client of a GET
                       refuses a reply over its own file_max_size the same way, then closes)
    not-found          GET of a name that does not exist
    not-a-file         GET of a directory, a symbolic link (never followed), a device or a FIFO; PUT onto a
                       directory (refused from the header, before "ready": no body is taken)
    bad-trailer        the frame after a body is missing (the connection ended after the body or inside the
                       trailer), is not a frame, is not an object with "sha256" of 64 hex digits, or is an ERR
                       frame whose code is not a withdrawal (source-changed, disk-error)
    checksum-mismatch  the sha256 of the received bytes differs from the trailer's
    source-changed     the file changed while it was sent (its size or mtime moved): the sender's withdrawal
                       in the trailer's place, and the server's answer to it; or a file that kept changing for
                       1 s, refused before any byte (by the server instead of "sending"; by the client before
                       it connects)
    disk-error         the server could not write the file (full disk, permissions, ...), or a sender could
                       not read it after sending the body (a withdrawal)
    idle-timeout       no progress for file_idle_timeout seconds
    too-slow           the overall deadline passed: the header must be complete within file_idle_timeout s,
                       and a body of S bytes and its trailer within file_idle_timeout + S / file_min_rate s (a
                       client sending a byte a second cannot hold a connection for ever). A GET reader that is
                       too slow is cut off (connection reset: no frame can follow in the middle of a body).
    busy               file_max_connections connections are being served; sent at once, without a thread,
                       then the connection is closed (try again later)
    short-stream       the peer closed the connection before all announced bytes arrived (logged; there is
                       nobody left to send the ERR frame to)
    internal-error     a bug in the server (its log has the traceback)
A server that shuts down closes open connections without an ERR frame: clients see short-stream or
connection-lost.

Limits: at most file_max_connections (32) connections are served at once, one thread each; more get "busy"
at once. Memory is bounded per transfer and in all (below); a refused connection is drained for at most 1 s
before it is closed, so the kernel does not reset the ERR frame away.

Receiving (the server for PUT, the client for GET) streams in constant memory (at most 4 buffers of 4 MiB,
anonymous mmaps made only when the hasher falls behind, so only the bytes actually received are resident: a
stalled upload holds what it sent, not 16 MiB; on the server, buffers beyond each upload's first come from
12 shared ones, so 32 uploads at full speed hold at most 32 x 4 + 48 MiB = 176 MiB, not 512 MiB; a second
thread hashes one chunk while the next is received and written): 4 MiB chunks go into a temporary
file in the destination directory (".upload-<random>.part" on the server, ".download-<random>.part" on the
client), hashed as they arrive, and each chunk's write-back to the disk started as soon as it is written
(sync_file_range(SYNC_FILE_RANGE_WRITE), which does not wait), so that the disk writes while the rest arrives
and the fsync at the end waits for the last chunks only, not for the whole file: on a 2-core VM's disk, writing
1 GB then fsync took 0.53-0.78 s, 0.29 s with each 4 MiB chunk's write-back started as it went (where
sync_file_range is missing, as on tmpfs or outside Linux, nothing changes; an error in that write-back is
reported by the fsync, as any other); then the trailer is read and compared, then fsync; only if the sha256 matches
is the file renamed to its name, which atomically replaces an existing file of that name (readers of the old
file keep the old content). On any failure the temporary file is removed, so a refused or broken transfer
leaves nothing behind on either side.

Sending (the client for PUT, the server for GET) uses socket.sendfile(): the kernel moves the file's
page-cache pages to the socket, no copy through Python. A second thread hashes the same bytes meanwhile,
reading them with pread() into one 1 MiB buffer (constant memory). hashlib, pread() and sendfile() release
the GIL, so the two run on two cores and a transfer takes about max(send, hash), not send + hash. Not an mmap
of the file: a file truncated under an mmap kills the process with SIGBUS. Measured (PUT of 256 MiB over
loopback, 2 shared cores, medians of interleaved rounds): sendfile() with this hasher (1 or 4 MiB reads), with
an mmap hasher, and a pipeline without sendfile() that reads 1 MiB, hashes it in one thread and sends it from
the other all reached 0.82-0.99 GB/s, within the noise of each other; the receiver bounds them all (without
any hashing at the sender, 1.06 GB/s). sendfile() keeps the one copy fewer that counts between two machines,
1 MiB a quarter of the memory of 4 MiB per GET.

Names are confined to the root: plain names only, opened relative to the root directory with O_NOFOLLOW. At
start-up the server removes ".upload-*.part" files left by a killed server, so two servers must not share one
root: a server holds a lock (flock) on its root while it runs, and a second one on the same root is refused in
one line. On SIGTERM/SIGINT the server stops accepting, closes every connection, removes in-flight temporary
files and exits 0. Log (INFO, logger `labnodes.filexfer`): one line per transfer with the peer, op, name,
size, sha256 prefix, MB/s and result.

Commands (send and get print a table, or JSON with --json; any refusal is one line on stderr and exit 1):
    labnodes file serve [--host H] [--port P] [--root DIR]
    labnodes file send [--host H] [--port P] [--json] PATH [--name N]
    labnodes file get [--host H] [--port P] [--json] NAME --out DIR
    labnodes file make PATH --size MB [--json]
        A file of MB MiB of random bytes to send (1 up to file_max_size), written whole or not at all: into a
        temporary file beside PATH, renamed over PATH once complete, removed if anything stops it (a full
        disk, an interrupt, the end of a `--tethered` session). `fab send-file` makes its file this way; its
        `head -c ... > PATH.tmp` went on writing after fab was stopped, into the file the next run made.

Library use (tests, Fabric): `send(host, port, path, name=None, sha256=None) -> dict`, `get(host, port,
name, out_dir) -> dict` (both report the sha256 of the bytes moved); both raise TransferError (a
LabnodesError with a .code) on any refusal or failure. `FileServer(root).start_in_thread()` serves on a free
port and returns (host, port).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import logging
import mmap
import os
import queue
import re
import secrets
import signal
import socket
import stat
import struct
import tempfile
import threading
import time
import unicodedata

from labnodes import LabnodesError

log = logging.getLogger(__name__)

MAX_HEADER = 4096  # bytes of JSON header
MAX_NAME = 255  # bytes of UTF-8 in a file name (NAME_MAX on Linux)
MAX_MESSAGE = 600  # characters of an ERR message (at most 4 bytes each in UTF-8 JSON: always fits a frame)
MAX_CONNECTIONS = 32  # connections served at once; more get a "busy" ERR frame
MIN_RATE = 16 * 1024  # bytes/s a transfer must average (after a grace of idle_timeout) or it ends "too-slow"
LINGER = 1.0  # seconds a refused connection stays open to drain its request, so the ERR frame is not reset
# Unicode categories refused in names: control, format (bidi overrides, zero-width), surrogate, line/paragraph
_BAD_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}
CHUNK = 4 << 20  # bytes received, written to disk and hashed at a time
BUFFERS = 4  # chunks in flight between the receiving (and writing) thread and the hashing thread
SHARED_BUFFERS = 12  # a server's uploads share this many chunks beyond each one's first (48 MiB)
SMALL_BODY = 64 * 1024  # a body up to this size is sent in one buffer with its header (GET) and trailer
HASH_CHUNK = 1 << 20  # bytes a sender's hashing thread reads (pread) and hashes at a time
COARSE_CLOCK = 5  # Linux's CLOCK_REALTIME_COARSE (the time module does not name it): file times come from it
SETTLE_FOR = 1.0  # s a sender waits for a file to stop changing; a file still changing then is refused
WITHDRAWALS = ("source-changed", "disk-error")  # ERR codes a sender may send in the trailer's place
HASH_THREAD = "filexfer-hash"  # the name of a sender's hashing thread
PREFIX = struct.Struct(">I")
SERVER_TEMP, CLIENT_TEMP, TEMP_SUFFIX = ".upload-", ".download-", ".part"
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ProtocolError(Exception):
    """A refusal or failure with an ERR code; travels to the peer as {"error": code, "message": message}."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message

    def frame(self) -> bytes:
        """The ERR frame; a message too long for a frame is cut (every refusal must fit a frame)."""
        message = self.message if len(self.message) <= MAX_MESSAGE else self.message[:MAX_MESSAGE] + "..."
        return encode_frame({"error": self.code[:64], "message": message})


class ShortRead(ProtocolError):
    """The peer closed the connection before sending all the bytes it announced."""

    def __init__(self, got: int, wanted: int):
        super().__init__("short-stream", f"connection closed after {got} of {wanted} bytes")


class Withdrawn(ProtocolError):
    """A sender sent the whole body but cannot vouch for it: this ERR frame goes where the trailer would."""


class TransferError(LabnodesError):
    """A client-side failure; .code is the server's ERR code, or one of the client's own: connect, timeout
    (no connection), connection-lost, idle-timeout, local (the local file or directory), or the code of a
    check the client made itself (bad-name, bad-frame, bad-request, short-stream, bad-trailer,
    checksum-mismatch, source-changed, disk-error)."""

    def __init__(self, code: str, message: str, address: str = ""):
        super().__init__(message, code=code, address=address)


# --- framing ----------------------------------------------------------------------------------------------


class Deadline:
    """An overall deadline for a phase of a connection, on top of the per-read idle timeout.

    Before each read, arm(sock) sets the socket's timeout to what is left (at most idle_timeout); once the
    deadline has passed it raises ProtocolError("too-slow"). A TimeoutError from a read is then too-slow if
    expired(), else idle-timeout.
    """

    def __init__(self, seconds: float, idle_timeout: float, why: str):
        self.at = time.monotonic() + seconds
        self.idle_timeout, self.why = idle_timeout, why

    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def arm(self, sock: socket.socket) -> None:
        left = self.at - time.monotonic()
        if left <= 0:
            raise ProtocolError("too-slow", self.why)
        sock.settimeout(min(self.idle_timeout, left))


def recv_exactly(sock: socket.socket, n: int, deadline: Deadline | None = None) -> bytes:
    """Read exactly n bytes (one recv() may return any part of them); ShortRead if the stream ends first."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        if deadline is not None:
            deadline.arm(sock)
        k = sock.recv_into(view[got:])
        if k == 0:
            raise ShortRead(got, n)
        got += k
    return bytes(buf)


def encode_frame(header: dict, body: bytes = b"") -> bytes:
    data = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if not 1 <= len(data) <= MAX_HEADER:
        raise ValueError(f"header of {len(data)} bytes is outside 1..{MAX_HEADER}")
    return PREFIX.pack(len(data)) + data + body


def decode_header(data: bytes) -> dict:
    try:
        header = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ProtocolError("bad-frame", "header is not UTF-8") from None
    except (ValueError, RecursionError):
        raise ProtocolError("bad-frame", "header is not valid JSON") from None
    if not isinstance(header, dict):
        raise ProtocolError("bad-frame", "header is not a JSON object")
    return header


def read_frame(sock: socket.socket, deadline: Deadline | None = None) -> dict:
    """Read one frame's header: the 4-byte length, then that many bytes of JSON object."""
    (length,) = PREFIX.unpack(recv_exactly(sock, PREFIX.size, deadline))
    if not 1 <= length <= MAX_HEADER:
        raise ProtocolError("bad-frame", f"header length {length} is outside 1..{MAX_HEADER}")
    return decode_header(recv_exactly(sock, length, deadline))


# --- validation -------------------------------------------------------------------------------------------


def check_name(name) -> str:
    """Return name if it is a plain file name allowed in the root, else raise ProtocolError('bad-name')."""
    if not isinstance(name, str) or not name:
        raise ProtocolError("bad-name", "name must be a non-empty string")
    if name in (".", "..") or "/" in name:
        raise ProtocolError("bad-name", "name must be a plain file name (no '/', not '.' or '..')")
    if name.startswith("."):
        raise ProtocolError("bad-name", "name must not start with '.' (reserved for temporary files)")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ProtocolError("bad-name", "name must not contain NUL or control characters")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError("bad-name", "name is not valid Unicode") from None
    if name != name.strip():
        raise ProtocolError("bad-name", "name must not begin or end with a blank (or be only blanks)")
    if "\\" in name:
        raise ProtocolError("bad-name", "name must not contain '\\' (a path separator on other systems)")
    if any(unicodedata.category(c) in _BAD_CATEGORIES for c in name):
        raise ProtocolError(
            "bad-name", "name must not contain invisible characters (bidi controls, zero-width, line separators)"
        )
    if len(encoded) > MAX_NAME:
        raise ProtocolError("bad-name", f"name is longer than {MAX_NAME} bytes")
    return name


def _check_size(size, max_size: int | None = None) -> int:
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ProtocolError("bad-request", "size must be a non-negative integer")
    if max_size is not None and size > max_size:
        said = f"{size} bytes" if size < 10**20 else "the announced size"  # never echo a 4,000-digit size
        raise ProtocolError("too-large", f"{said} is over the limit of {max_size} bytes")
    return size


def _check_sha256(digest, code: str = "bad-request", message: str = "sha256 must be 64 hex digits") -> str:
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest.lower()):
        raise ProtocolError(code, message)
    return digest.lower()


def check_no_sha256(header: dict) -> None:
    """A header (PUT, or a GET's "sending" reply) must not carry the sha256: it comes in the trailer."""
    if "sha256" in header:
        raise ProtocolError(
            "bad-request",
            "sha256 belongs in the trailer after the body, not in the header (a peer of the older framing?)",
        )


def check_put(header: dict, max_size: int) -> tuple[str, int]:
    """Validate a PUT header; return (name, size)."""
    name, size = check_name(header.get("name")), _check_size(header.get("size"), max_size)
    check_no_sha256(header)
    return name, size


def check_trailer(frame: dict) -> str:
    """The sha256 a sender vouches for in the frame after its body; ProtocolError if the frame withdraws the
    body (its own code, one of WITHDRAWALS) or is not a trailer (bad-trailer)."""
    if "error" in frame:
        code = frame["error"]
        if code in WITHDRAWALS:
            raise ProtocolError(code, f"the sender withdrew the body: {str(frame.get('message'))[:300]}")
        raise ProtocolError("bad-trailer", f"expected the trailer, not an ERR frame {str(code)[:64]!r}")
    return _check_sha256(frame.get("sha256"), "bad-trailer", 'the trailer must be {"sha256": 64 hex digits}')


def read_trailer(sock: socket.socket, deadline: Deadline | None = None) -> str:
    """Read the frame after a body and return the sha256 it vouches for (see check_trailer)."""
    try:
        frame = read_frame(sock, deadline)
    except ShortRead:
        raise ProtocolError("bad-trailer", "the connection ended after the body, before the trailer") from None
    except ProtocolError as exc:  # bad-frame
        raise ProtocolError("bad-trailer", f"the trailer is not a frame: {exc.message}") from None
    return check_trailer(frame)


def file_sha256(fd: int, size: int, stop: threading.Event | None = None) -> tuple[str, int]:
    """sha256 of the first size bytes of an open file (by descriptor), read with pread() into one HASH_CHUNK
    buffer; returns (hex digest, bytes hashed), fewer bytes if the file is shorter or `stop` was set."""
    hasher = hashlib.sha256()
    buf = memoryview(bytearray(min(HASH_CHUNK, max(size, 1))))
    offset = 0
    while offset < size and not (stop is not None and stop.is_set()):
        n = os.preadv(fd, [buf[: min(len(buf), size - offset)]], offset)
        if n == 0:
            break
        hasher.update(buf[:n])
        offset += n
    return hasher.hexdigest(), offset


# --- receiving into a temporary file -----------------------------------------------------------------------


@functools.cache
def _sync_file_range():
    """sync_file_range(fd, offset, nbytes, flags) from the C library (the os module has no wrapper), or None
    where there is none. Looked up on the first receive: ctypes would add 1.3 ms to every start of the CLI."""
    import ctypes

    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    call.restype = ctypes.c_int
    return call


SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>: start the write-back of dirty pages in the range, do not wait


def _start_write_back(fd: int, offset: int, nbytes: int) -> None:
    """Start writing a chunk just written to the disk (see the module docstring). Its result is not looked at:
    it only starts the write-back, and the fsync that ends every receive reports any error in it."""
    call = _sync_file_range()
    if call is not None:
        call(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE)


class _Receiver:
    """Streams `size` bytes from a socket into a temporary file in one directory; commit() renames it.

    Use as a context manager: leaving the block without commit() removes the temporary file.
    """

    def __init__(self, dir_fd: int, prefix: str, budget: threading.Semaphore | None = None):
        self.dir_fd = dir_fd
        self.budget = budget  # shared by a server's transfers: buffers beyond each transfer's first
        self.temp = f"{prefix}{secrets.token_hex(8)}{TEMP_SUFFIX}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            self.fd = os.open(self.temp, flags, 0o644, dir_fd=dir_fd)
        except OSError as exc:
            raise ProtocolError("disk-error", f"cannot create a temporary file: {exc.strerror}") from None
        self.done = False
        self.written = 0  # bytes written so far: where the next chunk's write-back starts

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if self.fd >= 0:
            os.close(self.fd)
        if not self.done:
            try:
                os.unlink(self.temp, dir_fd=self.dir_fd)
            except FileNotFoundError:
                pass

    def receive(self, sock: socket.socket, size: int, deadline: Deadline | None = None) -> str:
        """Read exactly size bytes in chunks, write and hash them, then the sender's trailer; check the sha256
        against it, fsync, and return it.

        This thread receives each chunk and writes it out while it is still in this core's cache; a helper
        thread hashes it meanwhile (hashlib, recv and write all release the GIL), so hashing overlaps the
        transfer. Measured on 2 cores (1 GiB, loopback): this split with 4 MiB chunks reaches about 0.83 of
        a raw copy (median), where hashing and writing in the helper with 1 MiB chunks reached 0.67.

        Memory: at most BUFFERS chunks, made only when the hasher is behind (a slow transfer uses one), as
        anonymous mmaps: only the pages bytes were received into are resident (a stalled upload that sent
        1 MB holds about 1 MB, not 16 MiB), and they go back to the system when the transfer ends.
        """
        hasher = hashlib.sha256()
        free: queue.SimpleQueue = queue.SimpleQueue()
        full: queue.SimpleQueue = queue.SimpleQueue()
        maps: list[mmap.mmap] = []
        views: list[memoryview] = []
        limit = min(BUFFERS, size // CHUNK + 1)  # a small file gets one buffer of its own size

        borrowed = 0

        def take() -> memoryview:
            nonlocal borrowed
            if len(maps) >= limit or not free.empty():
                return free.get()
            if maps and self.budget is not None:  # the first buffer is the transfer's own; more are shared
                if not self.budget.acquire(blocking=False):
                    return free.get()  # the server's budget is spent: go on with the buffers already made
                borrowed += 1
            maps.append(mmap.mmap(-1, min(CHUNK, max(size, 1))))
            views.append(memoryview(maps[-1]))
            return views[-1]

        def hash_chunks():
            while (item := full.get()) is not None:
                view, n = item
                hasher.update(view[:n])
                free.put(view)

        worker = threading.Thread(target=hash_chunks, name="hash", daemon=True)
        worker.start()
        try:
            remaining = size
            while remaining:
                view = take()
                want = min(CHUNK, remaining)
                got = 0
                while got < want:  # fill the chunk: fewer, larger disk writes and hash updates
                    if deadline is not None:
                        deadline.arm(sock)
                    n = sock.recv_into(view[got:want])
                    if n == 0:
                        raise ShortRead(size - remaining + got, size)
                    got += n
                self._write(view[:got])
                full.put((view, got))
                remaining -= got
        finally:
            full.put(None)
            worker.join()
            for view in views:
                view.release()
            for m in maps:
                try:
                    m.close()
                except BufferError:  # a traceback still holds a slice: unmapped when it goes
                    pass
            for _ in range(borrowed):
                self.budget.release()
        actual, claimed = hasher.hexdigest(), read_trailer(sock, deadline)
        if actual != claimed:
            raise ProtocolError(
                "checksum-mismatch", f"sha256 of the received bytes is {actual}, the trailer says {claimed}"
            )
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise ProtocolError("disk-error", f"cannot write the file: {exc.strerror}") from None
        return actual

    def _write(self, data) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as exc:
            raise ProtocolError("disk-error", f"cannot write the file: {exc.strerror}") from None
        _start_write_back(self.fd, self.written, len(data))
        self.written += len(data)

    def commit(self, name: str) -> None:
        """Rename the verified temporary file to name (atomically replacing a file of that name)."""
        try:
            os.rename(self.temp, name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        except IsADirectoryError:
            raise ProtocolError("not-a-file", f"{name} is a directory") from None
        except OSError as exc:
            raise ProtocolError("disk-error", f"cannot rename into place: {exc.strerror}") from None
        self.done = True
        try:
            os.fsync(self.dir_fd)  # make the rename itself durable
        except OSError:
            pass


# --- sending a file, hashed as it goes, with its trailer ---------------------------------------------------


def settled_stat(fd: int) -> os.stat_result:
    """fstat of a file about to be sent, at a moment when no later write can leave its mtime as it is (see
    the module docstring); waits a clock tick at a time, and raises ProtocolError("source-changed") if the
    file is still being written after SETTLE_FOR s."""
    give_up = time.monotonic() + SETTLE_FOR
    while True:
        tick = time.clock_gettime_ns(COARSE_CLOCK)  # read before the fstat: later writes are stamped >= tick
        st = os.fstat(fd)
        if st.st_mtime_ns < tick or st.st_mtime_ns > time.time_ns():  # before the tick, or set ahead by hand
            return st
        if time.monotonic() >= give_up:
            raise ProtocolError("source-changed", f"the file kept changing for {SETTLE_FOR:g} s (written to?)")
        time.sleep(time.clock_getres(COARSE_CLOCK))


def _vouch(fd: int, before: os.stat_result, hashed: int) -> None:
    """Withdrawn(source-changed) unless the file is as it was when the sending began, and was hashed whole."""
    after = os.fstat(fd)
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) or hashed != before.st_size:
        raise Withdrawn("source-changed", "the file changed while it was sent (its size or mtime moved)")


def send_body(
    sock: socket.socket, f, st: os.stat_result, head: bytes = b"", sha256: str | None = None
) -> str:
    """Send head, then the st.st_size bytes of the open file f, then the trailer; return the trailer's sha256.

    st is settled_stat() of f, taken before the size was announced. The body goes by sendfile() while a
    thread hashes the same bytes (file_sha256); with `sha256` given nothing is hashed and the trailer carries
    it. Raises Withdrawn (source-changed, disk-error) when the whole body went but the sender cannot vouch
    for it: the caller sends that ERR frame where the trailer goes. Raises ProtocolError("source-changed")
    if the file shrank before the body was complete, and OSError/TimeoutError if the connection failed:
    then nothing can follow, the caller closes the connection.
    """
    fd, size = f.fileno(), st.st_size
    if size <= SMALL_BODY:  # one buffer: header, body, trailer
        try:
            body = os.pread(fd, size, 0)
        except OSError as exc:
            raise ProtocolError("disk-error", f"cannot read the file: {exc.strerror}") from None
        if len(body) < size:
            raise ProtocolError("source-changed", f"the file shrank from {size} to {len(body)} bytes")
        digest = sha256 or hashlib.sha256(body).hexdigest()
        try:
            _vouch(fd, st, size)
        except Withdrawn:
            sock.sendall(head + body)
            raise
        sock.sendall(head + body + encode_frame({"sha256": digest}))
        return digest

    stop, hashed = threading.Event(), {}

    def hash_file():
        try:
            hashed["sha256"], hashed["bytes"] = file_sha256(fd, size, stop)
        except OSError as exc:
            hashed["error"] = exc.strerror or str(exc)

    hashing = threading.Thread(target=hash_file, name=HASH_THREAD, daemon=True) if sha256 is None else None
    if hashing is not None:
        hashing.start()
    try:
        sock.sendall(head)
        sent = sock.sendfile(f, 0, size)
        if sent < size:
            raise ProtocolError("source-changed", f"the file shrank from {size} to {sent} bytes in the send")
    except BaseException:
        stop.set()  # the hashing thread stops after its current chunk
        raise
    finally:
        if hashing is not None:
            hashing.join()
    if hashing is None:
        digest, done = sha256, size
    elif "error" in hashed:
        raise Withdrawn("disk-error", f"cannot read the file: {hashed['error']}")
    else:
        digest, done = hashed["sha256"], hashed["bytes"]
    _vouch(fd, st, done)
    sock.sendall(encode_frame({"sha256": digest}))
    return digest


# --- server -----------------------------------------------------------------------------------------------


def _mb_per_s(size: int, seconds: float) -> float:
    return size / 1e6 / seconds if seconds > 0 else 0.0


class FileServer:
    """Thread-per-connection file server over `root`. `run()` until SIGTERM/SIGINT; `start_in_thread()`."""

    def __init__(
        self,
        root: str | os.PathLike,
        host: str = "127.0.0.1",
        port: int = 0,
        max_size: int = 4 * 1024**3,
        idle_timeout: float = 60.0,
        max_connections: int = MAX_CONNECTIONS,
        min_rate: float = MIN_RATE,
    ):
        self.root = os.path.realpath(root)
        os.makedirs(self.root, exist_ok=True)
        self.max_size, self.idle_timeout = max_size, idle_timeout
        self.max_connections, self.min_rate = max(1, max_connections), min_rate
        self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:  # held while this server lives: the stale files removed next could be another server's uploads
            fcntl.flock(self._root_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._root_fd)
            raise LabnodesError(
                f"another file server serves {self.root}: two must not share a root (each removes the other's "
                "unfinished uploads when it starts); give this one another --root"
            ) from None
        self._remove_stale_temp_files()
        self._sock = socket.create_server((host, port), backlog=128)
        self._sock.settimeout(0.5)  # the accept loop checks for shutdown and deadlines at least this often
        self.address = self._sock.getsockname()[:2]
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._send_deadlines: dict[socket.socket, float] = {}  # GET bodies being sent: cut off after this
        self._cut: set[socket.socket] = set()  # connections cut off by their deadline
        self._lingering: list[tuple[socket.socket, float]] = []  # refused as busy: drained, then closed
        self._buffer_budget = threading.Semaphore(SHARED_BUFFERS)
        self._thread: threading.Thread | None = None
        self._served = False

    def connections(self) -> int:
        """Connections being served now (not counting refused ones)."""
        with self._lock:
            return len(self._conns)

    def _deadline(self, size: int) -> float:
        """Seconds a transfer of `size` bytes may take: a grace of idle_timeout, then at least min_rate."""
        return self.idle_timeout + (size / self.min_rate if self.min_rate > 0 else float("inf"))

    def _tend(self) -> None:
        """From the accept loop: cut off GET bodies past their deadline; close drained busy refusals."""
        now = time.monotonic()
        with self._lock:
            late = [conn for conn, at in self._send_deadlines.items() if now >= at]
            for conn in late:
                del self._send_deadlines[conn]
                self._cut.add(conn)
        for conn in late:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # wakes the handler blocked in sendfile
            except OSError:
                pass
        keep = []
        for conn, close_at in self._lingering:
            try:
                while conn.recv(65536):
                    pass
                conn.close()  # the client closed its side: nothing can be reset any more
                continue
            except BlockingIOError:
                pass
            except OSError:
                conn.close()
                continue
            if now >= close_at:
                conn.close()
            else:
                keep.append((conn, close_at))
        self._lingering = keep

    def _refuse_busy(self, conn: socket.socket, peer) -> None:
        """Over max_connections: a "busy" ERR frame, no thread; the socket lingers a moment, then closes."""
        log.warning("%s:%d refused: busy (%d connections)", *peer[:2], self.max_connections)
        if len(self._lingering) >= self.max_connections:
            conn.close()  # a flood: no frame for these, nothing may grow without bound
            return
        frame = ProtocolError(
            "busy", f"server busy: {self.max_connections} connections open; try again later"
        ).frame()
        try:
            conn.setblocking(False)
            conn.send(frame)  # a few bytes into a fresh, empty send buffer
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            conn.close()
            return
        self._lingering.append((conn, time.monotonic() + LINGER))

    def _remove_stale_temp_files(self) -> None:
        for entry in os.scandir(self._root_fd):
            if entry.name.startswith(SERVER_TEMP) and entry.name.endswith(TEMP_SUFFIX):
                log.info("removing stale temporary file %s", entry.name)
                os.unlink(entry.name, dir_fd=self._root_fd)

    def serve_forever(self) -> None:
        self._served = True  # from here, serve_forever's end closes the socket and the root
        log.info("file server listening on %s:%d, root %s", *self.address, self.root)
        try:
            while not self._stopping.is_set():
                self._tend()
                try:
                    conn, peer = self._sock.accept()
                except TimeoutError:
                    continue
                except OSError as exc:
                    if self._stopping.is_set():
                        break
                    log.warning("accept failed: %s", exc)
                    time.sleep(0.1)  # e.g. out of file descriptors: do not spin
                    continue
                with self._lock:
                    busy = len(self._conns) >= self.max_connections
                if busy:
                    self._refuse_busy(conn, peer)
                    continue
                thread = threading.Thread(target=self._serve_one, args=(conn, peer), daemon=True)
                with self._lock:
                    self._conns[conn] = thread
                thread.start()
        finally:
            self._close_all()

    def _close_all(self, timeout: float = 10.0) -> None:
        self._sock.close()
        for conn, _ in self._lingering:
            conn.close()
        self._lingering = []
        with self._lock:
            conns = list(self._conns.items())
        for conn, _ in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # wakes the handler; it removes its temporary file
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for _, thread in conns:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._remove_stale_temp_files()  # only if a handler did not finish in time
        os.close(self._root_fd)
        log.info("file server stopped")

    def stop(self) -> None:
        """Stop accepting and close everything; safe from any thread and from a signal handler."""
        self._stopping.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes accept() at once (Linux)
        except OSError:
            pass

    def run(self) -> int:
        """Serve in this (main) thread until SIGTERM or SIGINT; return 0 after a clean shutdown."""

        def on_signal(signum, frame):
            log.info("file server got %s: shutting down", signal.Signals(signum).name)
            self.stop()

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, on_signal)
        self.serve_forever()
        return 0

    def start_in_thread(self) -> tuple[str, int]:
        self._thread = threading.Thread(target=self.serve_forever, name="fileserver", daemon=True)
        self._thread.start()
        return self.address

    def close(self, timeout: float = 15.0) -> None:
        self.stop()
        if self._thread is not None:
            self._thread.join(timeout)
        elif not self._served:  # never served: its listening socket and root (and the root's lock) end here
            self._served = True
            self._close_all()

    def _serve_one(self, conn: socket.socket, peer) -> None:
        peer = "%s:%d" % peer[:2]
        conn.settimeout(self.idle_timeout)
        info = {"op": "?", "name": "", "size": 0, "sha256": ""}
        # the whole header must arrive within idle_timeout, however it trickles in
        info["deadline"] = Deadline(
            self.idle_timeout, self.idle_timeout, f"request header not complete within {self.idle_timeout:g} s"
        )
        started = time.monotonic()
        result = "ok"
        refusal = None
        try:
            header = read_frame(conn, info["deadline"])
            info["op"] = op = header.get("op")
            if op == "PUT":
                self._put(conn, header, info)
            elif op == "GET":
                self._get(conn, header, info)
            else:
                raise ProtocolError("bad-request", 'op must be "PUT" or "GET"')
        except ProtocolError as exc:
            result = exc.code if not self._stopping.is_set() else "shutting-down"
            refusal = exc
        except TimeoutError:
            if info["deadline"].expired():
                refusal = ProtocolError("too-slow", info["deadline"].why)
            else:
                refusal = ProtocolError("idle-timeout", f"no progress for {self.idle_timeout:g} s")
            result = refusal.code
        except OSError as exc:
            if conn in self._cut:
                result = "too-slow (reader too slow; cut off)"
            elif self._stopping.is_set():
                result = "shutting-down"
            else:
                result = f"connection-lost ({exc.strerror or exc})"
        except Exception:
            result = "internal-error"
            log.exception("%s: unexpected error", peer)
            refusal = ProtocolError("internal-error", "the server failed; see its log")
        finally:
            if info.get("sending"):
                refusal = None  # in the middle of a body: no frame can follow (the peer sees it cut short)
            if refusal is not None:
                self._refuse(conn, refusal)
            if conn in self._cut or (info.get("sending") and result != "ok"):
                # abort: drop what still waits in the send buffer (megabytes, delivered for ever to a slow
                # reader after a plain close); there is no ERR frame in the middle of a body anyway
                try:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            conn.close()
            with self._lock:
                self._conns.pop(conn, None)
                self._send_deadlines.pop(conn, None)
                self._cut.discard(conn)
            seconds = time.monotonic() - started
            rate = f"{_mb_per_s(info['size'], seconds):.1f}" if result == "ok" else "-"
            log.info(
                "%s %.10s %.100r size=%.30s sha256=%s %s MB/s %s",
                peer,
                info["op"],
                info["name"],
                info["size"] if isinstance(info["size"], int) and info["size"] < 10**30 else "(huge)",
                info["sha256"][:12] or "-",
                rate,
                result,
            )

    def _refuse(self, conn: socket.socket, refusal: ProtocolError) -> None:
        """Send the ERR frame, end our side, and drain what the client still sends for a moment (at most
        LINGER s or 1 MiB): closing with unread input makes the kernel reset the connection, and the reset
        can destroy the ERR frame before the client reads it."""
        try:
            conn.settimeout(LINGER)
            conn.sendall(refusal.frame())
            conn.shutdown(socket.SHUT_WR)
            until, drained = time.monotonic() + LINGER, 0
            while drained < 1 << 20 and time.monotonic() < until and (chunk := conn.recv(65536)):
                drained += len(chunk)
        except OSError:
            pass

    def _put(self, conn: socket.socket, header: dict, info: dict) -> None:
        info.update(name=header.get("name"), size=header.get("size"))  # for the log line, even if refused
        name, size = check_put(header, self.max_size)
        info.update(name=name, size=size)
        try:
            existing = os.stat(name, dir_fd=self._root_fd, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        except OSError as exc:
            raise ProtocolError("disk-error", f"cannot look at {name}: {exc.strerror}") from None
        if existing is not None and stat.S_ISDIR(existing.st_mode):
            raise ProtocolError("not-a-file", f"{name} is a directory")  # before "ready": no body is taken
        with _Receiver(self._root_fd, SERVER_TEMP, self._buffer_budget) as receiver:
            conn.sendall(encode_frame({"status": "ready"}))
            seconds = self._deadline(size)
            info["deadline"] = deadline = Deadline(
                seconds,
                self.idle_timeout,
                f"upload slower than {self.min_rate:g} bytes/s: {size} bytes not received within {seconds:.0f} s",
            )
            info["sha256"] = digest = receiver.receive(conn, size, deadline)
            conn.settimeout(self.idle_timeout)
            receiver.commit(name)
        conn.sendall(encode_frame({"status": "stored", "name": name, "size": size, "sha256": digest}))

    def _get(self, conn: socket.socket, header: dict, info: dict) -> None:
        info["name"] = header.get("name")
        name = check_name(info["name"])
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: never hang on a FIFO
        try:
            fd = os.open(name, flags, dir_fd=self._root_fd)
        except FileNotFoundError:
            raise ProtocolError("not-found", f"no file named {name}") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ProtocolError("not-a-file", f"{name} is a symbolic link") from None
            raise ProtocolError("disk-error", f"cannot open {name}: {exc.strerror}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise ProtocolError("not-a-file", f"{name} is not a regular file")
        with open(fd, "rb") as f:
            st = settled_stat(fd)
            info["size"] = size = st.st_size
            head = encode_frame({"status": "sending", "name": name, "size": size})
            seconds = self._deadline(size)
            info["deadline"] = Deadline(seconds, self.idle_timeout, f"download slower than {self.min_rate:g} bytes/s")
            info["sending"] = True
            with self._lock:  # the accept loop cuts the connection off if the client reads too slowly
                self._send_deadlines[conn] = time.monotonic() + seconds
            try:
                info["sha256"] = send_body(conn, f, st, head)
            except Withdrawn:
                info["sending"] = False  # the body went whole: the ERR frame goes in the trailer's place
                raise


# --- client -----------------------------------------------------------------------------------------------


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except TimeoutError:
        raise TransferError("timeout", f"file server {host}:{port}: no answer within {timeout:g} s",
                            f"{host}:{port}") from None
    except OSError as exc:
        raise TransferError("connect", f"file server {host}:{port}: cannot connect: {exc.strerror or exc}",
                            f"{host}:{port}") from None


def _reply(sock: socket.socket, where: str, what: str) -> dict:
    """Read one reply frame; raise TransferError for an ERR frame or a broken/garbled reply."""
    try:
        reply = read_frame(sock)
    except ProtocolError as exc:
        raise TransferError(exc.code, f"{where}: bad reply to {what}: {exc.message}") from None
    except TimeoutError:
        raise TransferError("idle-timeout", f"{where}: no reply to {what} in time") from None
    except OSError as exc:
        raise TransferError("connection-lost", f"{where}: connection lost: {exc.strerror or exc}") from None
    if "error" in reply:
        raise TransferError(
            str(reply["error"]), f"{where} refused {what}: {reply['error']}: {reply.get('message')}"
        )
    return reply


def send(
    host: str, port: int, path, name: str | None = None, timeout: float = 60.0, sha256: str | None = None
) -> dict:
    """PUT the file at path under name (default: its base name). Returns what happened as a dict.

    The client hashes the file while it sends it and puts the sha256 in the trailer. Given `sha256` (what the
    caller expects the file's sha256 to be), it does not hash: the trailer carries that value, and the server
    refuses the bytes (checksum-mismatch) unless they are the file the caller meant.
    """
    where = f"file server {host}:{port}"
    name = name if name is not None else os.path.basename(os.fspath(path))
    try:
        check_name(name)
    except ProtocolError as exc:
        raise TransferError(exc.code, f"bad name {name!r}: {exc.message}") from None
    try:
        expected = _check_sha256(sha256) if sha256 is not None else None
    except ProtocolError as exc:
        raise TransferError(exc.code, f"expected {exc.message}") from None
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise TransferError("local", f"cannot read {path}: {exc.strerror}") from None
    with f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise TransferError("local", f"{path} is not a regular file")
        try:
            st = settled_stat(f.fileno())
        except ProtocolError as exc:
            raise TransferError(exc.code, f"{path}: {exc.message}") from None
        size = st.st_size
        started = time.monotonic()
        with _connect(host, port, timeout) as sock:
            what = f"PUT {name}"
            try:
                sock.sendall(encode_frame({"op": "PUT", "name": name, "size": size}))
            except OSError as exc:
                raise TransferError("connection-lost", f"{where}: connection lost: {exc.strerror}") from None
            _reply(sock, where, what)  # "ready", or the refusal
            try:
                digest = send_body(sock, f, st, sha256=expected)
            except Withdrawn as exc:
                try:  # the ERR frame in the trailer's place; the server discards the body and answers in kind
                    sock.sendall(exc.frame())
                    _reply(sock, where, what)
                except (OSError, TransferError):
                    pass
                raise TransferError(exc.code, f"{path}: {exc.message}; nothing was stored") from None
            except ProtocolError as exc:  # the file shrank (or could not be read) before the body was whole
                raise TransferError(exc.code, f"{path}: {exc.message}") from None
            except TimeoutError:
                raise TransferError("idle-timeout", f"{where}: upload stalled for {timeout:g} s") from None
            except OSError as exc:
                # the server may have said why before closing
                _reply(sock, where, what)
                raise TransferError("connection-lost", f"{where}: connection lost: {exc.strerror}") from None
            _reply(sock, where, what)  # "stored"
        seconds = time.monotonic() - started
    return {
        "op": "PUT",
        "name": name,
        "size": size,
        "sha256": digest,
        "server": f"{host}:{port}",
        "seconds": round(seconds, 6),
        "mb_per_s": round(_mb_per_s(size, seconds), 1),
    }


def get(host: str, port: int, name: str, out_dir, timeout: float = 60.0, max_size: int | None = None) -> dict:
    """GET name from the server into out_dir/name (verified, then renamed into place). Returns a dict.

    A reply announcing more than max_size bytes is refused (too-large) before any byte is written, so a server
    cannot fill the client's disk.
    """
    where = f"file server {host}:{port}"
    try:
        check_name(name)
    except ProtocolError as exc:
        raise TransferError(exc.code, f"bad name {name!r}: {exc.message}") from None
    try:
        dir_fd = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise TransferError("local", f"cannot use output directory {out_dir}: {exc.strerror}") from None
    started = time.monotonic()
    try:
        with _connect(host, port, timeout) as sock:
            what = f"GET {name}"
            try:
                sock.sendall(encode_frame({"op": "GET", "name": name}))
            except OSError as exc:
                raise TransferError("connection-lost", f"{where}: connection lost: {exc.strerror}") from None
            header = _reply(sock, where, what)
            try:
                if header.get("name") != name:
                    raise ProtocolError("bad-request", f"reply names {header.get('name')!r}, not {name!r}")
                check_no_sha256(header)
                size = _check_size(header.get("size"), max_size)
                with _Receiver(dir_fd, CLIENT_TEMP) as receiver:
                    digest = receiver.receive(sock, size)
                    receiver.commit(name)
            except ProtocolError as exc:
                raise TransferError(exc.code, f"{where}: {what} failed: {exc.message}") from None
            except TimeoutError:
                raise TransferError("idle-timeout", f"{where}: download stalled for {timeout:g} s") from None
            except OSError as exc:
                raise TransferError("connection-lost", f"{where}: connection lost: {exc.strerror}") from None
    finally:
        os.close(dir_fd)
    seconds = time.monotonic() - started
    return {
        "op": "GET",
        "name": name,
        "size": size,
        "sha256": digest,
        "server": f"{host}:{port}",
        "path": os.path.join(os.fspath(out_dir), name),
        "seconds": round(seconds, 6),
        "mb_per_s": round(_mb_per_s(size, seconds), 1),
    }


def make_random(path, size: int) -> dict:
    """Write `size` random bytes to `path` whole or not at all (`labnodes file make`: the module docstring)."""
    path = os.fspath(path)
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                    dir=os.path.dirname(path) or ".")
    except OSError as exc:
        raise LabnodesError(f"cannot make {path}: {exc.strerror}") from None
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # as a file made by `>` (mkstemp makes it 0600)
        with open(fd, "wb", buffering=0) as f:
            for offset in range(0, size, CHUNK):
                f.write(os.urandom(min(CHUNK, size - offset)))
        os.replace(temp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        if isinstance(exc, OSError):
            raise LabnodesError(f"cannot make {path}: {exc.strerror}") from None
        raise
    return {"op": "MAKE", "path": path, "size": size}


# --- CLI --------------------------------------------------------------------------------------------------


def register(subparsers) -> None:
    parser = subparsers.add_parser("file", help="send and fetch files over TCP, sha256-verified")
    sub = parser.add_subparsers(dest="file_command", required=True, metavar="ACTION")

    def address(p, what):
        p.add_argument("--host", dest="file_host", help=f"{what} (setting file_host)")
        p.add_argument("--port", dest="file_port", type=int, help="port (setting file_port)")

    def timeout(p):
        p.add_argument("--timeout", dest="file_idle_timeout", type=float, metavar="S",
                       help="seconds to wait to connect, and for each step of the transfer (setting file_idle_timeout)")

    serve = sub.add_parser("serve", help="run the file server until SIGTERM/SIGINT")
    address(serve, "address to bind")
    serve.add_argument("--root", dest="file_root", help="directory that holds the files (setting file_root)")
    serve.set_defaults(func=_cmd_serve)

    send_ = sub.add_parser("send", help="upload a file to the server")
    address(send_, "server address")
    timeout(send_)
    send_.add_argument("path", metavar="PATH", help="local file to send")
    send_.add_argument("--name", help="name on the server (default: the file's base name)")
    send_.add_argument("--json", action="store_true", help="print JSON instead of a table")
    send_.set_defaults(func=_cmd_send)

    get_ = sub.add_parser("get", help="download a file from the server")
    address(get_, "server address")
    timeout(get_)
    get_.add_argument("name", metavar="NAME", help="file name on the server")
    get_.add_argument("--out", required=True, metavar="DIR", help="existing directory to write NAME into")
    get_.add_argument("--json", action="store_true", help="print JSON instead of a table")
    get_.set_defaults(func=_cmd_get)

    make = sub.add_parser("make", help="make a file of random bytes to send")
    make.add_argument("path", metavar="PATH", help="file to write (replaced whole once complete)")
    make.add_argument("--size", required=True, type=int, metavar="MB", help="size in MiB")
    make.add_argument("--json", action="store_true", help="print JSON instead of a table")
    make.set_defaults(func=_cmd_make)


def _cmd_serve(args, settings) -> int:
    try:
        server = FileServer(
            settings.file_root,
            settings.file_host,
            settings.file_port,
            settings.file_max_size,
            settings.file_idle_timeout,
            settings.file_max_connections,
            settings.file_min_rate,
        )
    except OSError as exc:
        raise LabnodesError(
            f"cannot serve {settings.file_root} on {settings.file_host}:{settings.file_port}: "
            f"{exc.strerror or exc}"
        ) from None
    return server.run()


def _print(result: dict, as_json: bool) -> None:
    from labnodes import output

    if as_json:
        output.as_json(result)
    else:
        row = [
            result["op"],
            result["name"],
            result["size"],
            result["sha256"],
            result["mb_per_s"],
            result["server"],
        ]
        output.table([row], ["op", "name", "bytes", "sha256", "MB/s", "server"])


def _cmd_send(args, settings) -> int:
    _print(
        send(settings.file_host, settings.file_port, args.path, args.name, settings.file_idle_timeout),
        args.json,
    )
    return 0


def _cmd_make(args, settings) -> int:
    largest = settings.file_max_size >> 20
    if not 1 <= args.size <= largest:
        raise LabnodesError(f"--size must be 1..{largest} MB (file_max_size), got {args.size}")
    result = make_random(args.path, args.size << 20)
    if args.json:
        from labnodes import output

        output.as_json(result)
    else:
        print(f"{result['path']}: {result['size']} random bytes")
    return 0


def _cmd_get(args, settings) -> int:
    _print(
        get(
            settings.file_host,
            settings.file_port,
            args.name,
            args.out,
            settings.file_idle_timeout,
            settings.file_max_size,
        ),
        args.json,
    )
    return 0
