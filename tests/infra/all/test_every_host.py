testinfra_hosts = ["ansible://all"]


def test_hostname_is_the_inventory_name(host, hostvars):
    assert host.check_output("hostname") == hostvars["inventory_hostname"]


def test_labnodes_settings_are_readable_by_root_only(host):
    config = host.file("/etc/labnodes/labnodes.toml")
    assert config.is_file and config.user == "root" and config.mode == 0o600


def test_labnodes_cli_runs_from_its_venv(host, settings):
    assert host.run(f"{settings['venv']}/bin/labnodes --version").stdout.startswith("labnodes ")


def test_supervisord_runs_every_program(host):
    status = host.run("supervisorctl status")
    assert status.rc == 0, status.stdout
    assert all(line.split()[1] == "RUNNING" for line in status.stdout.splitlines())
