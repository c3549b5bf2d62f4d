"""`labnodes celery ...`: a Celery worker for the lab's tasks, and clients that submit them and measure batches.

Commands
    labnodes celery worker [--concurrency N] [--name NAME]
        Runs a worker in the foreground (a supervisor runs it) with node name NAME@HOSTNAME (default
        worker@<this host's hostname>, like Celery's `-n worker@%h`): the node name always carries the host.
        --name lets two workers share one box (tests); on a cluster there is one worker per host. It logs every
        task (received, what it computed, succeeded/failed). SIGTERM or Ctrl-C: warm shutdown (running tasks
        finish, unstarted ones go back to the queue); a second signal stops at once.
    labnodes celery submit gcd|lcm A B [--json] [--timeout S]
    labnodes celery submit sleep SECONDS [--json] [--timeout S]
        Sends one task, waits for its result, prints the result and the host/worker that ran it. The
        arguments are checked here first, with the rules of `labnodes.tasks`.
    labnodes celery batch [--count N] [--mode one|group|chunks|all] [--chunk-size 100] [--seed S] [--json]
                          [--timeout S]
        Sends N random gcd pairs (the same pairs for a given seed) in each chosen mode and checks every result
        against math.gcd:
          one     one task at a time: send, wait for its result, then the next (a round trip per task);
          group   all N tasks as one Celery group, results collected together;
          chunks  the N pairs cut into chunks of --chunk-size, one task per chunk (celery.starmap).
        Per mode it prints tasks, seconds, tasks/s, how many results each worker host and each worker node
        produced, and the errors (wrong results, failed tasks, timeouts). N is 1..10000 (MAX_COUNT): at
        about 450 tasks/s one by one that is some 20 s per mode, and a mistyped count does not fill the
        host's memory with pairs before the first job goes (a hundred million took 13 GB).

Connection: redis_host, redis_port, redis_db, redis_password from the config file / LABNODES_* environment
(--redis-host, --redis-port, --redis-db override the first three; the password has no flag, so it never shows up
in `ps`).

Errors (one line on stderr, exit status 1; never a hang)
    a bad argument                        "numbers must be decimal digits 0-9" (nothing is sent; the numbers
                                          rule and its messages are labnodes.numbers', as on the ring and the
                                          math server)
    Redis unreachable                     "cannot reach Redis at redis://HOST:PORT/DB: ..."
    Redis refuses the password            "Redis at redis://HOST:PORT/DB refused the password: check redis_password"
    no worker took the job within         "no worker answered lab.gcd within 30 s: is a worker running against ...?
    celery_timeout s                      (job ID stays queued until HH:MM:SS: a worker that comes up before then
                                          runs it)"
    a worker took the job but gave no     first a notice on stderr (not an error): "job ID (lab.sleep) was taken by
    result within celery_timeout s        a worker at 14:03:12 and has no result after 30 s; if that worker is gone,
                                          Redis hands the job to another worker by 14:05:00 (visibility timeout
                                          90 s): waiting for redelivery until 14:05:30"; then the result, or
                                          "no result for job ID ... even after the time for redelivery ..."
    Jobs expire only after celery_timeout + redelivery + celery_timeout + a minute for the hosts' clocks
    (celery_app.job_expires), so a job whose worker was killed is handed to another worker, never skipped as
    expired.
    the task failed on the worker         "lab.gcd failed on worker@w1: TypeError: ..."
    batch: any wrong or missing result    the table is printed, then each error line; exit status 1.
    A batch waits celery_timeout seconds for one task (mode one), or celery_timeout + 1 s per 100 tasks for a
    whole group or chunks run; if by then a worker holds jobs it has not answered (it may have been killed), it
    says so on stderr, like submit, and waits on until they could have been redelivered and run.

Library API (Fabric tasks, tests): `submit(settings, op, *args) -> dict`, `batch(settings, count, modes,
chunk_size, seed) -> dict`, `run_worker(settings, name, concurrency) -> int`. Celery is imported only when a
command runs: the CLI stays quick to start.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import random
import re
import socket
import time
from collections import Counter

from labnodes import LabnodesError, numbers, output
from labnodes.config import CLOCK_ALLOWANCE, Settings, check_seconds

log = logging.getLogger(__name__)

MODES = ("one", "group", "chunks")
NODE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_COUNT = 10_000  # tasks per mode in a batch (see the docstring)
MAX_LISTED_ERRORS = 20  # a batch lists at most this many error lines per mode (it counts them all)
# s: how long Celery naps between looks at a group's results. Its default, 0.5 s, cost every group and chunks run
# half a second: ResultSet.get() reads the results once and, if one is not ready yet (nearly always, right after
# sending), sleeps one interval before it listens for them (celery.result.ResultSet._iter_meta ->
# backend.get_many(max_iterations=1)). 200 pairs in 2 chunks took 0.51 s with it, 0.02 s with 0.01.
RESULT_POLL = 0.01


# --- arguments ------------------------------------------------------------------------------------------

def parse_args_for(op: str, texts: list[str]) -> tuple:
    """Turn command-line strings into checked task arguments, or raise LabnodesError (one line)."""
    from labnodes import tasks

    try:
        if op in tasks.OPERATIONS:
            if len(texts) != 2:
                raise ValueError(f"{op} takes two integers A B, got {len(texts)} argument(s)")
            return tuple(numbers.parse_number(text) for text in texts)  # the one rule, its messages
        if op == "sleep":
            if len(texts) != 1:
                raise ValueError(f"sleep takes one number SECONDS, got {len(texts)} argument(s)")
            try:
                seconds = float(texts[0])
            except ValueError:
                raise ValueError(f"sleep: seconds must be a number, got {texts[0]!r:.40}") from None
            return (tasks.check_seconds(seconds),)
        raise ValueError(f"unknown task {op!r}: choose gcd, lcm or sleep")
    except (TypeError, ValueError) as exc:
        raise LabnodesError(str(exc)) from None


def check_task_args(op: str, args: tuple) -> tuple:
    """Check already-typed arguments (library callers) with the tasks' own rules."""
    from labnodes import tasks

    try:
        if op == "sleep":
            if len(args) != 1:
                raise ValueError(f"sleep takes one argument, got {len(args)}")
            return (tasks.check_seconds(args[0]),)
        if len(args) != 2:
            raise ValueError(f"{op} takes two arguments, got {len(args)}")
        return tasks.check_operands(op, *args)
    except (TypeError, ValueError) as exc:
        raise LabnodesError(str(exc)) from None


