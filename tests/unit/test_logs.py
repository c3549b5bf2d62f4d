"""labnodes.logs: INFO lines capped at log_rate a second, the rest counted and reported; warnings always written."""

import io
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labnodes import config, logs


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def capped(per_second):
    stream, clock = io.StringIO(), Clock()
    handler = logs.CappedHandler(stream, per_second, clock=clock)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger(f"test.logs.{id(handler)}")
    log.propagate, log.level = False, logging.DEBUG
    log.addHandler(handler)
    return log, handler, stream, clock


def lines(stream):
    return stream.getvalue().splitlines()


def test_at_most_log_rate_info_lines_are_written_in_one_second():
    log, _, stream, clock = capped(3)
    for i in range(10):
        log.info("hop %d", i)
        clock.now += 0.05  # ten lines within half a second
    assert lines(stream) == ["INFO hop 0", "INFO hop 1", "INFO hop 2"]


def test_the_first_line_after_the_window_says_how_many_were_left_out():
    log, _, stream, clock = capped(2)
    for i in range(5):
        log.info("request %d", i)
    clock.now += 1.0
    log.info("request 5")
    assert lines(stream) == [
        "INFO request 0",
        "INFO request 1",
        "INFO (3 earlier info lines were not written: more than log_rate=2 a second)",
        "INFO request 5",
    ]


def test_warnings_and_errors_are_always_written_and_not_counted():
    log, _, stream, _ = capped(1)
    log.info("first")
    log.warning("hop failed")
    log.error("worse")
    log.info("left out")
    log.debug("left out too")
    assert lines(stream) == ["INFO first", "WARNING hop failed", "ERROR worse"]


def test_lines_left_out_at_exit_are_reported_when_the_handler_closes():
    log, handler, stream, _ = capped(1)
    log.info("kept")
    log.info("left out")
    handler.close()
    assert lines(stream)[-1] == "INFO (1 earlier info lines were not written: more than log_rate=1 a second)"


def test_log_rate_zero_writes_every_line():
    log, _, stream, _ = capped(0)
    for i in range(1000):
        log.info("line %d", i)
    assert len(lines(stream)) == 1000


def test_a_steady_rate_under_the_cap_is_written_whole():
    log, _, stream, clock = capped(100)
    for i in range(500):  # 50 lines a second for 10 s
        log.info("line %d", i)
        clock.now += 0.02
    assert len(lines(stream)) == 500


@pytest.mark.parametrize("value", ["-1", "lots"])
def test_log_rate_that_is_not_a_count_is_a_config_error(value):
    with pytest.raises(config.ConfigError, match="log_rate"):
        config.load(env={"LABNODES_LOG_RATE": value})


@pytest.fixture
def installed(monkeypatch):
    """configure()'s handler on the root logger, capped at 2 lines a second, on a fake clock; put back after."""
    clock, stream = Clock(), io.StringIO()
    handler = logs.CappedHandler(stream, 2, clock=clock)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    monkeypatch.setattr(logs, "_installed", handler)
    monkeypatch.setattr(logging.root, "handlers", [handler])
    level = logging.root.level
    logging.root.setLevel(
        logging.INFO
    )  # setLevel, not the attribute: loggers cache what their level lets through
    yield logging.getLogger("test.logs.room"), handler, stream, clock
    logging.root.setLevel(level)


def test_room_says_no_once_the_cap_is_reached_and_counts_the_skipped_line_as_left_out(installed):
    log, handler, stream, clock = installed
    answers = []
    for i in range(5):  # the hot-path pattern: ask first, log only if there is room
        answers.append(logs.room(log))
        if answers[-1]:
            log.info("hop %d", i)
    assert answers == [True, True, False, False, False]
    clock.now += 1.0
    assert logs.room(log)
    log.info("hop 5")
    assert lines(stream) == [
        "INFO hop 0",
        "INFO hop 1",
        "INFO (3 earlier info lines were not written: more than log_rate=2 a second)",
        "INFO hop 5",
    ]


def test_room_says_no_below_the_loggers_level_and_counts_nothing(installed):
    log, handler, stream, clock = installed
    logging.root.setLevel(logging.WARNING)
    assert not logs.room(log)
    assert handler.left_out == 0


def test_room_says_yes_without_a_capped_handler_on_the_root_logger(installed, monkeypatch):
    log, handler, *_ = installed
    for _ in range(3):
        log.info("fills the cap")
    monkeypatch.setattr(logging.root, "handlers", [])  # another test's or tool's logging, not configure()'s
    assert logs.room(log)


