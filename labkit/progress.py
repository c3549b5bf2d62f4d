"""How far long work is (hosts ready, hosts provisioned): a bar on a terminal, plain lines in a log.

    with Progress("hosts ready", total=100) as p:
        p.update(37)                      # absolute count
        p.update(38, "labnodes")          # with a short detail

On a terminal this is a tqdm bar; anywhere else (a log, CI, a pipe) it prints one plain line each time another
tenth of the work is done, and a last line when it ends, e.g. `hosts ready: 50/100`. With `patience` seconds,
plain mode prints only the last line unless the work takes longer than that (quick steps stay one line each).
"""

from __future__ import annotations

import os
import sys
import threading
import time

from tqdm import tqdm


def _terminal(stream) -> bool:
    """A terminal that can show a bar (a pseudo-terminal without a size, as under `script`, cannot)."""
    try:
        return stream.isatty() and os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, OSError, ValueError):
        return False


class Progress:
    def __init__(self, phase: str, total: int, stream=None, tty: bool | None = None, patience: float = 0.0):
        self.phase, self.total = phase, max(0, total)
        self.patience_until = time.monotonic() + patience
        self.stream = stream or sys.stdout
        self.tty = _terminal(self.stream) if tty is None else tty
        self.done = 0
        self._shown = 0  # last tenth printed (plain mode)
        self._lock = threading.Lock()
        self._bar = (tqdm(total=self.total, desc=phase, unit="host", file=self.stream, leave=True,
                          dynamic_ncols=True, bar_format="{desc}: {bar} {n_fmt}/{total_fmt} {postfix}")
                     if self.tty else None)

    def update(self, done: int, detail: str = "") -> None:
        with self._lock:
            done = min(max(done, 0), self.total)
            if self._bar is not None:
                self._bar.update(done - self.done)
                if detail:
                    self._bar.set_postfix_str(detail, refresh=True)
            else:
                tenth = (10 * done) // self.total if self.total else 10
                final = done == self.total and self._shown < 10
                if final or (tenth > self._shown and done > self.done and time.monotonic() >= self.patience_until):
                    self._shown = tenth
                    print(f"{self.phase}: {done}/{self.total}" + (f" ({detail})" if detail else ""),
                          file=self.stream, flush=True)
            self.done = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
