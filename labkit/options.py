"""The fab tasks' command-line values: each bad one is a single line and exit 1, never a traceback.

- `number(name, value, low, high)`: an option given as text (`--for`, `--loss`, `--timeout`) read as a number
  within bounds, or a one-line error naming the option.
- `load_yaml(text, source)`: a file the user names (a scenario, a grading file) as data, or one line saying
  where its YAML is broken (PyYAML's own message spans several lines, with a caret under the place).
- `task`: Fabric's `@task`, except that an option whose default is a whole number (`--count`, `--size`,
  `--ring`) refuses a value that is not one as invoke refuses an unknown option. Invoke casts such a value with
  int() while it parses the command line and lets int()'s ValueError escape as a traceback (invoke 2.2); here
  it becomes invoke's own ParseError, which `fab` prints as one line before any task runs. A Ctrl-C is one line
  too (`fab up: interrupted: ...`), exit 130. Fabric's own options that choose hosts or keys (`-H`, `-i`, `-S`
  before the task's name) are refused in one line (`fabric_flags_refused`): labkit's tasks take their hosts from
  an inventory, and `fab -i students/ana check` had checked the active cluster, `-i` being Fabric's --identity.
  `fab TASK --help` shows the task's help also for a task with positional arguments (invoke took `--help` for one).
"""

from __future__ import annotations

import sys

import fabric
import yaml
from invoke.exceptions import Exit, ParseError
from invoke import parser

from labkit import LabkitError
from labnodes import output


def number(
    name: str,
    value,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    error: type[LabkitError] = LabkitError,
) -> float | None:
    """`value` (text from the command line, or None: not given) as a float in [low, high] ((low, high] with
    low_open); raises `error` naming the option otherwise. Not a number, nan and inf are refused."""
    if value is None or value == "":
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise error(f"{name} {value!r} is not a number") from None
    if not (low < x if low_open else low <= x) or x > high:
        raise error(
            f"{name} {value!r}: must be {'above' if low_open else 'at least'} {low:g} and at most {high:g}"
        )
    return x


def read_yaml(path, source: str, *, error: type[LabkitError] = LabkitError):
    """load_yaml of the file at `path`; a file that cannot be read, or is not UTF-8 text (a binary file given by
    mistake), is one line too: "SOURCE: No such file or directory", "SOURCE: not UTF-8 text (byte 24)"."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise error(f"{source}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{source}: not UTF-8 text (byte {exc.start})") from None
    return load_yaml(text, source, error=error)


def yaml_place(exc: yaml.YAMLError) -> str:
    """Where PyYAML stopped, as "line L, column C" (1-based), or "" when it does not say."""
    mark = getattr(exc, "problem_mark", None)
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""


def load_yaml(text: str, source: str, *, error: type[LabkitError] = LabkitError):
    """safe_load of `text`; raises `error` as "SOURCE: not valid YAML at line L, column C: what is wrong"."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = f" at {yaml_place(exc)}" if yaml_place(exc) else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error(f"{source}: not valid YAML{where}: {what}") from None


class Argument(parser.Argument):
    def __repr__(self) -> str:  # in invoke's messages: "Flag --numbers needed value", not "<Argument: ...>"
        return "--" + self.name.strip("_").replace("_", "-")

    task = ""  # the task's name on the command line (Task.get_arguments sets it)

    def set_value(self, value, cast: bool = True) -> None:
        if self.positional and value in ("-h", "--help") and self.task:
            # invoke fills a task's positional arguments first, so `fab scenario --help` tried to play a file named
            # "--help", and `fab partition --help` said a positional argument was missing: the task's help instead
            from fabric.main import program  # the running `fab`

            program.print_task_help(self.task)
            raise Exit(code=0)
        try:
            super().set_value(value, cast)
        except ValueError:
            raise ParseError(f"fab: error: --{self.name} takes a whole number, got {value!r}") from None


def fabric_flags_refused(ctx, task: str) -> str | None:
    """Why `task` must not run with the context Fabric built from its own command-line options, or None.

    Fabric's -H runs a task once per host given, with a Connection to it; -i (an SSH key) and -S (an ssh_config
    file) go into the configuration's overrides. Labkit's tasks use none of them (each reaches the hosts of its
    cluster's inventory with the cluster's key), so each task ran on the active cluster as if they were not there."""
    if ctx is None:
        return None
    keys = getattr(ctx.config, "_overrides", {}).get("connect_kwargs", {}).get("key_filename")
    ssh_config = getattr(ctx.config, "_runtime_ssh_path", None)
    if isinstance(ctx, fabric.Connection):
        return (
            f"`-H {ctx.original_host}` is Fabric's --hosts, which labkit's tasks do not use: `fab {task}` acts on "
            "the hosts of the cluster's inventory (choose it with -i INVENTORY after the task's name)"
        )
    if keys:
        return (
            f"`-i {' '.join(keys)}` before the task's name is Fabric's --identity (an SSH key), not an "
            f"inventory: write it after the task's name, `fab {task} -i {' '.join(keys)}`"
        )
    if ssh_config:
        return (
            f"`-S {ssh_config}` is Fabric's --ssh-config, which labkit's tasks do not use: they reach the hosts "
            "with the cluster's own ssh_config (.labkit/CLUSTER/ssh_config)"
        )
    return None


class Task(fabric.Task):
    """Fabric's Task with arguments that turn a failed cast into a ParseError (the module docstring says why), and
    a Ctrl-C that ends in one line saying so, and what to do next (`interrupted`), with exit status 130. Invoke
    itself exits 1 without a word, which reads as a failure nobody explained."""

    def __init__(self, *args, interrupted: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.interrupted = interrupted

    def __call__(self, *args, **kwargs):
        refused = fabric_flags_refused(args[0] if args else None, self.name.replace("_", "-"))
        if refused:
            print(f"fab: error: {refused}", file=sys.stderr)
            sys.exit(1)
        try:
            try:
                return super().__call__(*args, **kwargs)
            finally:  # here, not at exit, where a reader that went (below) is a warning and exit 120
                sys.stdout.flush()
        except KeyboardInterrupt:
            then = f": {self.interrupted}" if self.interrupted else ""
            print(f"\nfab {self.name.replace('_', '-')}: interrupted{then}", file=sys.stderr)
            sys.exit(130)
        except BrokenPipeError:  # `fab status | head -3`: the reader had what it wanted; no traceback
            status = output.reader_gone()
            if status is None:
                raise
            sys.exit(status)

    def get_arguments(self, ignore_unknown_help: bool | None = None) -> list[parser.Argument]:
        args = super().get_arguments(ignore_unknown_help)
        for arg in args:  # invoke builds them inline; the subclass only changes how a value is cast
            arg.__class__ = Argument
            arg.task = self.name.replace("_", "-")
        return args


def task(*args, **kwargs):
    """Fabric's @task (with or without options) making an options.Task; `interrupted=` says what to do after a
    Ctrl-C."""
    return fabric.task(*args, klass=Task, **kwargs)