# --- written from a writer thread, after a delay (configure()'s way) --------------------------------------------

LATER = (
    3600.0  # a delay no test waits for: what these tests see is written by flush, a warning, close or exit
)


def queued(per_second=0, stream=None):
    stream = stream if stream is not None else io.StringIO()
    handler = logs.CappedHandler(stream, per_second, delay=LATER)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger(f"test.logs.queued.{id(handler)}")
    log.propagate, log.level = False, logging.DEBUG
    log.addHandler(handler)
    return log, handler, stream


def wait_for(predicate, what: str, guard: float = 30.0):
    """Poll until predicate() holds; `guard` only stops a hang, it is not a time limit under test."""
    deadline = time.monotonic() + guard
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_queued_lines_are_written_in_order_when_flushed_and_not_by_the_logging_call():
    log, handler, stream = queued()
    for i in range(5):
        log.info("hop %d", i)
    assert lines(stream) == []  # the calls only queued their records
    handler.flush()
    assert lines(stream) == [f"INFO hop {i}" for i in range(5)]


def test_a_queued_line_shows_its_values_as_they_were_when_it_was_logged():
    log, handler, stream = queued()
    numbers = [55, 34]
    log.info("numbers %s", numbers)
    numbers[:] = [0, 0]
    handler.flush()
    assert lines(stream) == ["INFO numbers [55, 34]"]


def test_a_warning_is_written_at_once_after_the_lines_queued_before_it():
    log, _, stream = queued()
    log.info("arrived")
    log.warning("hop failed")
    wait_for(lambda: len(lines(stream)) == 2, "the writer wrote the warning without waiting for its delay")
    assert lines(stream) == ["INFO arrived", "WARNING hop failed"]


def test_close_writes_the_queue_and_then_how_many_lines_were_left_out():
    log, handler, stream = queued(per_second=1)
    log.info("kept")
    log.info("left out")
    handler.close()
    assert lines(stream) == [
        "INFO kept",
        "INFO (1 earlier info lines were not written: more than log_rate=1 a second)",
    ]


def run_program(program: str) -> subprocess.CompletedProcess:
    """`program` in a Python process of its own (configure() changes the logging module for the whole process)."""
    return subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(logs.__file__).parent.parent,
    )


def test_a_program_that_exits_writes_every_queued_line():
    program = (
        "import logging; from labnodes import logs\n"
        "logs.configure('INFO', 0, delay=3600)\n"
        "for i in range(3): logging.getLogger('x').info('line %d', i)\n"
    )
    proc = run_program(program)
    assert proc.returncode == 0, proc.stderr
    assert [line.split(" INFO ")[-1] for line in proc.stderr.splitlines()] == ["line 0", "line 1", "line 2"]


def test_a_configured_program_records_no_caller_thread_or_process_and_still_writes_whole_lines():
    program = (
        "import logging; from labnodes import logs\n"
        "logs.configure('INFO', 0)\n"
        "seen = []; spy = logging.Handler(); spy.emit = seen.append; logging.root.addHandler(spy)\n"
        "logging.getLogger('x').info('line %d', 1)\n"
        "r = seen[0]; print(r.lineno, r.threadName, r.process, r.processName)\n"
    )
    proc = run_program(program)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0", "None", "None", "MainProcess"]
    assert proc.stderr.strip().endswith(" x INFO line 1")


def test_the_format_prints_nothing_that_configure_stops_recording():
    printed = set(re.findall(r"%\((\w+)\)", logs.FORMAT))
    assert printed == {"asctime", "name", "levelname", "message"}
    assert not printed & set(logs.NOT_RECORDED)


def test_a_forked_child_writes_its_own_lines_and_not_its_parents(tmp_path):
    out = open(tmp_path / "log", "a", buffering=1)
    log, handler, _ = queued(stream=out)
    log.info("parent, before the fork")
    pid = os.fork()
    if pid == 0:  # the child: its copy of the parent's queue is not its to write
        try:
            log.info("child")
            handler.flush()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    handler.flush()
    out.close()
    assert sorted((tmp_path / "log").read_text().splitlines()) == [
        "INFO child",
        "INFO parent, before the fork",
    ]


# --- a hot path's INFO line (info()) and the Formatter ----------------------------------------------------------


