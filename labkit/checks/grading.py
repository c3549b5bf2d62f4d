"""Scores from an optional grading file (YAML); without one, every check counts one.

    # grading.yml
    count: [reach.*, service.*, app.*]   # checks that count (fnmatch patterns on `id` or `id@host`); default all
    weights:                             # first matching pattern gives a check's weight; default 1
      app.*: 5
      service.ring.*: 2
    groups:                              # the least number of hosts a group must have; default 1 each
      ring: 3
      workers: 2

A check scores its weight when it passes; a failed or blocked check scores 0. A student's inventory says which
hosts there are, and a check is made for each: without `groups`, a student who leaves a broken worker out of
the inventory loses nothing for it. With it, a group with fewer hosts fails the application run that needs it
(`app.ring` for `ring`: "the inventory has 1 host in group 'ring', the grading file asks for at least 3").

Every pattern must match some check `fab check` makes (the id part of `id@host`; the host is not known before
the run): a typo would count or weigh nothing for every student, silently.
"""

from __future__ import annotations

import math
from fnmatch import fnmatchcase
from pathlib import Path

from labkit import LabkitError, options
from labkit.checks import APP_GROUPS, check_ids


class GradingError(LabkitError):
    """The grading file cannot be read or has the wrong shape."""


def load(path: str | Path | None) -> dict:
    if not path:
        return {"count": ["*"], "weights": {}, "groups": {}}
    data = options.read_yaml(path, f"grading file {path}", error=GradingError) or {}
    if not isinstance(data, dict) or not set(data) <= {"count", "weights", "groups"}:
        raise GradingError(f"grading file {path}: expected a mapping with `count`, `weights` and/or `groups`")
    groups, course = data.get("groups") or {}, sorted({g for needs in APP_GROUPS.values() for g in needs})
    if not isinstance(groups, dict) or not set(groups) <= set(course) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in groups.values()):
        raise GradingError(f"grading file {path}: `groups` maps groups of the course's cluster ({', '.join(course)}) "
                           "to the least number of hosts each must have (1 or more)")
    count, weights = data.get("count") or ["*"], data.get("weights") or {}
    if not isinstance(count, list) or not isinstance(weights, dict) or not all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0
            for w in weights.values()):
        raise GradingError(f"grading file {path}: `count` is a list of patterns, `weights` maps patterns to numbers "
                           "(0 or more)")
    known = check_ids()
    for pattern in [*count, *weights]:  # a typo would count nothing, or weigh nothing, and say nothing
        if not any(fnmatchcase(cid, str(pattern).split("@")[0]) for cid in known):
            raise GradingError(f"grading file {path}: {pattern!r} matches no check (their ids: "
                               f"{', '.join(sorted(known))})")
    return {"count": [str(p) for p in count], "weights": {str(k): float(v) for k, v in weights.items()},
            "groups": dict(groups)}


def _match(c: dict, pattern: str) -> bool:
    return fnmatchcase(c["id"], pattern) or fnmatchcase(f"{c['id']}@{c['host']}", pattern)


def weight(grading: dict, c: dict) -> float:
    if not any(_match(c, p) for p in grading["count"]):
        return 0.0
    return next((w for p, w in grading["weights"].items() if _match(c, p)), 1.0)


def score(report: dict, grading: dict) -> dict:
    points = maximum = 0.0
    for c in report["checks"]:
        w = weight(grading, c)
        maximum += w
        points += w if c["outcome"] == "pass" else 0.0
    return {"points": points, "max": maximum, "percent": 100.0 * points / maximum if maximum else 0.0}
