"""Unit tests of the lab's Celery tasks (called directly and eagerly) and of the Celery app configuration."""

from __future__ import annotations

import math
import socket
from urllib.parse import unquote, urlsplit

import pytest

from labnodes import LabnodesError, celery_app, celery_cli, config, tasks

BIG = 10**30 - 1


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [(48, 18, 6), (18, 48, 6), (0, 0, 0), (0, 7, 7), (7, 0, 7), (1, 1, 1), (17, 13, 1),
     (BIG, BIG, BIG), (2**99, 2**60, 2**60), (BIG, 3, math.gcd(BIG, 3))],
)
def test_gcd_returns_greatest_common_divisor(a, b, expected):
    assert tasks.gcd(a, b)["result"] == expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [(48, 18, 144), (0, 0, 0), (0, 5, 0), (5, 0, 0), (1, 1, 1), (4, 6, 12),
     (BIG, BIG - 1, BIG * (BIG - 1)), (2**99, 3, 3 * 2**99)],
)
def test_lcm_returns_least_common_multiple_and_zero_with_zero(a, b, expected):
    assert tasks.lcm(a, b)["result"] == expected


@pytest.mark.parametrize(
    ("a", "b", "error", "message"),
    [
        (True, 3, ValueError, "numbers must be integers, got bool"),
        (3, False, ValueError, "numbers must be integers, got bool"),
        (4.0, 2, ValueError, "numbers must be integers, got float"),
        ("48", 18, ValueError, "numbers must be integers, got str"),
        (None, 18, ValueError, "numbers must be integers, got NoneType"),
        ([48], 18, ValueError, "numbers must be integers, got list"),
        (-1, 18, ValueError, "negative numbers are not allowed"),
        (48, -18, ValueError, "negative numbers are not allowed"),
        (10**30, 1, ValueError, "numbers must be less than 10**30"),
        pytest.param(1, 10**5000, ValueError, "numbers must be less than 10**30", id="b-has-5001-digits"),
    ],
)
def test_gcd_refuses_bad_operand_with_the_numbers_rule_message(a, b, error, message):
    with pytest.raises(error) as excinfo:
        tasks.gcd(a, b)
    assert str(excinfo.value) == message


def test_lcm_refuses_a_negative_number_with_the_numbers_rule_message():
    with pytest.raises(ValueError, match=r"^negative numbers are not allowed$"):
        tasks.lcm(4, -3)


def test_result_says_task_args_host_and_worker_when_called_directly():
    assert tasks.gcd(48, 18) == {
        "task": "gcd", "args": [48, 18], "result": 6, "host": socket.gethostname(), "worker": None,
        "redelivered": False,
    }


def test_result_names_the_worker_node_when_run_as_a_task():
    app = celery_app.make_app(config.Settings())
    value = app.tasks["lab.lcm"].apply((48, 18)).get()  # eager: runs here, through Celery's task machinery
    assert value["result"] == 144
    assert value["host"] == socket.gethostname()
    assert value["worker"]  # the node name Celery gives this process


@pytest.mark.parametrize("seconds", [0, 0.01, 0.5])
def test_sleep_returns_seconds_slept(seconds):
    assert tasks.sleep(seconds)["result"] == seconds


