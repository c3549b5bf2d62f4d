"""The labnodes Celery app: Redis is both the broker (the task queue) and the result backend.

Where the settings come from
    Nothing here is hard-coded: every connection setting comes from labnodes settings (see `labnodes.config`:
    defaults < config file < LABNODES_* environment < flags). Two ways to get an app:

    * `make_app(settings)` builds an app for the given settings (`client=True` for senders). `labnodes celery
      worker|submit|batch` and the library functions in `labnodes.celery_cli` use it, so `--config` and flags
      apply.
    * `labnodes.celery_app.app` is built on first use from `config.load()` (config file and environment), for
      Celery's own tools: `celery -A labnodes.celery_app worker -n worker@%h`, `celery -A labnodes.celery_app
      inspect active`, flower.

Broker and result backend URL
    `redis://[USER]:PASSWORD@HOST:PORT/DB` from redis_user (a Redis ACL user; empty: Redis's default user),
    redis_password, redis_host, redis_port, redis_db. The password is
    URL-quoted (a password with `@`, `/`, `:` or `%` would otherwise break the URL). An empty password gives a URL
    without credentials (a local Redis in protected mode); Redis on a cluster always has `requirepass` set.

Configuration choices, and why
    task_serializer = result_serializer = "json", accept_content = ["json"]
        A worker must never unpickle a message: anyone who can write to the queue could run code on every
        worker. JSON carries ints of any size, lists and dicts: all these tasks need.
    task_acks_late = True
        A worker acknowledges a task after it has run, not when it receives it. A task whose worker dies
        half-way stays in Redis ("unacked") instead of being lost.
    task_reject_on_worker_lost = True
        If the process running a task dies (killed, out of memory), the worker puts the task back in the queue
        at once instead of recording a WorkerLostError failure. Our tasks are pure, so running one twice is
        harmless (acks late means "at least once").
    worker_prefetch_multiplier = 1
        Each worker process reserves one task at a time, so tasks spread over all worker hosts and a dead
        worker holds back at most one task per process.
    visibility_timeout = celery_visibility_timeout (default 90 s), restore sweep every 1..10 s
        Redis has no connection-bound acknowledgements: a task taken by a worker that then vanished (host
        down, SIGKILL of the worker's main process) goes back to the queue once it has been unacknowledged
        for this long, and a live worker's next sweep hands it out again. A sweep holds a lock in Redis
        (unacked_mutex) while it runs, a few ms; a worker killed inside its sweep leaves the lock to expire,
        and no worker sweeps until it does: after Kombu's default of 300 s. Here it expires after one sweep
        interval, so `redelivery_after()` = visibility timeout + sweep interval + that lock's expiry (108 s by
        default; it was 300 s + 10 s, and up to 300 s more if the lock was left). Kombu's Redis transport has no
        heartbeat that extends the timeout for a task still running, so the bound is: visibility timeout >
        the longest task (lab.sleep is capped at 60 s) + a margin (30 s), or a slow task would be handed to a
        second worker while it still runs; `labnodes celery worker` warns when the setting is below that. A
        warm shutdown (SIGTERM) finishes the running tasks and hands back at once those it had reserved.
    task_track_started stays off: it would let a waiting client name the worker that took a job, at the cost
        of one more Redis write per task (the lab's throughput runs measure exactly that path); the client
        finds when a job was taken in the transport's unacked index instead (celery_cli.held_jobs).
    Jobs sent by `labnodes celery` clients expire only after celery_timeout + redelivery_after() +
    celery_timeout + config.CLOCK_ALLOWANCE seconds (`job_expires()`), never before a lost worker's job could
    have been handed out again and run, even by a worker whose clock runs up to a minute ahead of the client's
    (a worker compares the expiry with its own clock, and drops an expired job as "revoked"): a job is never
    skipped as expired because its first worker died.
    result_expires = 1 hour, result_extended = True
        Results are kept for an hour, then Redis drops them. The extended result records the worker that ran
        the task, so a client can say where a failure happened.
    Clients (make_app(settings, client=True)): broker_transport_options max_retries 3 with short intervals,
    result_backend_transport_options retry_policy max_retries 2; everyone: socket_connect_timeout 5 s
        A client gives up within seconds when Redis is unreachable or refuses the password, instead of
        retrying for ever; `labnodes celery submit` then prints one line and exits 1. A worker is patient
        (broker_connection_max_retries = None: reconnect for ever; result_backend_always_retry with up to 60
        retries, at most 5 s apart, to store a result): under a supervisor it rides out a Redis restart. Without
        it, a task that finished while Redis was down could not store its result, was acknowledged anyway,
        and its job was lost (seen in test_jobs_pending_while_the_broker_restarts_all_complete).
    broker_connection_retry_on_startup = True
        A worker started before Redis waits for it (and Celery 5 warns when this is left unset).
"""

