"""Ansible action `labkit_wheelhouse`: ensure the wheelhouse holds the current labnodes and its dependencies.

It runs files/build_wheelhouse.py's main() inside Ansible's worker process on the control machine, and returns its
result: changed, archive, sha256, rebuilt. Arguments: repo (the labkit repository), wheelhouse (the directory).

Why an action and not `command: python build_wheelhouse.py`: the command module on localhost starts two Python
processes (the module's own, then the script's) for what is, on a run with nothing to change, a few milliseconds
of hashing. A re-provision with nothing to change spent 0.45 s on that task; the action takes about 0.1 s.
The script runs in the same interpreter as before (the control venv's: Ansible's own, ansible_playbook_python).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ansible.plugins.action import ActionBase

BUILDER = Path(__file__).resolve().parent.parent / "files" / "build_wheelhouse.py"


def _builder():
    spec = importlib.util.spec_from_file_location("labkit_build_wheelhouse", BUILDER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _VALID_ARGS = frozenset(("repo", "wheelhouse"))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        missing = [name for name in sorted(self._VALID_ARGS) if not args.get(name)]
        if missing:
            return dict(result, failed=True, msg=f"labkit_wheelhouse needs {' and '.join(missing)}")
        try:
            built = _builder().main([str(args["repo"]), str(args["wheelhouse"])])
        # SystemExit is build_wheelhouse's way of saying what failed (a pip step, a missing wheel)
        except SystemExit as exc:
            return dict(result, failed=True, msg=str(exc))
        except OSError as exc:  # a repository or wheelhouse that is not there or not writable
            return dict(result, failed=True, msg=f"labkit_wheelhouse: {exc}")
        return dict(result, **built)