@pytest.mark.parametrize(
    ("seconds", "error"),
    [(-1, ValueError), (61, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
     (True, TypeError), ("1", TypeError), (None, TypeError)],
)
def test_sleep_refuses_bad_seconds(seconds, error):
    with pytest.raises(error, match="^sleep: seconds must be"):
        tasks.sleep(seconds)


# --- the app's configuration ---------------------------------------------------------------------------

@pytest.fixture
def conf():
    return celery_app.make_app(config.Settings(redis_password="s3cret")).conf


def test_app_accepts_and_sends_json_only(conf):
    assert conf.task_serializer == "json"
    assert conf.result_serializer == "json"
    assert list(conf.accept_content) == ["json"]
    assert list(conf.result_accept_content) == ["json"]


def test_app_acks_late_and_requeues_on_worker_loss_with_prefetch_one(conf):
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1


def test_app_expires_results_and_records_the_worker(conf):
    assert conf.result_expires > 0
    assert conf.result_extended is True


def test_client_app_bounds_retries_but_worker_app_keeps_reconnecting():
    client = celery_app.make_app(config.Settings(), client=True).conf
    worker = celery_app.make_app(config.Settings()).conf
    assert client.broker_transport_options["max_retries"] == 3
    assert client.result_backend_transport_options["retry_policy"]["max_retries"] == 2
    assert "max_retries" not in worker.broker_transport_options
    assert worker.broker_connection_max_retries is None
    for conf in (client, worker):
        assert conf.broker_transport_options["socket_connect_timeout"] > 0
        assert conf.broker_transport_options["visibility_timeout"] == 90.0


def test_visibility_timeout_comes_from_settings():
    app = celery_app.make_app(config.Settings(celery_visibility_timeout=42.0))
    assert app.conf.broker_transport_options["visibility_timeout"] == 42.0


def test_app_registers_the_lab_tasks(conf):
    app = celery_app.make_app(config.Settings())
    assert {"lab.gcd", "lab.lcm", "lab.sleep"} <= set(app.tasks)


def test_broker_and_backend_url_come_from_settings_with_password_quoted():
    password = "p@ss/w:rd%#?x"
    settings = config.Settings(redis_host="10.77.1.10", redis_port=6380, redis_db=2, redis_password=password)
    app = celery_app.make_app(settings)
    url = app.conf.broker_url
    assert app.conf.result_backend == url
    parts = urlsplit(url)
    assert (parts.scheme, parts.hostname, parts.port, parts.path) == ("redis", "10.77.1.10", 6380, "/2")
    assert unquote(parts.password) == password
    assert "@" not in parts.password and "/" not in parts.password


def test_url_without_password_has_no_credentials():
    assert celery_app.redis_url(config.Settings()) == "redis://127.0.0.1:6379/0"


def test_module_app_reads_settings_from_config_file_and_environment(monkeypatch, tmp_path):
    (tmp_path / "labnodes.toml").write_text('redis_host = "10.0.0.5"\nredis_port = 6390\n')
    monkeypatch.setenv("LABNODES_CONFIG", str(tmp_path / "labnodes.toml"))
    monkeypatch.setenv("LABNODES_REDIS_PASSWORD", "pw")
    monkeypatch.setattr(celery_app, "_app", None)  # built again on next use
    assert celery_app.app.conf.broker_url == "redis://:pw@10.0.0.5:6390/0"


# --- client-side argument checks ------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("op", "texts", "expected"),
    [("gcd", ["48", "18"], (48, 18)), ("lcm", [" 0", "5 "], (0, 5)), ("sleep", ["1.5"], (1.5,)),
     ("gcd", [str(BIG), "1"], (BIG, 1))],
)
def test_client_parses_good_arguments(op, texts, expected):
    assert celery_cli.parse_args_for(op, texts) == expected


@pytest.mark.parametrize(
    ("op", "texts", "message"),
    [
        ("gcd", ["4.5", "3"], "numbers must be decimal digits 0-9"),
        ("gcd", ["48", "x"], "numbers must be decimal digits 0-9"),
        ("gcd", ["-3", "3"], "negative numbers are not allowed"),
        ("lcm", ["1" + "0" * 30, "3"], "numbers must be less than 10**30"),
        ("gcd", ["48"], "gcd takes two integers A B, got 1 argument(s)"),
        ("sleep", ["soon"], "sleep: seconds must be a number, got 'soon'"),
        ("sleep", ["nan"], "sleep: seconds must be between 0 and 60, got nan"),
    ],
)
def test_client_refuses_bad_arguments_with_one_line(op, texts, message):
    with pytest.raises(LabnodesError) as excinfo:
        celery_cli.parse_args_for(op, texts)
    assert str(excinfo.value) == message


@pytest.mark.parametrize("count", [0, -1, celery_cli.MAX_COUNT + 1, 100_000_000])
def test_batch_refuses_a_count_out_of_bounds_before_making_pairs_or_reaching_redis(count, monkeypatch):
    """`fab run-celery --count 100000000` held 13 GB of pairs on the client host before any job went."""
    monkeypatch.setattr(celery_cli, "random_pairs", lambda *a: pytest.fail("pairs made for a refused count"))
    settings = config.Settings(redis_host="127.0.0.1", redis_port=1)  # nothing listens: reaching it would fail
    with pytest.raises(LabnodesError) as excinfo:
        celery_cli.batch(settings, count=count)
    assert str(excinfo.value) == f"count must be 1..10000 tasks per mode, got {count}"


