"""Printing results for people (tables) and for programs (`--json`)."""

from __future__ import annotations

import json
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