# --- errors from Redis ------------------------------------------------------------------------------------

def where(settings: Settings) -> str:
    """The broker address for messages (never the password)."""
    return f"redis://{settings.redis_host}:{settings.redis_port}/{settings.redis_db}"


def _chain(exc: BaseException) -> list[BaseException]:
    seen, cause = [], exc
    while cause is not None and len(seen) < 10:
        seen.append(cause)
        cause = cause.__cause__ or cause.__context__
    return seen


def _is_broker_failure(exc: BaseException) -> bool:
    """True if `exc` (or what caused it) is a failure to talk to Redis, not an error raised by a task."""
    import kombu.exceptions
    import redis.exceptions

    return any(isinstance(e, kombu.exceptions.OperationalError | redis.exceptions.RedisError) for e in _chain(exc))


def _broker_failure(settings: Settings, exc: BaseException) -> LabnodesError:
    import redis.exceptions

    seen = _chain(exc)
    text = " ".join(str(e) for e in seen)
    if any(isinstance(e, redis.exceptions.AuthenticationError) for e in seen) or re.search(
        r"WRONGPASS|NOAUTH|invalid password|invalid username-password|Authentication required", text
    ):
        return LabnodesError(f"Redis at {where(settings)} refused the password: check redis_password")
    redis_errors = [e for e in seen if isinstance(e, redis.exceptions.RedisError)]
    last = redis_errors[0] if redis_errors else seen[-1]
    return LabnodesError(f"cannot reach Redis at {where(settings)}: {str(last) or type(last).__name__}")


def check_redis(settings: Settings) -> None:
    """Connect, authenticate and PING once, so an unreachable Redis or a wrong password gives one clear line."""
    import redis

    from labnodes.celery_app import CONNECT_TIMEOUT, redis_url

    client = redis.Redis.from_url(
        redis_url(settings), socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=CONNECT_TIMEOUT
    )
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        raise _broker_failure(settings, exc) from None
    finally:
        client.close()


# --- library API -----------------------------------------------------------------------------------------

