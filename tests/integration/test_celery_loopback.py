"""Celery on loopback with the real parts: redis-server with a password, two `labnodes celery worker` processes
(w1@HOST and w2@HOST: on one box both run on the same host, so they get distinct names with --name), and the
`labnodes celery submit|batch` clients as subprocesses."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from celery import group

from labnodes import celery_cli, config
from labnodes.celery_app import make_app

LABNODES = [sys.executable, "-m", "labnodes"]
VISIBILITY_TIMEOUT = 3  # s: a task held by a killed worker comes back this soon (the lab default is 300)
READY_TIMEOUT = 60.0  # s: hang guard for a worker to answer a ping
RUN_TIMEOUT = 60.0  # s: hang guard for one client command
HOST = socket.gethostname()


class Worker:
    """One `labnodes celery worker --name NAME` process, in its own session so a kill takes its pool too."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path):
        self.name, self.env, self.log_path = name, env, log_path
        self.node = f"{name}@{HOST}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*LABNODES, "celery", "worker", "--name", self.name, "--concurrency", "1"],
                env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, app) -> None:
        """Poll with Celery's ping until this node answers (bounded), failing early if the process died."""
        deadline = time.monotonic() + READY_TIMEOUT
        while not app.control.ping(destination=[self.node], timeout=0.5):
            if not self.running():
                pytest.fail(f"worker {self.node} exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"worker {self.node} did not answer a ping within {READY_TIMEOUT} s:\n{self.log()}")

    def ensure_running(self, app) -> None:
        if not self.running():
            self.start()
            self.wait_ready(app)

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool), like a host losing power."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> int | None:
        """SIGTERM (warm shutdown); SIGKILL the whole group if it does not exit in time."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # leftover pool processes, if any
        except ProcessLookupError:
            pass
        return self.process.wait(timeout=10)

    def pool_pids(self) -> list[int]:
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(p) for p in path.read_text().split()]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture(scope="module")
def lab_env(redis_server, tmp_path_factory) -> dict[str, str]:
    """Environment for every labnodes process here: this Redis, no config file from the box, short timeouts."""
    empty = tmp_path_factory.mktemp("celery") / "labnodes.toml"
    empty.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABNODES_")}
    env.update(redis_server.env())
    env.update({
        "LABNODES_CONFIG": str(empty),
        "LABNODES_LOG_LEVEL": "INFO",
        "LABNODES_CELERY_TIMEOUT": "20",
        "LABNODES_CELERY_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
    })
    return env


@pytest.fixture(scope="module")
def app(lab_env):
    """A client app for this Redis (readiness pings, and tasks sent past the client-side checks)."""
    app = make_app(config.load(env=lab_env), client=True)
    yield app
    app.close()


@pytest.fixture(scope="module")
def worker_pool(lab_env, app, tmp_path_factory):
    logs = tmp_path_factory.mktemp("celery-logs")
    pool = [Worker(name, lab_env, logs / f"{name}.log") for name in ("w1", "w2")]
    try:
        for w in pool:
            w.start()
        for w in pool:
            w.wait_ready(app)
        yield pool
    finally:
        for w in pool:
            w.stop()


@pytest.fixture
def workers(worker_pool, app) -> list[Worker]:
    """Both workers, running: one killed by an earlier test is started again."""
    for w in worker_pool:
        w.ensure_running(app)
    return worker_pool


def labnodes(*args: str, env: dict[str, str], **changes: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*LABNODES, *args], env={**env, **changes}, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=RUN_TIMEOUT,
    )


@pytest.mark.parametrize(("op", "expected"), [("gcd", 6), ("lcm", 144)])
def test_submit_prints_result_and_the_worker_that_ran_it(workers, lab_env, op, expected):
    run = labnodes("celery", "submit", op, "48", "18", "--json", env=lab_env)
    assert run.returncode == 0, run.stderr
    value = json.loads(run.stdout)
    assert value["result"] == expected
    assert value["args"] == [48, 18]
    assert value["host"] == HOST
    assert value["worker"] in {w.node for w in workers}
    ran_it = next(w for w in workers if w.node == value["worker"])
    assert f"{op}(48, 18) = {expected}" in ran_it.log()


def test_submit_prints_a_table_by_default(workers, lab_env):
    run = labnodes("celery", "submit", "gcd", "48", "18", env=lab_env)
    assert run.returncode == 0, run.stderr
    header, _rule, row = run.stdout.splitlines()
    assert header.split() == ["task", "args", "result", "host", "worker"]
    assert row.split()[:4] == ["gcd", "48,", "18", "6"]


def test_batch_checks_every_result_and_uses_both_workers(workers, lab_env):
    run = labnodes("celery", "batch", "--count", "60", "--chunk-size", "6", "--json", env=lab_env)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout)
    assert set(report["modes"]) == {"one", "group", "chunks"}
    for mode in report["modes"].values():
        assert (mode["tasks"], mode["ok"], mode["error_count"], mode["errors"]) == (60, 60, 0, [])
        assert mode["hosts"] == {HOST: 60}
        assert sum(mode["workers"].values()) == 60
    assert set(report["modes"]["group"]["workers"]) == {w.node for w in workers}
    assert set(report["modes"]["one"]["workers"]) == {w.node for w in workers}


@pytest.mark.parametrize("mode", ["group", "chunks"])
def test_collecting_a_batch_never_naps_for_celerys_default_half_second(app, lab_env, monkeypatch, mode):
    # Celery's ResultSet.get() reads the results once and, if one is not ready, naps one polling interval
    # (default 0.5 s) before it listens for them: every group and chunks run paid it. Jobs sent to a queue no
    # worker reads are never ready, so the nap is always asked for; every nap Celery's result code asks for is
    # recorded (none is taken: each returns at once), and none may be longer than RESULT_POLL.
    from celery.backends import base
    from celery.exceptions import TimeoutError as CeleryTimeout

    naps = []
    real_sleep = time.sleep

    def sleep(seconds):
        if sys._getframe(1).f_globals.get("__name__", "").startswith("celery."):
            naps.append(seconds)
            return
        real_sleep(seconds)

    monkeypatch.setattr(base.time, "sleep", sleep)
    task, pairs = app.tasks["lab.gcd"], [(48, 18)] * 4
    batch = group(task.s(a, b) for a, b in pairs) if mode == "group" else task.chunks(pairs, 2).group()
    result = batch.apply_async(queue="labkit-test-nobody", expires=30)
    with pytest.raises(CeleryTimeout):
        celery_cli._get_outlasting_redelivery(config.load(env=lab_env), result, 0.6, f"the {mode}", print)
    assert naps and max(naps) <= celery_cli.RESULT_POLL, naps


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["gcd", "4.5", "3"], "numbers must be decimal digits 0-9"),
        (["lcm", "48", "-18"], "negative numbers are not allowed"),
        (["gcd", "1" + "0" * 30, "3"], "numbers must be less than 10**30"),
        (["gcd", "48"], "gcd takes two integers A B, got 1 argument(s)"),
    ],
)
def test_submit_bad_argument_exits_1_with_one_clear_line(lab_env, args, message):
    run = labnodes("celery", "submit", *args, env=lab_env)
    assert (run.returncode, run.stdout, run.stderr.strip()) == (1, "", f"labnodes: error: {message}")


def test_worker_fails_a_bad_task_at_once_with_a_clear_error(workers, app):
    # Past the client-side checks, straight to a worker: it must fail the task, not retry or hang.
    result = app.signature("lab.gcd", args=(4.5, 3)).apply_async()
    with pytest.raises(ValueError, match=r"^numbers must be integers, got float$"):
        result.get(timeout=20)
    assert result.state == "FAILURE"
    assert result.worker in {w.node for w in workers}


def test_wrong_redis_password_exits_1_with_one_clear_line(lab_env, redis_server):
    run = labnodes("celery", "submit", "gcd", "48", "18", env=lab_env, LABNODES_REDIS_PASSWORD="wrong")
    expected = f"Redis at redis://127.0.0.1:{redis_server.port}/0 refused the password: check redis_password"
    assert (run.returncode, run.stdout, run.stderr.strip().splitlines()) == (1, "", [f"labnodes: error: {expected}"])


def test_unreachable_redis_exits_1_with_one_clear_line(lab_env):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = labnodes("celery", "batch", "--count", "5", env=lab_env, LABNODES_REDIS_PORT=str(port))
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        f"labnodes: error: cannot reach Redis at redis://127.0.0.1:{port}/0: "
        f"Error 111 connecting to 127.0.0.1:{port}. Connection refused."
    ]


def test_no_worker_within_timeout_exits_1_with_one_clear_line(lab_env, redis_server):
    # Database 5 has no worker listening (the workers use database 0).
    run = labnodes("celery", "submit", "gcd", "48", "18", "--timeout", "1", env=lab_env, LABNODES_REDIS_DB="5")
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1].startswith(
        f"labnodes: error: no worker answered lab.gcd within 1 s: "
        f"is a worker running against redis://127.0.0.1:{redis_server.port}/5? (job "
    )
    assert "stays queued until" in run.stderr


def test_sigterm_lets_the_running_task_finish_then_the_worker_exits_0(lab_env, tmp_path):
    env = {**lab_env, "LABNODES_REDIS_DB": "6"}  # a queue of its own: only this worker can take the task
    worker = Worker("w3", env, tmp_path / "w3.log")
    client = make_app(config.load(env=env), client=True)
    try:
        worker.start()
        worker.wait_ready(client)
        result = client.signature("lab.sleep", args=(0.75,)).apply_async()
        deadline = time.monotonic() + RUN_TIMEOUT
        while "sleep(0.75) started" not in worker.log():
            assert time.monotonic() < deadline, worker.log()
            time.sleep(0.02)
        worker.process.terminate()
        assert result.get(timeout=20)["worker"] == worker.node
        assert worker.process.wait(timeout=20) == 0
    finally:
        worker.stop()
        client.close()


def _wait_for_line(workers: list[Worker], text: str) -> Worker:
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        for w in workers:
            if text in w.log():
                return w
        assert time.monotonic() < deadline, f"no worker logged {text!r}"
        time.sleep(0.02)


def test_task_of_a_killed_pool_process_is_requeued_not_failed(workers, app):
    # task_reject_on_worker_lost: the worker whose pool process died puts the task back in the queue.
    result = app.signature("lab.sleep", args=(1.25,)).apply_async()
    running = _wait_for_line(workers, "sleep(1.25) started")
    for pid in running.pool_pids():
        os.kill(pid, signal.SIGKILL)
    value = result.get(timeout=30)
    assert (value["result"], value["redelivered"]) == (1.25, True)
    assert running.running()  # only the pool process died; the worker started a new one


def test_task_of_a_killed_worker_is_redelivered_to_the_other_worker(workers, lab_env):
    # task_acks_late: the killed worker never acknowledged the task, so Redis hands it out again after the
    # visibility timeout, to the worker still alive. Without acks late the task would be lost (a timeout here).
    client = subprocess.Popen(
        [*LABNODES, "celery", "submit", "sleep", "1.5", "--json", "--timeout", "50"],
        env=lab_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        victim = _wait_for_line(workers, "sleep(1.5) started")
        survivor = next(w for w in workers if w is not victim)
        victim.kill()
        out, err = client.communicate(timeout=RUN_TIMEOUT)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 0, err
    value = json.loads(out)
    assert (value["result"], value["worker"], value["redelivered"]) == (1.5, survivor.node, True)
    assert "sleep(1.5) started" in survivor.log()


@pytest.mark.parametrize("inside_its_sweep", [False, True], ids=["killed", "killed-inside-its-sweep"])
def test_job_of_a_sigkilled_worker_outlasts_a_client_timeout_shorter_than_redelivery(lab_env, tmp_path,
                                                                                     inside_its_sweep):
    # Before: `celery submit` waited celery_timeout (30 s) and sent the job with expires=30 s, while Redis hands
    # out the job of a SIGKILLed worker only after the visibility timeout (300 s): the client gave up with "no
    # worker answered", and the survivor then skipped the job as expired (REVOKED): lost. Scaled down here:
    # client timeout 3 s, visibility timeout 8 s. Now the client says it is waiting for redelivery and until
    # when, and gets the result from the survivor.
    # Killed inside its sweep: a worker's sweep holds a lock in Redis; a worker killed inside it leaves the lock,
    # and no worker sweeps until it expires (Kombu's default: 300 s, far past what the client promised; likely why
    # the case above failed once in CI: its victim is killed about when its first sweep runs). The lock such a
    # worker leaves is set here just before the job could be handed out again, the worst moment; the client's
    # promise must still hold.
    env = {**lab_env, "LABNODES_REDIS_DB": "7", "LABNODES_CELERY_TIMEOUT": "3",
           "LABNODES_CELERY_VISIBILITY_TIMEOUT": "8"}
    pool = [Worker(name, env, tmp_path / f"{name}.log") for name in ("k1", "k2")]
    settings = config.load(env=env)
    client_app = make_app(settings, client=True)
    client = None
    try:
        for w in pool:
            w.start()
        for w in pool:
            w.wait_ready(client_app)
        started = time.monotonic()
        client = subprocess.Popen(
            [*LABNODES, "celery", "submit", "sleep", "1.5", "--json"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        victim = _wait_for_line(pool, "sleep(1.5) started")
        survivor = next(w for w in pool if w is not victim)
        victim.kill()
        if inside_its_sweep:
            expired = _leave_a_sweep_lock(settings)
        out, err = client.communicate(timeout=RUN_TIMEOUT)
        print(f"result after {time.monotonic() - started:.1f} s; client said: {err.strip()}")
        assert client.returncode == 0, err
        value = json.loads(out)
        assert (value["result"], value["worker"], value["redelivered"]) == (1.5, survivor.node, True)
        assert "waiting for redelivery" in err and "visibility timeout 8 s" in err
        if inside_its_sweep:  # the lock did hold the sweeps back: the job came back only after it expired
            received = re.search(r"^\[([\d-]+ [\d:]+),(\d+): INFO/MainProcess\] Task lab\.sleep\[.*\] received",
                                 survivor.log(), re.M)
            when = time.mktime(time.strptime(received[1], "%Y-%m-%d %H:%M:%S")) + int(received[2]) / 1000
            assert when >= expired - 0.05
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait()
        for w in pool:
            w.stop()
        client_app.close()


def _leave_a_sweep_lock(settings) -> float:
    """Leave the lock a worker killed inside its sweep would leave, with the expiry the workers give it, just before
    the one job held in the unacked index could be handed out again; returns when the lock expires (time.time())."""
    import redis
    from kombu.transport.redis import Channel

    from labnodes.celery_app import celery_config, redis_url

    options = celery_config(settings)["broker_transport_options"]
    expires = options.get("unacked_mutex_expire", Channel.unacked_mutex_expire)
    client = redis.Redis.from_url(redis_url(settings))
    try:
        ((_, taken),) = client.zrange(Channel.unacked_index_key, 0, -1, withscores=True)
        time.sleep(max(0.0, taken + options["visibility_timeout"] - 0.2 - time.time()))
        client.set(Channel.unacked_mutex_key, "left by a worker killed inside its sweep", px=int(expires * 1000))
        return time.time() + expires
    finally:
        client.close()


def test_jobs_pending_while_the_broker_restarts_all_complete(redis_server, tmp_path):
    # A Redis of its own, saving its data on shutdown (as the broker role's `save` does): stopped with SIGTERM
    # while jobs are queued and one is running, then started again on the same port. The worker reconnects
    # by itself and every job completes; one that was running may run twice (redelivered=true), none is lost.
    import shutil

    import redis

    from tests.integration.conftest import _free_port, _stop

    directory = tmp_path / "redis"
    directory.mkdir()
    port = _free_port("127.0.0.1")
    command = [shutil.which("redis-server") or "/usr/bin/redis-server", "--bind", "127.0.0.1", "--port", str(port),
               "--requirepass", redis_server.password, "--save", "3600 1", "--appendonly", "no",
               "--dir", str(directory), "--logfile", str(directory / "redis.log"), "--daemonize", "no"]

    def start_redis() -> subprocess.Popen:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=port, password=redis_server.password, socket_timeout=1)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                if client.ping():
                    client.close()
                    return process
            except redis.exceptions.ConnectionError:
                assert process.poll() is None and time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    env = {k: v for k, v in os.environ.items() if not k.startswith("LABNODES_")}
    empty = tmp_path / "labnodes.toml"
    empty.write_text("")
    env.update({"LABNODES_CONFIG": str(empty), "LABNODES_LOG_LEVEL": "INFO", "LABNODES_REDIS_HOST": "127.0.0.1",
                "LABNODES_REDIS_PORT": str(port), "LABNODES_REDIS_PASSWORD": redis_server.password,
                "LABNODES_CELERY_VISIBILITY_TIMEOUT": "5"})
    broker = start_redis()
    worker = Worker("r1", env, tmp_path / "r1.log")
    app = make_app(config.load(env=env))  # worker-style retries: the test waits through the outage
    try:
        worker.start()
        worker.wait_ready(app)
        results = [app.signature("lab.sleep", args=(0.5,)).apply_async() for _ in range(8)]
        _wait_for_line([worker], "sleep(0.5) started")
        broker.terminate()  # SIGTERM: Redis saves the queue and the unacknowledged jobs, then exits
        assert broker.wait(timeout=30) == 0
        time.sleep(1.0)
        broker = start_redis()
        started = time.monotonic()
        values = {}
        while len(values) < len(results):
            assert time.monotonic() - started < RUN_TIMEOUT, f"{len(values)} of {len(results)} done:\n{worker.log()}"
            for r in results:
                if r.id not in values:
                    try:
                        if r.ready():
                            values[r.id] = r.get(timeout=5)
                    except (redis.exceptions.ConnectionError, OSError):
                        pass
            time.sleep(0.2)
        print(f"all {len(values)} jobs done {time.monotonic() - started:.1f} s after the broker came back; "
              f"redelivered: {sum(v['redelivered'] for v in values.values())}")
        assert all(v["result"] == 0.5 for v in values.values())
    finally:
        worker.stop()
        app.close()
        _stop(broker)


def test_workers_refuse_a_pickled_task(workers, app):
    # accept_content = ["json"]: a pickled message (anyone who can write to the queue could run code with one)
    # is refused by the worker, never unpickled.
    result = app.signature("lab.gcd", args=(48, 18)).apply_async(serializer="pickle")
    _wait_for_line(workers, "Refusing to deserialize untrusted content of type pickle")
    assert result.state == "PENDING"


def test_batch_waits_for_the_redelivery_of_a_job_a_lost_worker_held(redis_server, lab_env, tmp_path):
    # A worker that takes a job and dies leaves it in the Redis transport's "unacked" hash and index. Here the
    # test plays that worker (it takes one job off the queue and records it exactly as kombu does), then a real
    # worker starts. Before: the batch waited celery_timeout, reported the job missing (exit 1), and the job had
    # expired by the time it was handed out again. Now the batch says it waits for redelivery, and gets it.
    import redis

    env = {**lab_env, "LABNODES_REDIS_DB": "8", "LABNODES_CELERY_TIMEOUT": "3",
           "LABNODES_CELERY_VISIBILITY_TIMEOUT": "8"}
    client = redis.Redis(host=redis_server.host, port=redis_server.port, password=redis_server.password, db=8)
    client.flushdb()
    batch = subprocess.Popen([*LABNODES, "celery", "batch", "--count", "5", "--mode", "group", "--json"], env=env,
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    worker = Worker("b1", env, tmp_path / "b1.log")
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while client.llen("celery") < 5:
            assert time.monotonic() < deadline and batch.poll() is None, "the batch never queued its jobs"
            time.sleep(0.02)
        raw = client.rpop("celery")  # the "lost worker" takes one job ...
        message = json.loads(raw)
        info = message["properties"]["delivery_info"]
        tag = message["properties"]["delivery_tag"]
        client.hset("unacked", tag, json.dumps([message, info.get("exchange", ""), info.get("routing_key", "celery")]))
        client.zadd("unacked_index", {tag: time.time()})  # ... and dies holding it
        worker.start()
        out, err = batch.communicate(timeout=RUN_TIMEOUT)
        print(f"batch said: {err.strip()}")
        assert batch.returncode == 0, err + worker.log()
        report = json.loads(out)["modes"]["group"]
        assert (report["ok"], report["error_count"]) == (5, 0)
        assert "waiting for redelivery" in err and "1 job(s) of the group" in err
    finally:
        if batch.poll() is None:
            batch.kill()
            batch.wait()
        worker.stop()
        client.close()
