"""How `make test` splits the suite over two processes (`pytest -n 2 --dist loadgroup`, pytest-xdist).

The cluster tests wait on real hosts for much of their time and leave a core idle, so `make test` runs two
streams at once: each module is one unit of work, run whole and in order by one process, and a process takes the
next unit when it is done with its own. test_checks and test_faults are one unit: they share the session's
`course` cluster (tests/cluster/conftest.py), which one process must bring up once and take down once. Modules
that run at once never share a cluster, a port or a file: each cluster module has its own cluster names and
subnets, the loopback tests take free ports, and every test writes under its own tmp_path.

Units go out in the order of the tests (`--no-loadscope-reorder`), and there the cluster modules come first: the
longest units start first and the short ones fill in beside them, instead of a long one starting last.

A plain `pytest` (one process) ignores the groups and runs everything in order, as before.
"""

from __future__ import annotations

import pytest

# Modules that must share one process (a session fixture they both use), by the group's name.
SHARED_PROCESS = {"tests/cluster/test_checks.py": "course", "tests/cluster/test_faults.py": "course"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups into the tests' ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        item.add_marker(pytest.mark.xdist_group(SHARED_PROCESS.get(module, module)))
    if hasattr(
        config, "workerinput"
    ):  # a process of `pytest -n`: the order it reports is the order units go out
        items.sort(
            key=lambda item: not item.nodeid.startswith("tests/cluster/")
        )  # stable: modules keep theirs
