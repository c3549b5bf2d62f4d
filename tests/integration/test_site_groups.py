"""site.yml refuses an inventory without a host in a group that every host's settings point at, before touching
any host (a real ansible-playbook run; its first play fails, so no host is reached)."""

from __future__ import annotations

import shutil

import pytest

from labkit import STATE, provision


@pytest.mark.parametrize("missing", ["brokers", "nameservers", "sockservers"])
def test_an_inventory_without_a_host_the_settings_point_at_is_refused_naming_the_group(tmp_path, missing):
    """Before, each host failed in the labnodes role with "object of type 'dict' has no attribute 'brokers'"."""
    groups = {"brokers": "b", "nameservers": "b", "sockservers": "s", "clients": "c"}
    del groups[missing]
    addresses = {"b": "10.77.251.10", "s": "10.77.251.30", "c": "10.77.251.40"}  # never reached
    lines = ["all:", "  vars:", "    labkit_cluster: gq", "    labkit_subnet: 10.77.251.0/24", "  children:"]
    for group, host in groups.items():
        lines += [f"    {group}:", "      hosts:", f"        {host}: {{ansible_host: '{addresses[host]}'}}"]
    (tmp_path / "hosts.yml").write_text("\n".join(lines) + "\n")
    try:
        with pytest.raises(provision.ProvisionError) as exc:
            provision.provision(tmp_path, cluster="gq", quiet=True)
    finally:
        shutil.rmtree(STATE / "gq", ignore_errors=True)  # its provision.lock: nothing of the test is left
    message = str(exc.value)
    assert (
        f"the inventory has no host in group {missing}, and every host's settings point at its first host"
        in message
    )
    assert "failed on localhost (the control machine's play: the hosts' play did not run)\n" in message
