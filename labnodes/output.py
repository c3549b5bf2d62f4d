"""Printing results for people (tables) and for programs (`--json`)."""

from __future__ import annotations

import json
import os
import select
import signal
import sys
from collections.abc import Iterable, Sequence


def table(rows: Iterable[Sequence], headers: Sequence[str], file=None) -> None:
    """Cells as they are: no number parsing, and leading spaces kept (a benchmark's step rows are indented under
    the row they belong to)."""
    from tabulate import tabulate  # imported on use: every labnodes command starts faster

    text = tabulate(list(rows), headers=list(headers), tablefmt="simple", disable_numparse=True,
                    preserve_whitespace=True)
    print(text, file=file or sys.stdout)


def as_json(obj, file=None) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True), file=file or sys.stdout)


def reader_gone() -> int | None:
    """After a BrokenPipeError: if it was stdout's reader that went (`fab status | head -3`), which is no failure
    of the program, point stdout at /dev/null (the interpreter's flush at exit would raise again) and return the
    exit status of a program its pipe ended, 141 (128 + SIGPIPE, as `yes | head` gives); None if stdout is fine,
    so that a broken connection elsewhere is still raised as the error it is."""
    try:
        fd = sys.stdout.fileno()
        poll = select.poll()
        poll.register(fd, select.POLLOUT)
        gone = any(events & select.POLLERR for _, events in poll.poll(0))  # a pipe whose reader closed
    except (AttributeError, OSError, ValueError):
        return None
    if not gone:
        return None
    os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
    return 128 + signal.SIGPIPE
