"""The `labnodes` command: one CLI for every host; each program module adds its own subcommands.

`labnodes --tethered COMMAND ...` stops as on a Ctrl-C (KeyboardInterrupt: temporary files removed, exit
status 130) when its standard input reaches its end. labkit runs every labnodes command over SSH that way: SSH
gives a command without a terminal no signal when the session ends, only the end of its standard input, so
without the tether a fab task interrupted or killed on the control machine left its command running on the
host (a `celery batch` went on submitting jobs; one of a hundred million pairs held 13 GB before it sent any).

A command given `--json` that fails prints, besides its error line on stderr, `{"error": {"message": ...,
"code": ..., "address": ...}}` on stdout (exit 1; 2 for bad settings): `code` is the kind of failure
(LabnodesError), for programs such as labkit's checks to act on without reading the message.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

from labnodes import LabnodesError, __version__, config, logs, output

# Each module has register(subparsers): it adds its subcommands and sets `func(args, settings) -> int`.
# Flags whose dest is a Settings field (e.g. dest="math_port") override the config file and environment.
PROGRAMS = ["labnodes.celery_cli", "labnodes.ring", "labnodes.mathserver", "labnodes.filexfer", "labnodes.selftest"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labnodes", description=__doc__)
    parser.add_argument("--version", action="version", version=f"labnodes {__version__}")
    parser.add_argument("--config", metavar="PATH", help="config file (default: $LABNODES_CONFIG or /etc/labnodes/labnodes.toml)")
    parser.add_argument("--log-level", dest="log_level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--tethered", action="store_true",
                        help="stop as on Ctrl-C when standard input ends (how labkit runs commands over SSH)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in PROGRAMS:
        importlib.import_module(name).register(sub)
    return parser


TETHER_GRACE = 10.0  # s a tethered command has to clean up after its interrupt before it is ended outright


def tether(stdin_fd: int = 0, grace: float = TETHER_GRACE) -> threading.Thread:
    """Interrupt the main thread (KeyboardInterrupt) once stdin_fd reaches its end, or fails; end the process
    with status 130 if it is still running `grace` seconds later (a clean-up that hangs). Whatever arrives on
    stdin_fd before its end is read and dropped."""
    main_thread = threading.main_thread().ident
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even where the parent left SIGINT ignored

    def watch() -> None:
        try:
            while os.read(stdin_fd, 65536):
                pass
        except OSError:
            pass
        signal.pthread_kill(main_thread, signal.SIGINT)  # to the main thread: its blocking call returns EINTR
        threading.Event().wait(grace)
        os._exit(130)

    thread = threading.Thread(target=watch, name="tether", daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.tethered:
        tether()
    try:
        settings = config.load(args.config, overrides=vars(args))
    except LabnodesError as exc:
        if args.command == "selftest":  # broken settings are what selftest reports (host.settings), not a stop
            return args.func(args, None)
        return fail(args, exc, 2)
    logs.configure(settings.log_level, settings.log_rate)
    try:
        try:
            return args.func(args, settings)
        finally:  # here, not at exit, where a reader that went (below) is a warning and exit 120
            sys.stdout.flush()
    except LabnodesError as exc:
        return fail(args, exc, 1)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `labnodes ... | head -3`: the reader had what it wanted; no traceback
        status = output.reader_gone()
        if status is None:
            raise
        return status


def fail(args: argparse.Namespace, exc: LabnodesError, status: int) -> int:
    """The error's one line on stderr; with `--json`, also on stdout as {"error": {"message", "code", "address"}}
    (see LabnodesError: a program tells failures apart by their code, never by their wording)."""
    if getattr(args, "json", False):
        output.as_json({"error": {"message": str(exc), "code": exc.code, "address": exc.address}})
    print(f"labnodes: error: {exc}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
