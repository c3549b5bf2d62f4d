"""Celery GCD tasks/s with two workers against a real redis-server (higher is better).

Set-up: a redis-server of its own (127.0.0.1, free port, generated password, no persistence) and two
`labnodes celery worker` processes (bench1@HOST, bench2@HOST; concurrency 2 each, the celery_concurrency
default, as deployed; logging at INFO as deployed, to a file). The client runs in this process through `labnodes.celery_cli.batch`, which also
checks every result against math.gcd: a run with a wrong or missing result raises instead of reporting a speed.

Rows (baseline measured in the same run):
- one-by-one tasks/s (send, wait, next) vs raw Redis PING round trips/s from the same client: the cost of a
  Celery round trip in units of the cheapest possible Redis round trip;
- group tasks/s vs one-by-one tasks/s (target ratio >= 1: a group must not be slower than a loop);
- chunks(100) tasks/s vs one-by-one tasks/s (target ratio >= 4: one message per 100 tasks).
Targets are checked only in the full run; quick=True (100 tasks) is a smoke run and leaves "ok" as None.
Measured on the 2-core build box earlier: one-by-one 290/s, group 475/s, chunks(100) 3444/s. Since a batch
collects its results every 10 ms (celery_cli.RESULT_POLL), four runs on 2026-11-30: one-by-one 546-577/s, group
668-757/s, chunks(100) 8,755-21,195/s (2 of 6 runs just before them: chunks 1,240-2,820/s, with Celery's 0.5 s as
with 10 ms; not found why). All three figures are CPU-bound on 2 cores: on a box busy with other work they drop,
and group/one is the most sensitive ratio.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from labnodes import celery_cli, config
from labnodes.celery_app import make_app

START_TIMEOUT = 60.0  # s: hang guard for redis-server and the workers to come up


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_redis(directory: Path, password: str) -> tuple[subprocess.Popen, int]:
    import redis

    port = _free_port()
    process = subprocess.Popen(
        [shutil.which("redis-server") or "/usr/bin/redis-server", "--bind", "127.0.0.1", "--port", str(port),
         "--requirepass", password, "--save", "", "--appendonly", "no", "--dir", str(directory),
         "--logfile", str(directory / "redis.log")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port, password=password, socket_connect_timeout=1)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            try:
                client.ping()
                return process, port
            except redis.exceptions.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
    finally:
        client.close()


def _ping_rate(settings: config.Settings, count: int) -> float:
    import redis

    client = redis.Redis(host=settings.redis_host, port=settings.redis_port, password=settings.redis_password,
                         username=settings.redis_user or None)
    try:
        client.ping()
        start = time.perf_counter()
        for _ in range(count):
            client.ping()
        return count / (time.perf_counter() - start)
    finally:
        client.close()


def _stop(process: subprocess.Popen, group: bool = False) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    if group:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if process.poll() is None:
        process.kill()
    process.wait()


def _row(bench: str, value: float, unit: str, baseline_name: str, baseline: float, target: float | None,
         quick: bool) -> dict:
    ratio = value / baseline
    ok = None if quick or target is None else ratio >= target
    return {"bench": bench, "value": value, "unit": unit, "baseline_name": baseline_name, "baseline": baseline,
            "ratio": ratio, "target": f"ratio >= {target:g}" if target is not None else "", "ok": ok}


def run(quick: bool = False) -> list[dict]:
    count = 100 if quick else 2000
    chunk_size = 100
    password = secrets.token_urlsafe(16)
    workers: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="bench-celery-") as tmp:
        directory = Path(tmp)
        redis_process, port = _start_redis(directory, password)
        (directory / "labnodes.toml").write_text("")
        env = {k: v for k, v in os.environ.items() if not k.startswith("LABNODES_")}
        env.update({"LABNODES_CONFIG": str(directory / "labnodes.toml"), "LABNODES_REDIS_PORT": str(port),
                    "LABNODES_REDIS_PASSWORD": password, "LABNODES_LOG_LEVEL": "INFO"})
        settings = config.load(env=env)
        app = make_app(settings, client=True)
        try:
            names = [f"bench{i}" for i in (1, 2)]
            for name in names:
                with open(directory / f"{name}.log", "wb") as log:
                    workers.append(subprocess.Popen(
                        [sys.executable, "-m", "labnodes", "celery", "worker", "--name", name,
                         "--concurrency", "2"],
                        env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                        start_new_session=True,
                    ))
            nodes = {f"{name}@{socket.gethostname()}" for name in names}
            deadline = time.monotonic() + START_TIMEOUT
            while {node for reply in app.control.ping(timeout=0.5) for node in reply} < nodes:
                if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
                    raise RuntimeError(f"celery workers did not come up; logs in {directory}")

            celery_cli.batch(settings, count=20, modes=["group"], chunk_size=10, seed=99)  # warm-up
            ping = _ping_rate(settings, 2000 if quick else 20000)
            report = celery_cli.batch(settings, count=count, modes=list(celery_cli.MODES), chunk_size=chunk_size)
            errors = [e for mode in report["modes"].values() for e in mode["errors"]]
            if errors:
                raise RuntimeError(f"celery batch had errors: {errors[:5]}")
            rate = {mode: r["tasks_per_s"] for mode, r in report["modes"].items()}
        finally:
            app.close()
            for w in workers:
                _stop(w, group=True)
            _stop(redis_process)

    return [
        _row("celery one-by-one tasks/s vs Redis PING/s (higher is better)", rate["one"], "tasks/s",
             "redis PING round trips/s", ping, None, quick),
        _row("celery group tasks/s vs one-by-one (higher is better)", rate["group"], "tasks/s",
             "celery one-by-one tasks/s", rate["one"], 1.0, quick),
        _row(f"celery chunks({chunk_size}) tasks/s vs one-by-one (higher is better)", rate["chunks"], "tasks/s",
             "celery one-by-one tasks/s", rate["one"], 4.0, quick),
    ]


if __name__ == "__main__":
    from labnodes import output

    from bench import report

    output.table((report.cells(r) for r in run(quick="--quick" in sys.argv)), report.HEADER)