@pytest.mark.parametrize("mode, modes", [("all", ("one", "group", "chunks")), ("group", ("group",)),
                                         ("bogus", ("bogus",))])
def test_a_mode_value_names_its_modes_all_being_every_mode_in_order(mode, modes):
    """`celery batch --mode` and `fab run-celery --mode` both expand the value here; check_batch refuses bogus."""
    assert celery_cli.batch_modes(mode) == modes


def test_random_pairs_are_reproducible_for_a_seed():
    assert celery_cli.random_pairs(5, seed=7) == celery_cli.random_pairs(5, seed=7)
    assert celery_cli.random_pairs(5, seed=7) != celery_cli.random_pairs(5, seed=8)


def test_jobs_expire_only_after_a_lost_worker_s_job_could_be_redelivered_and_run():
    # Before: jobs expired at celery_timeout (30 s) while redelivery came after the visibility timeout (300 s).
    from labnodes.celery_app import job_expires, redelivery_after
    from labnodes.config import Settings

    s = Settings()
    assert redelivery_after(s) == 90.0 + 9.0 + 9.0  # visibility, a lock left by a dying sweeper, the next sweep
    assert job_expires(s) == 30.0 + 108.0 + 30.0 + 60.0  # ... and a worker's clock up to a minute ahead
    assert job_expires(s, wait=31.5) == 31.5 + 108.0 + 30.0 + 60.0  # a group's longer first wait
    assert s.celery_visibility_timeout >= tasks.MAX_SLEEP + 30  # a running task is never handed out twice


def test_a_job_outlives_a_worker_clock_ahead_by_the_allowance_and_the_checks_share_it():
    # Seen in CI: the box's wall clock stepped 12.6 s while a batch waited (monotonic time 4.8 s, wall 17.4 s), the
    # redelivered job reached its worker after its expiry, and the worker dropped it as "revoked": the batch
    # reported it wrong. A worker compares a job's expiry with its own clock, so the allowance is part of it.
    from labkit.checks import CLOCK_LIMIT
    from labnodes.celery_app import job_expires, redelivery_after
    from labnodes.config import CLOCK_ALLOWANCE, Settings

    s = Settings(celery_timeout=3, celery_visibility_timeout=8)
    assert job_expires(s) - (3 + redelivery_after(s) + 3) == CLOCK_ALLOWANCE >= 60
    assert CLOCK_LIMIT * 2 <= CLOCK_ALLOWANCE  # two hosts each within the check's limit are within the allowance


def test_a_worker_freezes_what_it_allocated_before_the_pool_forks_each_process(monkeypatch):
    """What the pool processes share with the worker stays shared: run_worker has gc.freeze() run whenever Celery's
    prefork pool is about to fork a process (worker_before_create_process), and not before."""
    import gc
    from types import SimpleNamespace

    from celery.signals import worker_before_create_process

    frozen = []

    class PoolStartingWorker:
        exitcode = 0

        def __init__(self, **_):
            pass

        def start(self):
            frozen.append(gc.get_freeze_count())
            worker_before_create_process.send(sender=self)
            frozen.append(gc.get_freeze_count())

    monkeypatch.setattr(celery_app, "make_app", lambda settings: SimpleNamespace(Worker=PoolStartingWorker))
    gc.unfreeze()
    try:
        assert celery_cli.run_worker(config.load(env={}), "w1", 1) == 0
    finally:
        gc.unfreeze()
    assert frozen[0] == 0 < frozen[1]


def test_a_job_a_worker_dropped_as_expired_says_what_makes_that_happen():
    from celery.exceptions import TaskRevokedError

    text = celery_cli._failure(TaskRevokedError("expired"))
    assert text.startswith("TaskRevokedError: expired (the worker found the job past its expiry")
    assert "clock runs more than 60 s ahead" in text and "host.clock" in text
    assert celery_cli._failure(TaskRevokedError("terminated")) == "TaskRevokedError: terminated"
    assert celery_cli._failure(ZeroDivisionError("x")) == "ZeroDivisionError: x"


def test_a_timeout_in_settings_made_in_code_meets_the_same_rule_as_one_loaded():
    from labnodes import LabnodesError
    from labnodes.config import Settings

    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(LabnodesError, match="celery_timeout must be a number of seconds > 0 and at most 86400"):
            celery_cli._check_timeout(Settings(celery_timeout=bad))
    assert celery_cli._check_timeout(Settings(celery_timeout=2.5)) == 2.5
