import pytest

testinfra_hosts = ["ansible://sockservers"]


@pytest.mark.parametrize("port", [5050, 5051], ids=["math", "file"])
def test_server_listens_on_the_cluster_address(host, hostvars, port):
    assert host.socket(f"tcp://{hostvars['ansible_host']}:{port}").is_listening


def test_math_server_answers_48_18(host, hostvars):
    reply = host.run(f"/opt/labnodes/venv/bin/labnodes math ask --host {hostvars['ansible_host']} 48,18 --json")
    assert '"gcd": 6' in reply.stdout and '"lcm": 144' in reply.stdout


def test_file_root_exists(host):
    assert host.file("/var/lib/labnodes/files").is_directory
