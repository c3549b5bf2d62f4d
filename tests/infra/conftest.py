"""The instructor checks (labkit.checks) as pytest tests, one per check and host, for those who want pytest's
output or plugins. `fab check` is the usual way in; this runs the same checks once and reports each:

    .venv/bin/python -m pytest tests/infra --ansible-inventory=inventory/netns [--junitxml=PATH]

A check blocked by another is skipped with "blocked by <check>@<host>". Not part of the default test paths.
"""

from __future__ import annotations

import pytest

from labkit import LabkitError, checks, inventory

_REPORT: dict = {}
_INVENTORY: list = []


def pytest_sessionstart(session):
    """Read the inventory before collecting: one that cannot be read is one line and exit status 4 (a usage
    error), not a collection error's traceback."""
    try:
        _INVENTORY.append(inventory.load(session.config.getoption("ansible_inventory", default=None)))
    except LabkitError as exc:
        pytest.exit(f"labkit: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)


def report(config) -> dict:
    if not _REPORT:
        if not _INVENTORY:  # collected without pytest_sessionstart (`pytest tests/`, say)
            _INVENTORY.append(inventory.load(config.getoption("ansible_inventory", default=None)))
        inv = _INVENTORY[0]
        _REPORT.update(checks.run(inv))
    return _REPORT


def pytest_generate_tests(metafunc):
    if "labkit_check" in metafunc.fixturenames:
        found = report(metafunc.config)["checks"]
        metafunc.parametrize("labkit_check", found, ids=[checks.key(c) for c in found])


@pytest.fixture
def check_result(labkit_check):
    if labkit_check["outcome"] == "blocked":
        pytest.skip(f"blocked by {labkit_check['blocked_by']}")
    return labkit_check
