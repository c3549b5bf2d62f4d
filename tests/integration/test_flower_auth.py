"""Flower as the broker host runs it (`python -m labnodes.flower_serve`), against a real redis-server: every page,
the Prometheus /metrics and /healthcheck included, answers 401 without the password and 200 with it."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import flower as _flower  # noqa: F401 -- make setup installs labnodes' flower extra: without it this fails, never skips
import pytest

from tests.integration.conftest import REPO, _free_port

USER, PASSWORD = "admin", "s3cret-flower-pass"


@pytest.fixture(scope="module")
def flower(redis_server, tmp_path_factory):
    port = _free_port("127.0.0.1")
    log = tmp_path_factory.mktemp("flower") / "flower.log"
    conf = log.parent / "empty.toml"
    conf.touch()
    env = dict(os.environ, **redis_server.env(), LABNODES_CONFIG=str(conf),
               FLOWER_BASIC_AUTH=f"{USER}:{PASSWORD}")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "labnodes.flower_serve", "--address=127.0.0.1",
                                 f"--port={port}"], cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while status(url + "/") is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"flower did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def status(url: str, credentials: str | None = None) -> int | None:
    request = urllib.request.Request(url)
    if credentials:
        request.add_header("Authorization", "Basic " + base64.b64encode(credentials.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


@pytest.mark.parametrize("page", ["/", "/workers", "/api/workers", "/metrics", "/healthcheck"])
def test_every_page_needs_the_password(flower, page):
    assert status(flower + page) == 401
    assert status(flower + page, f"{USER}:wrong") == 401


@pytest.mark.parametrize("page", ["/metrics", "/healthcheck"])
def test_monitor_pages_answer_with_the_password(flower, page):
    assert status(flower + page, f"{USER}:{PASSWORD}") == 200
