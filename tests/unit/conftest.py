"""Fixtures of the file-transfer unit tests: a file server's root, a real server on loopback, a download folder."""

import pytest
from filexfer_support import HANG_GUARD, MAX_SIZE, serve


@pytest.fixture
def root(tmp_path):
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def server(root):
    """The address of a real FileServer serving `root` (limit MAX_SIZE), closed after the test."""
    srv, address = serve(root, max_size=MAX_SIZE, idle_timeout=HANG_GUARD)
    yield address
    srv.close()


@pytest.fixture
def out(tmp_path):
    path = tmp_path / "out"
    path.mkdir()
    return path