@pytest.fixture
def hot(monkeypatch):
    """configure()'s way on the root logger, without its thread ever writing by itself: a writer that waits LATER,
    labnodes' Formatter, capped at 2 lines a second on a fake clock; put back after. The root logger has only this
    handler from the moment the fixture is used in the test's body: pytest adds its own when the test starts."""
    clock, stream = Clock(), io.StringIO()
    handler = logs.CappedHandler(stream, 2, clock=clock, delay=LATER)
    handler.setFormatter(logs.Formatter())
    monkeypatch.setattr(logs, "_installed", handler)
    level = logging.root.level
    logging.root.setLevel(logging.INFO)

    def alone():
        monkeypatch.setattr(logging.root, "handlers", [handler])
        return logging.getLogger("test.logs.hot"), handler, stream, clock

    yield alone
    logging.root.setLevel(level)


HOP = "%s: message %s lap %d hop %d from %s, numbers %s -> %s, on to %s (timeout %.2f s)"
HOP_ARGS = ("pyro2", "abcdef12", 2, 2, "pyro1", [55, 34], [34, 21], "pyro3", 4.5)


def test_a_hot_line_is_queued_without_a_record_and_written_as_logging_writes_that_record(hot, monkeypatch):
    log, handler, stream, _ = hot()
    # the same moment for the line and the record
    monkeypatch.setattr(time, "time", lambda: 1796029305.6046426)
    logs.info(log, HOP, *HOP_ARGS)
    assert [type(x) for x in handler.queue] == [tuple]  # no LogRecord was made in the logging thread
    handler.flush()
    reference = io.StringIO()
    plain = logging.StreamHandler(reference)
    plain.setFormatter(logging.Formatter(logs.FORMAT))  # the logging module's own Formatter
    plain.handle(log.makeRecord(log.name, logging.INFO, "", 0, HOP, HOP_ARGS, None))
    assert lines(stream) == lines(reference)
    assert lines(stream)[0].startswith(time.strftime("%Y-%m-%d %H:%M:%S,604 ", time.localtime(1796029305)))


def test_hot_lines_count_against_the_cap_before_their_message_is_made(hot):
    log, handler, stream, clock = hot()
    numbers = [55, 34]
    for i in range(5):
        logs.info(log, "hop %d numbers %s", i, numbers)
    numbers[:] = [0, 0]  # a queued line keeps the values it was logged with
    clock.now += 1.0
    logs.info(log, "hop %d", 5)
    handler.flush()
    assert [line.split(" INFO ")[-1] for line in lines(stream)] == [
        "hop 0 numbers [55, 34]",
        "hop 1 numbers [55, 34]",
        "(3 earlier info lines were not written: more than log_rate=2 a second)",
        "hop 5",
    ]


def test_a_hot_line_below_the_loggers_level_is_neither_written_nor_counted(hot):
    log, handler, stream, _ = hot()
    logging.root.setLevel(logging.WARNING)
    logs.info(log, "hop %d", 1)
    handler.flush()
    assert lines(stream) == [] and handler.left_out == 0 and handler.written == 0


def test_a_hot_line_goes_through_logging_when_another_handler_listens(hot, caplog):
    log, handler, stream, _ = hot()
    logging.root.addHandler(caplog.handler)  # say, a course's own handler beside configure()'s
    logs.info(log, "hop %d", 7)  # it sees a record, and ours writes the line
    handler.flush()
    assert [r.getMessage() for r in caplog.records] == ["hop 7"]
    assert lines(stream)[-1].endswith(" test.logs.hot INFO hop 7")


def test_a_hot_line_with_bad_arguments_is_reported_as_logging_reports_it_and_never_raises(hot, capsys):
    log, handler, stream, _ = hot()
    logs.info(log, "hop %d from %s", "not a number")  # a programming error must not fail the hop itself
    logs.info(log, "hop %d", 2)
    handler.flush()
    assert "--- Logging error ---" in capsys.readouterr().err
    assert [line.split(" INFO ")[-1] for line in lines(stream)] == ["hop 2"]


def test_the_formatter_writes_the_time_as_logging_does_across_seconds():
    mine, theirs = logs.Formatter(), logging.Formatter(logs.FORMAT)
    for created in (1796029305.0004, 1796029305.9996, 1796029306.5, 1796029305.25, 1796029399.001):
        record = logging.LogRecord("x", logging.INFO, "", 0, "m", None, None)
        record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0
        assert mine.format(record) == theirs.format(record)
