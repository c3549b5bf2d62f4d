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
ring hop, a math request) ask `room(log)` first and skip the call when the line would not be written; a line
skipped so is counted as left out, exactly as if the cap had dropped it.
"""

from __future__ import annotations

import logging
import sys
import time

FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
WINDOW = 1.0  # seconds
_installed: CappedHandler | None = None  # the handler configure() gave this program (room() asks it)


class CappedHandler(logging.StreamHandler):
    """A StreamHandler that writes at most `per_second` records below WARNING in each WINDOW (0: no cap)."""

    def __init__(self, stream=None, per_second: int = 0, clock=time.monotonic):
        super().__init__(stream)
        self.per_second, self.clock = per_second, clock
        self.window_start: float | None = None
        self.written = self.left_out = 0

    def emit(self, record: logging.LogRecord) -> None:  # called with the handler's lock held
        if self.per_second > 0 and record.levelno < logging.WARNING:
            now = self.clock()
            if self.window_start is None or now - self.window_start >= WINDOW:
                self._report_left_out()
                self.window_start, self.written = now, 0
            if self.written >= self.per_second:
                self.left_out += 1
                return
            self.written += 1
        super().emit(record)

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
            super().emit(note)

    def close(self) -> None:
        self.acquire()
        try:
            self._report_left_out()
        finally:
            self.release()
        super().close()


def configure(level: str, per_second: int) -> None:
    """The root logger of a labnodes program: `level`, one line per record on stderr, capped as above."""
    global _installed
    _installed = CappedHandler(sys.stderr, per_second)
    _installed.setFormatter(logging.Formatter(FORMAT))
    logging.basicConfig(level=level, handlers=[_installed])


def room(logger: logging.Logger) -> bool:
    """Whether an INFO line from `logger` would be written now: its level lets it through and the cap has room.
    Guard a hot path's INFO call with it (`if room(log): log.info(...)`); a skipped line is counted as left out."""
    if not logger.isEnabledFor(logging.INFO):
        return False
    return _installed is None or _installed not in logging.root.handlers or not _installed.full()
