"""The `labnodes` command: one CLI for every host; each program module adds its own subcommands."""

from __future__ import annotations

import argparse
import importlib
import sys

from labnodes import LabnodesError, __version__, config, logs

# Each module has register(subparsers): it adds its subcommands and sets `func(args, settings) -> int`.
# Flags whose dest is a Settings field (e.g. dest="math_port") override the config file and environment.
PROGRAMS = ["labnodes.celery_cli", "labnodes.ring", "labnodes.mathserver", "labnodes.filexfer", "labnodes.selftest"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labnodes", description=__doc__)
    parser.add_argument("--version", action="version", version=f"labnodes {__version__}")
    parser.add_argument("--config", metavar="PATH", help="config file (default: $LABNODES_CONFIG or /etc/labnodes/labnodes.toml)")
    parser.add_argument("--log-level", dest="log_level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in PROGRAMS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = config.load(args.config, overrides=vars(args))
    except LabnodesError as exc:
        if args.command == "selftest":  # broken settings are what selftest reports (host.settings), not a stop
            return args.func(args, None)
        print(f"labnodes: error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_rate)
    try:
        return args.func(args, settings)
    except LabnodesError as exc:
        print(f"labnodes: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
