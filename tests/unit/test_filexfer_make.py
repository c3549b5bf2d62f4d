"""`labnodes file make`: the file `fab send-file` sends, written whole or not at all.

What was tried before, and what happened then: `fab send-file` made its file with `head -c N /dev/urandom >
PATH.tmp && mv PATH.tmp PATH` over SSH; a Ctrl-C (or a killed fab) left `head` writing on the client host, into
the `.tmp` the next run made too, and a half-written `.tmp` stayed behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from labnodes import LabnodesError, filexfer

HANG_GUARD = 30.0  # seconds; only so that a broken tether fails a test instead of hanging it


def test_a_made_file_has_the_size_asked_and_replaces_the_old_one_whole(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    assert filexfer.make_random(path, 5 * filexfer.CHUNK + 3) == {
        "op": "MAKE",
        "path": str(path),
        "size": 5 * filexfer.CHUNK + 3,
    }
    assert path.stat().st_size == 5 * filexfer.CHUNK + 3 and os.listdir(tmp_path) == ["f.bin"]
    assert path.read_bytes()[:4096] != bytes(4096)  # random, not a hole


def test_an_interrupted_make_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    calls = []

    def urandom(n):
        calls.append(n)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return bytes(n)

    monkeypatch.setattr(filexfer.os, "urandom", urandom)
    with pytest.raises(KeyboardInterrupt):
        filexfer.make_random(path, 3 * filexfer.CHUNK)
    assert os.listdir(tmp_path) == ["f.bin"] and path.read_bytes() == b"old"


def test_a_make_that_cannot_write_is_one_line(tmp_path):
    with pytest.raises(LabnodesError, match=r"^cannot make .*/missing/f.bin: No such file or directory$"):
        filexfer.make_random(tmp_path / "missing" / "f.bin", 1)


def test_a_made_file_is_readable_as_a_file_made_by_a_shell_redirection(tmp_path):
    old = os.umask(0o022)
    try:
        filexfer.make_random(tmp_path / "f.bin", 1)
    finally:
        os.umask(old)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o644


def labnodes(*args, conf, **kwargs):
    env = dict(os.environ, LABNODES_CONFIG=str(conf))
    return subprocess.Popen(
        [sys.executable, "-m", "labnodes", *args],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


@pytest.mark.parametrize("size", ["0", "3"])
def test_a_size_outside_1_to_file_max_size_is_refused(tmp_path, size):
    conf = tmp_path / "labnodes.toml"
    conf.write_text("file_max_size = 2097152\n")
    proc = labnodes("file", "make", str(tmp_path / "f.bin"), "--size", size, conf=conf)
    out, err = proc.communicate(timeout=HANG_GUARD)
    assert (proc.returncode, out, err) == (
        1,
        "",
        f"labnodes: error: --size must be 1..2 MB (file_max_size), got {size}\n",
    )
    assert not (tmp_path / "f.bin").exists()


def test_a_tethered_make_stops_when_its_session_ends_and_leaves_nothing(tmp_path):
    conf = tmp_path / "labnodes.toml"
    conf.write_text("")
    out = tmp_path / "out"
    out.mkdir()
    proc = labnodes(
        "--tethered", "file", "make", str(out / "f.bin"), "--size", "4096", conf=conf, stdin=subprocess.PIPE
    )
    deadline = time.monotonic() + HANG_GUARD
    while not os.listdir(out) and time.monotonic() < deadline:  # the temporary file is being written
        time.sleep(0.01)
    assert [n.endswith(".tmp") for n in os.listdir(out)] == [True]
    proc.stdin.close()  # what the end of fab's SSH session does
    assert proc.wait(timeout=HANG_GUARD) == 130
    assert os.listdir(out) == []
