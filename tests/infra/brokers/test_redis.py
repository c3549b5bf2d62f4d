testinfra_hosts = ["ansible://brokers"]


def test_redis_listens_on_the_cluster_address_only(host, hostvars, settings):
    assert host.socket(f"tcp://{hostvars['ansible_host']}:{settings['redis_port']}").is_listening
    assert not host.socket(f"tcp://0.0.0.0:{settings['redis_port']}").is_listening


def test_redis_refuses_clients_without_password(host, hostvars, settings):
    assert "NOAUTH" in host.run(f"redis-cli -h {hostvars['ansible_host']} -p {settings['redis_port']} ping").stdout


def test_redis_answers_with_the_clusters_password(host, hostvars, settings):
    cmd = (f"{settings['venv']}/bin/python -c 'from labnodes import config; print(config.load().redis_password)'"
           f" | REDISCLI_AUTH=$(cat) redis-cli -h {hostvars['ansible_host']} -p {settings['redis_port']} ping")
    assert host.run(cmd).stdout.strip() == "PONG"


def test_flower_asks_for_a_password(host, hostvars, settings):
    code = host.run(f"python3 -c \"import urllib.request as u, urllib.error as e\ntry: u.urlopen('http://"
                    f"{hostvars['ansible_host']}:{settings['flower_port']}/', timeout=5)\nexcept e.HTTPError as x: print(x.code)\"")
    assert code.stdout.strip() == "401"
