"""Logging for every labnodes program: one line per record on stderr (supervisord keeps it in the program's log
file), and at most `log_rate` INFO lines a second.

Why a cap: the ring logs one INFO line per hop and the math server one per request, so that a student sees each
message arrive on each host. Under load that is thousands of lines a second: every line wakes the host's
supervisord, which copies it to the log file on the same cores the servers need (the math server answered half
as many requests a second at 1000 clients with its lines as without them; bench_cross measures both), and a
10 MB log rotates away its history in seconds.

With the cap, a program writes at most `log_rate` DEBUG/INFO lines in any one-second window (counted from the
first line of the window); the lines over the cap are counted, not written, and the next line written after the
window (or the program's exit) is preceded by one line saying how many were left out:

    ... labnodes.logs INFO (1234 earlier info lines were not written: more than log_rate=100 a second)

WARNING and worse are always written and never counted against the cap. log_rate = 0 writes every line.

A line the cap leaves out still costs its caller a log record (about 12 us on a ring host, measured: the ring's
one INFO call per hop made a lap 0.16 x Pyro4's floor slower, most of its lines left out). So the hot paths (a
ring hop, a math request) log with `info(log, fmt, *args)`, which counts a line over the cap as left out before
anything is made for it. A line it lets through is queued as it is, (time, logger, message), without the
LogRecord and logging's dispatch, when configure()'s handler is the only one (else it goes through logging): a
written hop line costs 3.6 instead of 7.5-8.3 us of the node's CPU, writer included (and the writer's Formatter
makes the date and time once a second). On cluster rb, six interleaved pairs of ring runs at log level INFO: a lap
1.10-1.25x Pyro4's floor (median 1.19) before, 0.99-1.18x (median 1.15) after.

Lines are written a little later, in batches (configure(): WRITE_DELAY): the call that logs only queues its record,
and a writer thread formats the queue and writes it in one write, WRITE_DELAY seconds after the first record
queued (at once for a WARNING or worse), in order. Why: a ring lap runs in a few hundred microseconds, so a burst of
laps shorter than a second has nearly every hop's line written, and writing a line on the hop itself (format, write,
and supervisord woken up at the pipe's other end, on the same two cores) made a lap at log level INFO 1.38-1.56x
Pyro4's floor against 1.11-1.17x at WARNING; with the lines written this way, 1.08-1.25x. The queue is written at
exit (logging.shutdown flushes every handler) and when the handler is flushed or closed; a process killed outright
loses at most WRITE_DELAY seconds of lines. A forked child starts with an empty queue and a writer of its own.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import weakref

FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
WINDOW = 1.0  # seconds
WRITE_DELAY = 0.05  # seconds from a line's record to its write, at most (configure(); see the docstring)
_installed: CappedHandler | None = None  # the handler configure() gave this program (room() asks it)


class CappedHandler(logging.StreamHandler):
    """A StreamHandler that writes at most `per_second` records below WARNING in each WINDOW (0: no cap).

    With `delay` > 0 it writes them from a thread of its own, `delay` s after the first one waiting (see the module
    docstring); with 0, in the logging call, as a StreamHandler does."""

    def __init__(self, stream=None, per_second: int = 0, clock=time.monotonic, delay: float = 0.0):
        super().__init__(stream)
        self.per_second, self.clock, self.delay = per_second, clock, delay
        self.window_start: float | None = None
        self.written = self.left_out = 0
        self._start_writer()
        if delay > 0:
            me = weakref.ref(self)  # the hook outlives a handler that is dropped

            def in_child() -> None:
                handler = me()
                if handler is not None:
                    handler._start_writer()

            os.register_at_fork(after_in_child=in_child)

    def _start_writer(self) -> None:
        """A new queue, and (with a delay) a writer thread for it: at start, and in a forked child."""
        # records waiting for the writer, in order; under the handler lock
        self.queue: list[logging.LogRecord] = []
        self.waiting, self.urgent = threading.Event(), threading.Event()
        self.write_lock = threading.Lock()  # one batch written at a time, so batches stay in order
        if self.delay > 0:
            threading.Thread(target=self._writer, name="log writer", daemon=True).start()

    def emit(self, record: logging.LogRecord) -> None:  # called with the handler's lock held
        if self.per_second > 0 and record.levelno < logging.WARNING and not self._admit():
            return
        self._out(record)

    def _admit(self) -> bool:
        """Whether a DEBUG/INFO line is written under the cap (called with the handler's lock held, cap on): if
        so it is counted as written, if not as left out."""
        now = self.clock()
        if self.window_start is None or now - self.window_start >= WINDOW:
            self._report_left_out()
            self.window_start, self.written = now, 0
        if self.written >= self.per_second:
            self.left_out += 1
            return False
        self.written += 1
        return True

    def hot_info(self, name: str, fmt: str, args: tuple) -> None:
        """Queue an INFO line of logger `name`, `fmt % args`, if the cap lets it through (info(), with a writer)."""
        created = time.time()
        self.acquire()
        try:
            if self.per_second > 0 and not self._admit():
                return  # left out, and counted: before its message is made
            try:  # the message as the values are now; the writer formats the rest
                line = (created, name, fmt % args)
            except (TypeError, ValueError):  # the writer's Formatter reports it, as logging would
                line = logging.LogRecord(name, logging.INFO, "", 0, fmt, args, None)
            self.queue.append(line)
            if len(self.queue) == 1:
                self.waiting.set()
        finally:
            self.release()

    def _out(self, record: logging.LogRecord) -> None:
        """Write the record now (no delay), or queue it for the writer (called with the handler's lock held)."""
        if self.delay <= 0:
            super().emit(record)
            return
        # the message as the values are now: they may change before the write
        record.msg, record.args = record.getMessage(), None
        self.queue.append(record)
        if len(self.queue) == 1:  # the writer clears `waiting` when it takes the queue, under the same lock
            self.waiting.set()
        if record.levelno >= logging.WARNING:
            self.urgent.set()

    def _writer(self) -> None:
        while True:
            self.waiting.wait()
            self.urgent.wait(self.delay)  # gather what comes within the delay; a warning goes at once
            self._write_queue()

    def _write_queue(self) -> None:
        """Format and write every queued record in one write, outside the handler's lock (the hot paths' info()
        takes it), in order."""
        self.acquire()  # the handler's lock, then the write lock: logging.shutdown() flushes holding the first
        try:
            batch, self.queue = self.queue, []
            self.waiting.clear()
            self.urgent.clear()
            self.write_lock.acquire()  # taken in the order the batches were: they are written in that order
        finally:
            self.release()
        try:
            if not batch:
                return
            text = []
            for record in batch:
                if type(record) is tuple:
                    record = _HotLine(*record)
                try:
                    text.append(self.format(record) + self.terminator)
                except Exception:
                    self.handleError(record)
            try:
                self.stream.write("".join(text))
                self.stream.flush()
            except Exception:
                self.handleError(batch[-1])
        finally:
            self.write_lock.release()

    def flush(self) -> None:
        """Write what is queued, then flush the stream (logging.shutdown calls this at exit)."""
        if self.delay > 0:
            self._write_queue()
        super().flush()

    def full(self) -> bool:
        """Whether a DEBUG/INFO line logged now would be left out; if so it is counted as left out."""
        if self.per_second <= 0:
            return False
        self.acquire()
        try:
            window_open = self.window_start is not None and self.clock() - self.window_start < WINDOW
            if window_open and self.written >= self.per_second:
                self.left_out += 1
                return True
            return False
        finally:
            self.release()

    def _report_left_out(self) -> None:
        if self.left_out:
            note = logging.LogRecord(
                "labnodes.logs",
                logging.INFO,
                __file__,
                0,
                "(%d earlier info lines were not written: more than log_rate=%d a second)",
                (self.left_out, self.per_second),
                None,
            )
            self.left_out = 0
            self._out(note)

    def close(self) -> None:
        self.acquire()
        try:
            self._report_left_out()
        finally:
            self.release()
        self.flush()
        super().close()


class _HotLine:
    """An INFO line queued by info(), as the writer's Formatter sees a LogRecord: the same attributes, so the same
    text (tests/unit/test_logs.py compares the two)."""

    def __init__(self, created: float, name: str, message: str):
        self.created, self.name, self.msg, self.args = created, name, message, None
        self.msecs = int((created - int(created)) * 1000) + 0.0  # as LogRecord makes it
        self.levelname, self.levelno = "INFO", logging.INFO
        self.exc_info = self.exc_text = self.stack_info = None

    def getMessage(self) -> str:
        return self.msg


class Formatter(logging.Formatter):
    """FORMAT, with the date and time to the second made once a second: time.strftime() was half of a line's cost
    in the writer (1.5 us a line)."""

    def __init__(self):
        super().__init__(FORMAT)
        # (second, its text), replaced whole: the writer and a logging call may both format
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record, datefmt=None) -> str:
        second = int(record.created)
        made = self._second
        if made[0] != second:
            text = time.strftime(self.default_time_format, self.converter(record.created))
            made = self._second = (second, text)
        return self.default_msec_format % (made[1], record.msecs)


# What a log record need not collect in a labnodes program, because FORMAT prints none of it: the caller's file, line
# and function (a walk up the stack), the thread's name and id, the process's id. Python's logging HOWTO names these
# switches ("Optimization"). The ring's hop line then costs its caller 3.3 instead of 5.8 us, room() included; a
# ring lap logs four lines. The process's name (logMultiprocessing) stays: Celery's worker format prints it.
NOT_RECORDED = ("pathname", "filename", "module", "lineno", "funcName", "thread", "threadName", "process")


def configure(level: str, per_second: int, delay: float = WRITE_DELAY) -> None:
    """The root logger of a labnodes program: `level`, one line per record on stderr, capped and written from a
    writer thread as above; records without what FORMAT leaves out (NOT_RECORDED)."""
    global _installed
    logging._srcfile = None  # no caller: NOT_RECORDED's first five
    logging.logThreads = logging.logProcesses = False
    _installed = CappedHandler(sys.stderr, per_second, delay=delay)
    _installed.setFormatter(Formatter())
    logging.basicConfig(level=level, handlers=[_installed])


def room(logger: logging.Logger) -> bool:
    """Whether an INFO line from `logger` would be written now: its level lets it through and the cap has room.
    `if room(log): log.info(...)` skips the record of a line the cap would leave out, and counts it as left out;
    info() does this and more."""
    if not logger.isEnabledFor(logging.INFO):
        return False
    return _installed is None or _installed not in logging.root.handlers or not _installed.full()


def info(logger: logging.Logger, fmt: str, *args) -> None:
    """A hot path's INFO line (a ring hop, a math request): what `if room(logger): logger.info(fmt, *args)` writes
    and counts, at a third of the cost in the calling thread. The message is made here (its values as they are
    now); with configure()'s writer thread the only handler, the line is queued as it is, without a LogRecord and
    logging's dispatch, and the writer formats it as it would the record. Otherwise it goes through logging."""
    if not logger.isEnabledFor(logging.INFO):
        return
    handler = _installed
    if handler is not None and handler.delay > 0 and _only(handler, logger):
        handler.hot_info(logger.name, fmt, args)
    elif room(logger):
        logger.info(fmt, *args)


def _only(handler: logging.Handler, logger: logging.Logger) -> bool:
    """Whether `handler`, on the root logger, is the only one a record of `logger` meets, and no filter is in the way."""
    if logging.root.handlers != [handler] or handler.filters:
        return False
    while logger.parent is not None:
        if logger.handlers or logger.filters or not logger.propagate:
            return False
        logger = logger.parent
    return not logger.filters
