"""`labnodes --tethered`: a command stops when its standard input ends (labnodes.cli.tether), as labkit's runs over
SSH need: SSH gives a command without a terminal no signal when the session ends."""

from __future__ import annotations

import subprocess
import sys

HANG_GUARD = 30.0  # seconds; only so that a broken tether fails a test instead of hanging it

COMMAND = """{before}
import sys, time
from labnodes.cli import tether
tether(grace={grace})
try:  # "ready" inside: the interrupt can come as soon as the test reads it (outside, it ended the test -2, under load)
    print("ready", flush=True)
    time.sleep(60)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    {on_interrupt}
"""


def run_tethered(on_interrupt: str, grace: float = 10.0, before: str = "") -> tuple[int, list[str]]:
    """Start COMMAND, wait until it sleeps, close its stdin; its exit status and what it printed."""
    code = COMMAND.format(grace=grace, on_interrupt=on_interrupt, before=before)
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline() == "ready\n"
    proc.stdin.write("bytes before the end are read and dropped\n")
    proc.stdin.close()
    proc.wait(timeout=HANG_GUARD)
    return proc.returncode, proc.stdout.read().splitlines()


def test_the_end_of_stdin_interrupts_the_main_thread_in_a_blocking_call():
    assert run_tethered("sys.exit(130)") == (130, ["interrupted"])


def test_a_command_whose_clean_up_hangs_is_ended_after_the_grace():
    assert run_tethered("time.sleep(60)", grace=0.2) == (130, ["interrupted"])


def test_a_command_started_with_sigint_ignored_is_interrupted_all_the_same():
    """A shell's background job starts with SIGINT ignored, and Python then keeps it ignored."""
    before = "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN)"
    assert run_tethered("sys.exit(130)", before=before) == (130, ["interrupted"])
