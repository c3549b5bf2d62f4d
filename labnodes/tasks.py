"""The lab's Celery tasks: tiny pure functions that run on the worker hosts and say where they ran.

Tasks (registered under these names with every labnodes Celery app)
    lab.gcd(a, b)      greatest common divisor; gcd(0, 0) = 0.
    lab.lcm(a, b)      least common multiple; lcm(x, 0) = lcm(0, x) = 0.
    lab.sleep(seconds) sleeps, then returns; a stand-in for a long job, to watch tasks spread over workers and
                       a task come back after its worker was killed (acks late).

Arguments
    a, b: JSON integers, 0 <= n < 10**30: the one rule of `labnodes.numbers`, with its messages (the ring and the
    math server use the same). Booleans, floats (even 4.0), strings and None are refused: no silent
    conversions. seconds: a JSON number (int or float, not a boolean), 0 <= seconds <= 60; the cap stays below
    the broker's visibility timeout, so a task still running is never handed to a second worker.

Result (a JSON object)
    {"task": "gcd", "args": [48, 18], "result": 6, "host": "w1", "worker": "worker@w1", "redelivered": false}
    host: the worker host's hostname; worker: the Celery node name of the worker that ran the task (null when the
    function is called directly, outside a worker); redelivered: true when the broker handed this task out again
    after an earlier worker lost it.

Errors
    Bad numbers fail the task at once (no retry) with labnodes.numbers.NumbersError (a ValueError) and the rule's
    message, e.g. "numbers must be integers, got float", "negative numbers are not allowed" or "numbers must
    be less than 10**30"; a bad sleep time with TypeError (wrong type) or ValueError (out of range), e.g.
    "sleep: seconds must be between 0 and 60, got 61". The client re-raises it and `labnodes celery submit`
    prints it. Clients check
    the same rules before sending (`check_operands`, `check_seconds`), so a bad argument normally never leaves
    the client.
"""

from __future__ import annotations

import logging
import math
import socket
import time

from celery import shared_task

from labnodes import numbers

log = logging.getLogger(__name__)

MAX_OPERAND = numbers.LIMIT  # operands are < this (the one rule: labnodes.numbers)
MAX_SLEEP = 60.0  # seconds; must stay below celery_visibility_timeout
OPERATIONS = {"gcd": math.gcd, "lcm": math.lcm}


def check_operand(op: str, name: str, value) -> int:
    """Return `value` if it is a valid number (labnodes.numbers: an int, 0 <= value < 10**30), else raise
    NumbersError (a ValueError) with the rule's message. `op` and `name` are kept for callers' logs."""
    return numbers.check_number(value)


def check_operands(op: str, a, b) -> tuple[int, int]:
    """Check both operands of gcd/lcm (see check_operand); `op` must be one of OPERATIONS."""
    if op not in OPERATIONS:
        raise ValueError(f"unknown operation {op!r}: choose one of {', '.join(OPERATIONS)}")
    return numbers.check_pair(a, b)


def check_seconds(seconds) -> float:
    """Return `seconds` as a float if it is a number with 0 <= seconds <= 60, else raise TypeError/ValueError."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"sleep: seconds must be a number, got {type(seconds).__name__} {seconds!r:.40}")
    if not 0 <= seconds <= MAX_SLEEP:  # also refuses NaN
        raise ValueError(f"sleep: seconds must be between 0 and {MAX_SLEEP:g}, got {seconds}")
    return float(seconds)


def _task_id(task) -> str | None:
    running = task.app.current_worker_task  # for a chunk: the celery.starmap task that calls this one
    return running.request.id if running is not None else None


def _result(task, name: str, args: list, result) -> dict:
    # current_worker_task is the task the worker is executing: this one, or the celery.starmap task of a chunk
    # that calls this one as a plain function. None when called directly outside a worker.
    running = task.app.current_worker_task
    request = running.request if running is not None else None
    delivery = (request.delivery_info or {}) if request is not None else {}
    return {
        "task": name,
        "args": args,
        "result": result,
        "host": socket.gethostname(),
        "worker": request.hostname if request is not None else None,
        "redelivered": bool(delivery.get("redelivered")),
    }


@shared_task(bind=True, name="lab.gcd")
def gcd(self, a, b) -> dict:
    """Greatest common divisor of a and b (gcd(0, 0) = 0)."""
    a, b = check_operands("gcd", a, b)
    result = math.gcd(a, b)
    log.info("task %s: gcd(%d, %d) = %d", _task_id(self), a, b, result)
    return _result(self, "gcd", [a, b], result)


@shared_task(bind=True, name="lab.lcm")
def lcm(self, a, b) -> dict:
    """Least common multiple of a and b (lcm(x, 0) = 0)."""
    a, b = check_operands("lcm", a, b)
    result = math.lcm(a, b)
    log.info("task %s: lcm(%d, %d) = %d", _task_id(self), a, b, result)
    return _result(self, "lcm", [a, b], result)


@shared_task(bind=True, name="lab.sleep")
def sleep(self, seconds) -> dict:
    """Sleep `seconds` (0..60), then return how long it slept."""
    seconds = check_seconds(seconds)
    log.info("task %s: sleep(%g) started", _task_id(self), seconds)
    time.sleep(seconds)
    log.info("task %s: sleep(%g) done", _task_id(self), seconds)
    return _result(self, "sleep", [seconds], seconds)
