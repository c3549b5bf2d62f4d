testinfra_hosts = ["ansible://workers"]


def test_worker_is_named_after_its_host(host, hostvars, settings):
    ping = host.run(f"{settings['venv']}/bin/celery -A labnodes.celery_app inspect ping -t 5")
    assert f"@{hostvars['inventory_hostname']}: OK" in ping.stdout, ping.stdout + ping.stderr


def test_worker_is_supervised(host):
    assert host.supervisor("labnodes-celery-worker").is_running
