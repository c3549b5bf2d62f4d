"""Run commands as children of a process that reaps every orphan below it (a child subreaper).

    python3 scripts/reaper.py CMD [ARGS...] [-- CMD [ARGS...]] ...

Where PID 1 does not reap (containers without an init), daemons that double-fork leave zombies; this process
adopts them (prctl PR_SET_CHILD_SUBREAPER) and reaps them. It exits when every command it started has exited.
"""

import ctypes
import os
import subprocess
import sys

PR_SET_CHILD_SUBREAPER = 36


def main(argv: list[str]) -> int:
    commands, current = [], []
    for arg in argv:
        if arg == "--":
            commands.append(current)
            current = []
        else:
            current.append(arg)
    commands.append(current)
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print("reaper: prctl(PR_SET_CHILD_SUBREAPER) failed", file=sys.stderr)
        return 1
    started = {subprocess.Popen(cmd).pid for cmd in commands if cmd}
    while started:
        try:
            pid, _ = os.wait()
        except ChildProcessError:
            break
        started.discard(pid)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