def run_worker(settings: Settings, name: str = "worker", concurrency: int | None = None) -> int:
    """Run a Celery worker named NAME@HOSTNAME in the foreground until it is stopped; return its exit code."""
    from labnodes.celery_app import make_app

    if not NODE_NAME.fullmatch(name):
        raise LabnodesError(f"worker name must be 1-64 letters, digits, '.', '_' or '-', got {name!r:.70}")
    concurrency = settings.celery_concurrency if concurrency is None else concurrency
    if concurrency < 1:
        raise LabnodesError(f"concurrency must be >= 1, got {concurrency}")
    node = f"{name}@{socket.gethostname()}"
    from labnodes.celery_app import SAFETY_MARGIN
    from labnodes.tasks import MAX_SLEEP

    if settings.celery_visibility_timeout < MAX_SLEEP + SAFETY_MARGIN:
        log.warning(
            "celery_visibility_timeout %g s is below the longest task (%g s) + %g s: a long task may be handed "
            "to a second worker while it still runs", settings.celery_visibility_timeout, MAX_SLEEP, SAFETY_MARGIN,
        )
    app = make_app(settings)
    log.info("starting worker %s (concurrency %d) against %s", node, concurrency, where(settings))
    # without_mingle: at start-up Celery would spend a second asking other workers for revoked task ids; the
    # lab revokes nothing (expired tasks are dropped by each worker), so the worker is ready that much sooner.
    worker = app.Worker(hostname=node, concurrency=concurrency, loglevel=settings.log_level, without_mingle=True)
    share_with_pool_processes()
    worker.start()
    return worker.exitcode or 0


def share_with_pool_processes() -> None:
    """Before the worker forks each pool process, move everything it has allocated out of the garbage collector's
    reach (gc.freeze, as Python's gc documentation advises before a fork): a child's collections then never write
    to the objects it shares with the parent, so their pages stay shared instead of being copied into each child.
    Measured on an 8-host netns cluster after 200 jobs: a pool process holds 10 MB of its own instead of 12-20 MB,
    and a worker host's three processes 59 instead of 69 MB (proportional set size). The frozen objects are the
    parent's start-up state, which it keeps for its whole life anyway."""
    from celery.signals import worker_before_create_process

    worker_before_create_process.connect(_freeze, weak=False, dispatch_uid="labnodes.freeze_before_fork")


def _freeze(**_) -> None:
    gc.freeze()


def submit(settings: Settings, op: str, *args, notify=None) -> dict:
    """Run lab.<op>(*args) on some worker and return its result dict; raise LabnodesError on any failure.

    Waits celery_timeout seconds. If by then a worker has taken the job but not answered (it may have been
    killed), calls notify(text) (default: a line on stderr) saying the job waits for redelivery and until
    when, then waits on: until redelivery_after() seconds after the job was taken, plus celery_timeout.
    """
    from celery.exceptions import TimeoutError as CeleryTimeout

    from labnodes.celery_app import job_expires, make_app

    args = check_task_args(op, args)
    timeout = _check_timeout(settings)
    check_redis(settings)
    app = make_app(settings, client=True)
    notify = notify or _notify
    result = None
    try:
        sent = time.time()
        try:
            result = app.signature(f"lab.{op}", args=args).apply_async(expires=job_expires(settings))
        except Exception as exc:
            if _is_broker_failure(exc):
                raise _broker_failure(settings, exc) from None
            raise
        log.info("sent lab.%s(%s) as task %s", op, ", ".join(map(str, args)), result.id)
        value = None
        for first in (True, False):  # the second wait only for a job a worker took and did not answer
            wait = timeout if first else _redelivery_wait(settings, op, result, sent, notify)
            try:
                value = result.get(timeout=wait)
                break
            except CeleryTimeout:
                if not first:
                    raise LabnodesError(
                        f"no result for job {result.id} (lab.{op}) even after the time for redelivery: the "
                        f"worker that took it is gone and no other worker took it over; it stays queued until "
                        f"it expires, {_clock(sent + job_expires(settings))}"
                    ) from None
            except Exception as exc:  # a task error re-raised here by Celery, or a lost connection to Redis
                if _is_broker_failure(exc):
                    raise _broker_failure(settings, exc) from None
                ran_on = getattr(result, "worker", None) or "a worker"
                raise LabnodesError(f"lab.{op} failed on {ran_on}: {_failure(exc)}") from None
    finally:
        _release(result)
        app.close()
    log.info("task %s: %s", result.id, value)
    return value


def _notify(text: str) -> None:
    import sys

    print(f"labnodes: {text}", file=sys.stderr, flush=True)


def _failure(exc: BaseException) -> str:
    """A task's failure as a line; a job a worker dropped as expired says what makes that happen."""
    text = f"{type(exc).__name__}: {exc}"
    if type(exc).__name__ == "TaskRevokedError" and str(exc) == "expired":
        text += (" (the worker found the job past its expiry: it waited in the queue for minutes, or that worker's "
                 f"clock runs more than {CLOCK_ALLOWANCE:g} s ahead of this host's; fab check's host.clock compares "
                 "the clocks)")
    return text


