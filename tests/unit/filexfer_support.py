"""What the file-transfer unit tests share: a guard against hangs, the server's size limit, and small helpers.

The fixtures built on these (`root`, `out`, `server`) are in tests/unit/conftest.py.
"""

from __future__ import annotations

import hashlib
import os
import time

from labnodes.filexfer import FileServer, encode_frame

HANG_GUARD = 30.0  # seconds; only so that a broken peer fails a test instead of hanging it
MAX_SIZE = 64 << 20  # the test server's limit: above every body the tests send whole
SHA_OF_EMPTY = hashlib.sha256(b"").hexdigest()


def serve(root, **options) -> tuple[FileServer, tuple[str, int]]:
    """A real FileServer on loopback (port 0, its own thread): the server and its address."""
    srv = FileServer(root, "127.0.0.1", 0, **options)
    return srv, srv.start_in_thread()


def leftovers(directory) -> list[str]:
    """Every name in a directory, sorted: what a refused or failed transfer must not have left."""
    return sorted(os.listdir(directory))


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.01)


def trailer(data: bytes) -> bytes:
    """The right trailer frame for a body of `data`."""
    return encode_frame({"sha256": hashlib.sha256(data).hexdigest()})
