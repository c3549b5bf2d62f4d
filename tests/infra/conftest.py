"""Remote checks of a running cluster (testinfra over real SSH), grouped by host role.

Run against the active inventory with `fab check`, or by hand from the repository root:
    .venv/bin/python -m pytest tests/infra --ansible-inventory=inventory/netns
Each module names its hosts (`testinfra_hosts = ["ansible://ring"]`). Not part of the default test paths: the
cluster tests run them through `fab check` on their own cluster.
"""

import tomllib

import pytest


@pytest.fixture
def hostvars(host):
    """The inventory variables of the host under test (ansible_host, inventory_hostname, group_names...)."""
    return host.ansible.get_variables()


@pytest.fixture
def settings(host):
    """The host's labnodes settings (/etc/labnodes/labnodes.toml): ports, paths and the venv, as provisioned."""
    return tomllib.loads(host.check_output("cat /etc/labnodes/labnodes.toml"))
