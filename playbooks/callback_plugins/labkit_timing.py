"""Ansible callback: wall-clock time per role and per play, printed after the recap.

Enabled in ansible.cfg (`callbacks_enabled = labkit_timing`). With the linear strategy every task runs on all its
hosts before the next starts, so the time from one task's start to the next task's start is that task's wall
clock; it is added to the task's role, or for tasks outside roles to the play's `labkit_timing_label` variable
(default "<play name>: tasks"). The five slowest tasks follow. When the environment variable LABKIT_TIMING_FILE is set, the same numbers are written there as
JSON: {"total": s, "plays": {name: s}, "roles": {name: s}, "tasks": {name: s}} (labkit.provision reads it).
"""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: labkit_timing
    type: aggregate
    short_description: wall-clock time per role and per play
    description:
      - Prints the time spent in each role and each play at the end of a playbook run.
      - Writes the same numbers as JSON to the file named by LABKIT_TIMING_FILE, when set.
    requirements:
      - enable in ansible.cfg (callbacks_enabled)
"""


def _role_name(task) -> str | None:
    """The role a task counts for: a task file that one role includes from another (include_role with
    tasks_from, e.g. common's supervise.yml) counts for the including role, so each service is timed whole."""
    parent = getattr(task, "_parent", None)
    while parent is not None:
        if type(parent).__name__ == "IncludeRole":
            including = getattr(parent, "_parent_role", None)
            if including is not None:
                return including.get_name()
            break
        parent = getattr(parent, "_parent", None)
    role = getattr(task, "_role", None)
    return role.get_name() if role else None


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "labkit_timing"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self._start = time.monotonic()
        self._play = None
        self._label = None  # where the play's tasks outside roles count
        self._current = None  # (play, role, task) of the running task
        self._since = self._start
        self.plays: dict[str, float] = {}
        self.roles: dict[str, float] = {}
        self.tasks: dict[str, float] = {}

    def _close(self) -> None:
        now = time.monotonic()
        if self._current is not None:
            for table, key in zip((self.plays, self.roles, self.tasks), self._current):
                table[key] = table.get(key, 0.0) + now - self._since
        self._current, self._since = None, now

    def _open(self, task) -> None:
        self._close()
        role = _role_name(task) or self._label
        name = task.get_name().strip()
        self._current = (self._play, role, name)

    def v2_playbook_on_play_start(self, play):
        self._close()
        self._play = play.get_name().strip() or "play"
        self._label = str((play.vars or {}).get("labkit_timing_label") or f"{self._play}: tasks")

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._open(task)

    def v2_playbook_on_handler_task_start(self, task):
        self._open(task)

    def v2_playbook_on_stats(self, stats):
        self._close()
        total = time.monotonic() - self._start
        self._display.banner("LABKIT TIMING (wall clock)")
        for name, seconds in self.roles.items():
            self._display.display(f"  role  {name:<40} {seconds:7.2f} s")
        for name, seconds in self.plays.items():
            self._display.display(f"  play  {name:<40} {seconds:7.2f} s")
        self._display.display(f"  total {'':<40} {total:7.2f} s")
        for name, seconds in sorted(self.tasks.items(), key=lambda kv: -kv[1])[:5]:
            self._display.display(f"  task  {name[:70]:<70} {seconds:7.2f} s")
        path = os.environ.get("LABKIT_TIMING_FILE")
        if path:
            with open(path, "w") as fh:
                json.dump({"total": round(total, 3), "plays": {k: round(v, 3) for k, v in self.plays.items()},
                           "roles": {k: round(v, 3) for k, v in self.roles.items()},
                           "tasks": {k: round(v, 3) for k, v in self.tasks.items()}}, fh, indent=1)