def _clock(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch))


def held_jobs(settings: Settings, task_ids) -> dict[str, float]:
    """Which of these jobs a worker has taken and not acknowledged yet, and when it took them (epoch seconds),
    from the Redis transport's "unacked" hash and index. A job not in it is still queued, or done."""
    import redis

    from labnodes.celery_app import CONNECT_TIMEOUT, redis_url

    wanted = set(task_ids)
    held: dict[str, float] = {}
    client = redis.Redis.from_url(
        redis_url(settings), socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=CONNECT_TIMEOUT
    )
    try:
        for tag, raw in client.hscan_iter("unacked"):
            try:
                message = json.loads(raw)[0]
                task_id = message["headers"]["id"]
            except (ValueError, TypeError, IndexError, KeyError):
                continue
            if task_id in wanted:
                taken = client.zscore("unacked_index", tag)
                if taken is not None:
                    held[task_id] = taken
    except redis.exceptions.RedisError as exc:
        raise _broker_failure(settings, exc) from None
    finally:
        client.close()
    return held


def taken_at(settings: Settings, task_id: str) -> float | None:
    """When a worker took job `task_id` and has not acknowledged it yet; None if no worker holds it."""
    return held_jobs(settings, [task_id]).get(task_id)


def _held_wait(settings: Settings, ids, what: str, notify) -> float | None:
    """Seconds to wait on for jobs a worker took and did not answer (saying so through notify); None if no
    job of `ids` is held by a worker."""
    from labnodes.celery_app import redelivery_after

    held = held_jobs(settings, ids)
    if not held:
        return None
    first, last = min(held.values()), max(held.values())
    again = last + redelivery_after(settings)
    now = time.time()
    until = max(again, now) + settings.celery_timeout
    notify(
        f"{len(held)} job(s) of {what} were taken by a worker at {_clock(first)} and have no result; if that "
        f"worker is gone, Redis hands them to another worker by {_clock(again)} (visibility timeout "
        f"{settings.celery_visibility_timeout:g} s): waiting for redelivery until {_clock(until)}"
    )
    return until - now


def _redelivery_wait(settings: Settings, op: str, result, sent: float, notify) -> float:
    """After the first wait: seconds to wait on for a job a worker took (saying so), or raise LabnodesError."""
    from labnodes.celery_app import job_expires, redelivery_after

    timeout = settings.celery_timeout
    taken = taken_at(settings, result.id)
    now = time.time()
    if taken is None:
        if result.ready():
            return timeout  # the result came in just now
        raise LabnodesError(
            f"no worker answered lab.{op} within {timeout:g} s: is a worker running against {where(settings)}? "
            f"(job {result.id} stays queued until {_clock(sent + job_expires(settings))}: a worker that "
            f"comes up before then runs it)"
        )
    who = "a worker"
    try:
        if result.state == "STARTED" and isinstance(result.info, dict) and result.info.get("hostname"):
            who = result.info["hostname"]
    except Exception:  # only for the message
        log.debug("no STARTED record for %s", result.id, exc_info=True)
    again = taken + redelivery_after(settings)
    until = max(again, now) + timeout
    notify(
        f"job {result.id} (lab.{op}) was taken by {who} at {_clock(taken)} and has no result after {timeout:g} s; "
        f"if that worker is gone, Redis hands the job to another worker by {_clock(again)} "
        f"(visibility timeout {settings.celery_visibility_timeout:g} s): waiting for redelivery until {_clock(until)}"
    )
    return until - now


def _check_timeout(settings: Settings) -> float:
    """celery_timeout by the timeouts' one rule (config.load applies it; Settings made in code skip load)."""
    return check_seconds(settings.celery_timeout, "celery_timeout")


def _release(result) -> None:
    """Stop listening for results that never came (else Celery unsubscribes noisily at interpreter exit)."""
    if result is None:
        return
    for child in getattr(result, "results", None) or [result]:
        try:
            child.backend.remove_pending_result(child)
        except Exception:  # the connection is gone already: nothing left to release
            log.debug("could not release result %s", child.id, exc_info=True)


