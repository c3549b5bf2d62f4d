testinfra_hosts = ["ansible://brokers"]


def test_redis_listens_on_the_cluster_address_only(host, hostvars):
    assert host.socket(f"tcp://{hostvars['ansible_host']}:6379").is_listening
    assert not host.socket("tcp://0.0.0.0:6379").is_listening


def test_redis_refuses_clients_without_password(host, hostvars):
    assert "NOAUTH" in host.run(f"redis-cli -h {hostvars['ansible_host']} ping").stdout


def test_redis_answers_with_the_clusters_password(host, hostvars):
    cmd = ("/opt/labnodes/venv/bin/python -c 'from labnodes import config; print(config.load().redis_password)'"
           f" | REDISCLI_AUTH=$(cat) redis-cli -h {hostvars['ansible_host']} ping")
    assert host.run(cmd).stdout.strip() == "PONG"


def test_flower_asks_for_a_password(host, hostvars):
    code = host.run(f"python3 -c \"import urllib.request as u, urllib.error as e\ntry: u.urlopen('http://"
                    f"{hostvars['ansible_host']}:5555/', timeout=5)\nexcept e.HTTPError as x: print(x.code)\"")
    assert code.stdout.strip() == "401"