from __future__ import annotations

from urllib.parse import quote

from celery import Celery

from labnodes import config

RESULT_EXPIRES = 3600  # seconds a result stays in Redis
CONNECT_TIMEOUT = 5.0  # seconds to open a TCP connection to Redis
TASK_MODULES = ["labnodes.tasks"]


def redis_url(settings: config.Settings) -> str:
    """The Redis URL for the broker and the result backend, with the password URL-quoted."""
    host = settings.redis_host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    user = quote(settings.redis_user, safe="")
    auth = f"{user}:{quote(settings.redis_password, safe='')}@" if settings.redis_password else ""
    return f"redis://{auth}{host}:{settings.redis_port}/{settings.redis_db}"


SAFETY_MARGIN = 30.0  # seconds the visibility timeout must exceed the longest task by


def restore_interval(visibility: float) -> float:
    """Seconds between the sweeps (by live workers) that hand out jobs unacknowledged for too long."""
    return max(1.0, min(10.0, visibility / 10))


def sweep_lock_expires(visibility: float) -> float:
    """Seconds after which the lock of a sweep whose worker died holding it expires (Kombu's unacked_mutex_expire).

    A sweep takes a few ms; a lock that expires while a slow sweep still holds it is harmless (each job is
    handed back in a transaction that watches the unacked hash, so two sweeps never both hand out one job)."""
    return restore_interval(visibility)


def redelivery_after(settings: config.Settings) -> float:
    """At most this many seconds after a worker took a job, Redis hands it out again if that worker is lost:
    the visibility timeout, a lock a dying worker may have left on the sweeps, and the next sweep."""
    visibility = float(settings.celery_visibility_timeout)
    return visibility + sweep_lock_expires(visibility) + restore_interval(visibility)


def job_expires(settings: config.Settings, wait: float | None = None) -> float:
    """Seconds after sending when a client's job expires: after the client's first wait (`wait`, else
    celery_timeout), a redelivery and a run, as read on a clock up to config.CLOCK_ALLOWANCE ahead."""
    first = settings.celery_timeout if wait is None else wait
    return first + redelivery_after(settings) + settings.celery_timeout + config.CLOCK_ALLOWANCE


def celery_config(settings: config.Settings) -> dict:
    """Celery configuration (lowercase setting names) for these labnodes settings."""
    url = redis_url(settings)
    visibility = float(settings.celery_visibility_timeout)
    return {
        "broker_url": url,
        "result_backend": url,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "result_expires": RESULT_EXPIRES,
        "result_extended": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # the worker: keep trying, a supervisor runs it
        # the worker: a result that cannot be stored while Redis restarts is retried (up to ~5 min), not
        # dropped: else the task is acknowledged with no result stored, and the job is lost
        "result_backend_always_retry": True,
        "result_backend_max_retries": 60,
        "result_backend_max_sleep_between_retries_ms": 5000,
        "broker_transport_options": {
            "visibility_timeout": visibility,
            "unacked_restore_interval": restore_interval(visibility),
            "unacked_restore_throttle": 1,  # scan on every sweep: the interval above is the period
            "unacked_mutex_expire": sweep_lock_expires(visibility),
            "socket_connect_timeout": CONNECT_TIMEOUT,
        },
        "redis_socket_connect_timeout": CONNECT_TIMEOUT,
        "worker_hijack_root_logger": True,
        "timezone": "UTC",
    }


def client_config(settings: config.Settings) -> dict:
    """What a client changes: bounded retries, so a dead broker or a wrong password fails in seconds."""
    return {
        "broker_transport_options": {
            **celery_config(settings)["broker_transport_options"],
            "max_retries": 3,  # publishing to a dead broker fails after ~1 s
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        "result_backend_transport_options": {
            "retry_policy": {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1},
        },
        "result_backend_always_retry": False,  # a client fails in seconds instead
    }


def make_app(settings: config.Settings, client: bool = False) -> Celery:
    """A Celery app for these settings, with the lab's tasks (lab.gcd, lab.lcm, lab.sleep) registered.

    client=True: for programs that send tasks and wait for results (bounded retries, see client_config)."""
    app = Celery("labnodes", include=TASK_MODULES)
    app.conf.update(celery_config(settings))
    if client:
        app.conf.update(client_config(settings))
    import labnodes.tasks  # noqa: F401  (shared tasks: registers them with every app)

    return app


_app: Celery | None = None


def __getattr__(name: str):
    # `app` is built on first use, so importing make_app does not read the config file twice.
    global _app
    if name == "app":
        if _app is None:
            _app = make_app(config.load())
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
