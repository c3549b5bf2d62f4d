"""Printing results for people (tables) and for programs (`--json`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence


def table(rows: Iterable[Sequence], headers: Sequence[str], file=None) -> None:
    from tabulate import tabulate  # imported on use: every labnodes command starts faster

    print(tabulate(list(rows), headers=list(headers), tablefmt="simple", disable_numparse=True), file=file or sys.stdout)


def as_json(obj, file=None) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True), file=file or sys.stdout)