def random_pairs(count: int, seed: int) -> list[tuple[int, int]]:
    """`count` (a, b) pairs, the same for the same seed; a common factor makes the gcds interesting."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        g = rng.randrange(1, 1000)
        pairs.append((g * rng.randrange(0, 10**6), g * rng.randrange(0, 10**6)))
    return pairs


def batch_modes(mode: str) -> tuple[str, ...]:
    """The modes a `--mode` value names: "all" is every mode, in MODES' order."""
    return MODES if mode == "all" else (mode,)


def check_batch(count: int, modes) -> None:
    """The one rule for a batch's size and modes, or LabnodesError (one line): `celery batch` checks it, and so
    does `fab run-celery` on the control machine before anything runs on the cluster."""
    if not 1 <= count <= MAX_COUNT:
        raise LabnodesError(f"count must be 1..{MAX_COUNT} tasks per mode, got {count}")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise LabnodesError(f"unknown mode {unknown[0]!r}: choose one of {', '.join(MODES)} or all")


def batch(
    settings: Settings,
    count: int = 1000,
    modes: tuple[str, ...] | list[str] = MODES,
    chunk_size: int = 100,
    seed: int = 1,
    notify=None,
) -> dict:
    """Run `count` gcd tasks in each mode, check them, and report speed, spread over workers and errors.

    Jobs a worker took and did not answer within the wait (the worker may have been killed) are waited for
    until they could have been redelivered and run, saying so through notify(text) (default: stderr)."""
    check_batch(count, modes)
    if chunk_size < 1:
        raise LabnodesError(f"chunk size must be >= 1, got {chunk_size}")
    _check_timeout(settings)

    from labnodes.celery_app import make_app

    pairs = random_pairs(count, seed)
    check_redis(settings)
    app = make_app(settings, client=True)
    report = {"count": count, "seed": seed, "chunk_size": chunk_size, "broker": where(settings), "modes": {}}
    try:
        for mode in modes:
            report["modes"][mode] = _run_mode(app, settings, mode, pairs, chunk_size, notify or _notify)
    except Exception as exc:
        if _is_broker_failure(exc):
            raise _broker_failure(settings, exc) from None
        raise
    finally:
        app.close()
    return report


def _get_outlasting_redelivery(settings: Settings, result, wait: float, what: str, notify):
    """result.get(wait); if it times out while a worker holds some of its jobs, wait on for their redelivery."""
    from celery.exceptions import TimeoutError as CeleryTimeout

    try:
        return result.get(timeout=wait, propagate=False, interval=RESULT_POLL)
    except CeleryTimeout:
        children = getattr(result, "results", None) or [result]
        more = _held_wait(settings, [r.id for r in children if not r.ready()], what, notify)
        if more is None:
            raise
        return result.get(timeout=more, propagate=False, interval=RESULT_POLL)


def _run_mode(app, settings: Settings, mode: str, pairs: list, chunk_size: int, notify=_notify) -> dict:
    from celery import group
    from celery.exceptions import TimeoutError as CeleryTimeout

    from labnodes.celery_app import job_expires

    task = app.tasks["lab.gcd"]
    timeout = settings.celery_timeout
    whole_timeout = timeout + len(pairs) / 100
    expires = job_expires(settings, wait=whole_timeout)  # never before a lost job is handed out again
    values: list = []
    errors: list[str] = []
    result = None
    log.info("batch: %d gcd tasks, mode %s", len(pairs), mode)
    start = time.perf_counter()
    try:
        if mode == "one":
            for a, b in pairs:
                result = task.apply_async((a, b), expires=job_expires(settings))
                values.append(_get_outlasting_redelivery(settings, result, timeout, f"gcd({a}, {b})", notify))
        elif mode == "group":
            result = group(task.s(a, b) for a, b in pairs).apply_async(expires=expires)
            values = _get_outlasting_redelivery(settings, result, whole_timeout, "the group", notify)
        else:
            result = task.chunks(pairs, chunk_size).group().apply_async(expires=expires)
            for chunk in _get_outlasting_redelivery(settings, result, whole_timeout, "the chunks", notify):
                if isinstance(chunk, list):
                    values.extend(chunk)
                else:  # the whole chunk task failed
                    n = min(chunk_size, len(pairs) - len(values))
                    values.extend([chunk] * n)
    except CeleryTimeout:
        waited = timeout if mode == "one" else whole_timeout
        errors.append(f"{mode}: no result within {waited:g} s after {len(values)} of {len(pairs)} tasks")
    finally:
        seconds = time.perf_counter() - start
        _release(result)

    hosts: Counter = Counter()
    workers: Counter = Counter()
    wrong = 0
    for (a, b), value in zip(pairs, values, strict=False):
        expected = math.gcd(a, b)
        if isinstance(value, dict) and value.get("result") == expected and value.get("args") == [a, b]:
            hosts[str(value.get("host"))] += 1
            workers[str(value.get("worker"))] += 1
            continue
        wrong += 1
        if len(errors) < MAX_LISTED_ERRORS:
            if isinstance(value, BaseException):
                errors.append(f"{mode}: gcd({a}, {b}) failed: {_failure(value)}")
            else:
                errors.append(f"{mode}: gcd({a}, {b}) expected {expected}, got {value!r:.100}")
    missing = len(pairs) - len(values)
    done = len(pairs) - wrong - missing
    log.info("batch: mode %s: %d ok, %d wrong, %d missing in %.3f s", mode, done, wrong, missing, seconds)
    return {
        "tasks": len(pairs),
        "ok": done,
        "seconds": round(seconds, 4),
        "tasks_per_s": round(len(pairs) / seconds, 1) if seconds > 0 else None,
        "hosts": dict(sorted(hosts.items())),
        "workers": dict(sorted(workers.items())),
        "error_count": wrong + missing,
        "errors": errors,
    }


