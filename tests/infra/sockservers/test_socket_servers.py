import json

import pytest

testinfra_hosts = ["ansible://sockservers"]


@pytest.mark.parametrize("server", ["math", "file"])
def test_server_listens_on_the_cluster_address(host, hostvars, settings, server):
    assert host.socket(f"tcp://{hostvars['ansible_host']}:{settings[server + '_port']}").is_listening


def test_math_server_answers_48_18(host, hostvars, settings):
    reply = host.run(f"{settings['venv']}/bin/labnodes math ask --host {hostvars['ansible_host']} 48,18 --json")
    assert [(a.get("gcd"), a.get("lcm")) for a in json.loads(reply.stdout)] == [(6, 144)]


def test_file_root_exists(host, settings):
    assert host.file(settings["file_root"]).is_directory
