import pytest

testinfra_hosts = ["ansible://all"]


def test_hostname_is_the_inventory_name(host, hostvars):
    assert host.check_output("hostname") == hostvars["inventory_hostname"]


def service_user(hostvars) -> str:
    """The user labkit's programs run as: the inventory's labnodes_user, else the labnodes role's default."""
    return hostvars.get("labnodes_user", "labnodes")


def test_labnodes_settings_are_readable_by_root_and_the_service_group_only(host, hostvars):
    config = host.file("/etc/labnodes/labnodes.toml")
    assert config.is_file and config.user == "root" and config.group == service_user(hostvars)
    assert config.mode == 0o640


def test_programs_run_as_the_service_user(host, hostvars):
    pids = host.check_output("supervisorctl pid all").split()
    if not pids:
        pytest.skip("this host runs no program (the client)")
    assert all(p.isdigit() and p != "0" for p in pids), pids
    users = {host.check_output(f"ps -o user= -p {pid}").strip() for pid in pids}
    assert users == {service_user(hostvars)}


def test_labnodes_cli_runs_from_its_venv(host, settings):
    assert host.run(f"{settings['venv']}/bin/labnodes --version").stdout.startswith("labnodes ")


def test_supervisord_runs_every_program(host):
    status = host.run("supervisorctl status")
    assert status.rc == 0, status.stdout
    assert all(line.split()[1] == "RUNNING" for line in status.stdout.splitlines())
