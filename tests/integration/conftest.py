"""Fixtures for loopback integration tests: a real redis-server with a password, on a free port of 127.0.0.1."""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

START_TIMEOUT = 10.0  # seconds for redis-server to answer PING (hang guard)


@dataclasses.dataclass
class RedisServer:
    host: str
    port: int
    password: str
    process: subprocess.Popen
    directory: Path

    def env(self) -> dict[str, str]:
        """LABNODES_* variables that point a labnodes program at this server."""
        return {
            "LABNODES_REDIS_HOST": self.host,
            "LABNODES_REDIS_PORT": str(self.port),
            "LABNODES_REDIS_PASSWORD": self.password,
        }

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _start_redis(directory: Path, host: str, password: str) -> RedisServer:
    import redis

    port = _free_port(host)
    process = subprocess.Popen(
        [
            shutil.which("redis-server") or "/usr/bin/redis-server",
            "--bind", host, "--port", str(port), "--requirepass", password,
            "--protected-mode", "yes", "--save", "", "--appendonly", "no",
            "--dir", str(directory), "--logfile", str(directory / "redis.log"), "--daemonize", "no",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = RedisServer(host, port, password, process, directory)
    client = redis.Redis(host=host, port=port, password=password, socket_connect_timeout=1, socket_timeout=1)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {process.returncode}:\n{server.log()}")
            try:
                if client.ping():
                    return server
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer within {START_TIMEOUT} s:\n{server.log()}")
                time.sleep(0.05)
    except BaseException:
        _stop(process)
        raise
    finally:
        client.close()


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> RedisServer:
    """A redis-server of its own: 127.0.0.1, a free port, a generated requirepass, no persistence."""
    directory = tmp_path_factory.mktemp("redis")
    # The password carries characters that must be URL-quoted in a redis:// URL.
    password = secrets.token_urlsafe(12) + "@/:%#"
    server = None
    for _attempt in range(3):  # the free port may be taken between our check and redis-server's bind
        try:
            server = _start_redis(directory, "127.0.0.1", password)
            break
        except RuntimeError:
            if _attempt == 2:
                raise
    yield server
    _stop(server.process)


REPO = Path(__file__).resolve().parents[2]


def labnodes_cmd(tmp_path: Path, *args: str) -> list[str]:
    """The real `labnodes` CLI with an empty config file, so that no host config leaks into a test."""
    conf = tmp_path / "empty.toml"
    conf.touch()
    return [sys.executable, "-m", "labnodes", "--config", str(conf), *args]


class ServerProcess:
    """`labnodes ... serve --port 0` as a subprocess; its address is read back from the "listening on" log line."""

    def __init__(self, tmp_path: Path, args: list[str], env: dict | None = None, hang_guard: float = 15.0):
        self.log = tmp_path / f"{args[0]}-server.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(labnodes_cmd(tmp_path, *args), cwd=REPO, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, **(env or {})))
        deadline = time.monotonic() + hang_guard
        while not (match := re.search(r"listening on ([\d.]+):(\d+)", self.log.read_text())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"{args[0]} server did not start:\n{self.log.read_text()}")
            time.sleep(0.05)
        self.host, self.port = match.group(1), int(match.group(2))
        self.address = (self.host, self.port)
        self.flags = ["--host", self.host, "--port", str(self.port)]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