# --- CLI --------------------------------------------------------------------------------------------------

def register(subparsers) -> None:
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--redis-host", dest="redis_host", metavar="HOST", help="Redis address (broker and results)")
    conn.add_argument("--redis-port", dest="redis_port", type=int, metavar="PORT")
    conn.add_argument("--redis-db", dest="redis_db", type=int, metavar="DB")

    parser = subparsers.add_parser("celery", help="Celery GCD/LCM worker and clients (Redis broker)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="celery_command", required=True, metavar="ACTION")

    p = sub.add_parser("worker", parents=[conn], help="run a worker in the foreground")
    p.add_argument("--concurrency", "-c", dest="celery_concurrency", type=int, metavar="N",
                   help="worker processes (default: setting celery_concurrency)")
    p.add_argument("--name", default="worker",
                   help="node name before '@' (default: worker); the part after '@' is always this host's name")
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser("submit", parents=[conn], help="run one task and print its result and who ran it")
    p.add_argument("op", choices=["gcd", "lcm", "sleep"])
    p.add_argument("numbers", nargs="+", metavar="N", help="A B for gcd and lcm, SECONDS for sleep")
    p.add_argument("--timeout", dest="celery_timeout", type=float, metavar="S",
                   help="seconds to wait for the result (default: setting celery_timeout)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser("batch", parents=[conn], help="run many gcd tasks per mode, check them, measure tasks/s")
    p.add_argument("--count", type=int, default=1000, metavar="N",
                   help=f"tasks per mode, 1..{MAX_COUNT} (default 1000)")
    p.add_argument("--mode", choices=[*MODES, "all"], default="all", help="default: all")
    p.add_argument("--chunk-size", type=int, default=100, metavar="N", help="pairs per chunk task (default 100)")
    p.add_argument("--seed", type=int, default=1, help="random seed for the pairs (default 1)")
    p.add_argument("--timeout", dest="celery_timeout", type=float, metavar="S",
                   help="seconds to wait for one result (default: setting celery_timeout)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_batch)


def _cmd_worker(args, settings: Settings) -> int:
    return run_worker(settings, name=args.name)


def _cmd_submit(args, settings: Settings) -> int:
    task_args = parse_args_for(args.op, args.numbers)
    value = submit(settings, args.op, *task_args)
    if args.json:
        output.as_json(value)
    else:
        output.table(
            [[value["task"], ", ".join(str(x) for x in value["args"]), value["result"], value["host"],
              value["worker"]]],
            ["task", "args", "result", "host", "worker"],
        )
    return 0


def _counts(counter: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counter.items()) or "-"


def _cmd_batch(args, settings: Settings) -> int:
    report = batch(settings, count=args.count, modes=batch_modes(args.mode), chunk_size=args.chunk_size, seed=args.seed)
    if args.json:
        output.as_json(report)
    else:
        rows = [
            [mode, r["tasks"], f"{r['seconds']:.3f}", r["tasks_per_s"], _counts(r["hosts"]),
             _counts(r["workers"]), r["error_count"]]
            for mode, r in report["modes"].items()
        ]
        output.table(rows, ["mode", "tasks", "seconds", "tasks/s", "hosts", "workers", "errors"])
        for r in report["modes"].values():
            for line in r["errors"]:
                print(f"error: {line}")
    return 1 if any(r["error_count"] for r in report["modes"].values()) else 0
