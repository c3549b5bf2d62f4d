"""The whole product on the embedded cluster: `fab up` from the netns host list, every fab task, then `fab down`.

The cluster is a copy of inventory/netns (same hosts and groups) under its own name and subnet, so an
instructor's running `lab` cluster is never touched. Everything goes through the real `fab` command: real
namespaces, real sshd, the real playbooks, real Redis, Celery, Pyro4 and sockets between hosts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from labkit import REPO, STATE, inventory, provision
from tests.cluster.conftest import FAB, copy_inventory, fab, fab_json, leftovers, poll, ssh

@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("cluster tests need root (they create network namespaces)")
    path = copy_inventory(tmp_path_factory.mktemp("inv") / "netns", "labci", 201)
    try:
        up = fab("up", "-i", str(path), "--quiet", inv=path)
        print(up.stdout[-2000:])
        yield inventory.load(path)
    finally:
        fab("down", "-i", str(path), inv=path, check=False)
        shutil.rmtree(STATE / "labci", ignore_errors=True)


EXPECTED_PROGRAMS = {
    "brokers": {"labnodes-redis", "labnodes-flower"},
    "nameservers": {"labnodes-nameserver"},
    "workers": {"labnodes-celery-worker"},
    "ring": {"labnodes-ring"},
    "sockservers": {"labnodes-math", "labnodes-file"},
}


def test_status_shows_every_host_up_with_its_programs_running(lab):
    status = fab_json("status", inv=lab.path)
    assert [h["host"] for h in status["hosts"]] == [h.name for h in lab.hosts]
    for row in status["hosts"]:
        assert row["ssh"], row
        expected = {"sshd"}.union(*(EXPECTED_PROGRAMS.get(g, set()) for g in row["groups"]))
        assert set(row["programs"]) == expected, row["host"]
        assert set(row["programs"].values()) == {"RUNNING"}, row
        assert row["log_ends"] == {} and row["ended"] == {}, row
    assert status["flower"] == f"http://{lab.host('broker').address}:5555/"


def test_status_says_why_a_program_that_ended_by_itself_did(lab):
    """A ring node with another HMAC key than the name server's exits at start, again and again: `fab status` said
    `labnodes-ring BACKOFF` and nothing of why."""
    pyro2, settings = lab.host("pyro2").address, "/etc/labnodes/labnodes.toml"
    # startsecs 30 for the test: a node that ends within its start is BACKOFF, then FATAL, whatever the box's
    # load. With the role's 1 s, a busy box (a second test process) started it slower than that, so supervisord
    # took each run for a started one and restarted it as RUNNING, and `fab status` never saw it ended (noted).
    conf = ssh(pyro2, "grep -l '^\\[program:labnodes-ring\\]' /etc/supervisor/conf.d/*.conf").stdout.strip()
    ssh(pyro2, f"cp -p {settings} /root/labnodes.toml.orig && cp -p {conf} /root/ring.conf.orig && sed -i "
               f"'s/^hmac_key = .*/hmac_key = \"not-the-clusters\"/' {settings} && "
               f"sed -i 's/^startsecs=.*/startsecs=30/' {conf} && supervisorctl update", check=False)
    def pyro2_row():
        rows.append(next(h for h in fab_json("status", inv=lab.path)["hosts"] if h["host"] == "pyro2"))
        return rows[-1]["log_ends"]  # empty while supervisord starts it again (STARTING) between its exits

    try:
        rows = []
        assert poll(pyro2_row, timeout=120, interval=1), rows[-1]
        row = rows[-1]
        assert row["programs"]["labnodes-ring"] in ("BACKOFF", "FATAL", "EXITED")
        assert "hmac mismatch" in row["log_ends"]["labnodes-ring"], row
        shown = []  # as text too, once supervisord is between two starts again
        assert poll(lambda: shown.append(fab("status", inv=lab.path, check=False).stdout) or
                    ": its log ends: labnodes: error: cannot register" in shown[-1], timeout=120, interval=1), shown[-1]
        assert "pyro2: labnodes-ring " in shown[-1]
    finally:
        ssh(pyro2, f"cp -p /root/labnodes.toml.orig {settings} && cp -p /root/ring.conf.orig {conf} && "
                   "supervisorctl update && supervisorctl restart labnodes-ring")


def test_status_and_check_see_a_ring_node_that_supervisord_keeps_starting_again(lab):
    """With its name server stopped, a ring node waits 30 s for it, ends with status 1, and supervisord starts it
    again at once: RUNNING nearly all the time, and `fab status` and `fab check` said it was fine."""
    broker, pyro2 = lab.host("broker").address, lab.host("pyro2").address
    ssh(broker, "supervisorctl stop labnodes-nameserver")
    ssh(pyro2, "supervisorctl restart labnodes-ring")  # a run that starts with the name server gone
    try:
        rows = []
        assert poll(lambda: rows.append(next(h for h in fab_json("status", inv=lab.path)["hosts"]
                                             if h["host"] == "pyro2")) or rows[-1]["ended"], timeout=150, interval=2)
        ended = rows[-1]["ended"]["labnodes-ring"]
        print(f"\npyro2 ring node, name server stopped: {rows[-1]['programs']}, {ended}")
        assert ended["times"] >= 1 and ended["last"] == "exit status 1", ended
        text = fab("status", inv=lab.path, check=False).stdout
        assert "pyro2: labnodes-ring " in text and ": it ended by itself " in text, text
        assert "labnodes: error: cannot register labkit.ring.pyro2" in text, text
        report = json.loads(fab("check", "--json", inv=lab.path, check=False).stdout)
        running = next(c for c in report["checks"] if (c["id"], c["host"]) == ("service.ring.running", "pyro2"))
        assert running["outcome"] == "fail" and "it ended by itself" in running["found"], running
        assert "cannot register" in running["found"] and "supervisorctl restart" in running["hint"], running
        assert next(c for c in report["checks"] if (c["id"], c["host"]) == ("service.ring.running", "pyro1"))[
            "outcome"] == "pass"  # started before the name server stopped: it kept running
    finally:
        ssh(broker, "supervisorctl start labnodes-nameserver")
        ssh(pyro2, "supervisorctl restart labnodes-ring")
    assert poll(lambda: fab("run-ring", inv=lab.path, check=False).returncode == 0, timeout=60, interval=1)
    assert "labnodes-ring" not in next(h for h in fab_json("status", inv=lab.path)["hosts"]
                                       if h["host"] == "pyro2")["ended"]  # restarted by hand: a new start


def test_message_visits_every_ring_host_in_order_and_returns(lab):
    result = fab_json("run-ring", "--message", "hi there", "--numbers", "48,18", inv=lab.path)
    ring = list(lab.groups["ring"])
    nodes = [hop["node"] for hop in result["trace"]]
    assert nodes == ring + ring[:1]  # pyro1 -> pyro2 -> pyro3 -> back at pyro1
    assert [hop["host"] for hop in result["trace"]] == nodes  # each hop ran on its own host (hostname)
    ips = [hop["address"].rsplit(":", 1)[0] for hop in result["trace"][:3]]
    assert ips == [lab.host(n).address for n in ring] and len(set(ips)) == 3
    assert (result["gcd"], result["lcm"], result["message"]) == (6, 144, "hi there")
    assert result["client"]["host"] == "client"


def test_ring_runs_several_laps_for_numbers_that_need_them(lab):
    result = fab_json("run-ring", "--numbers", "832040,514229", inv=lab.path)  # Fibonacci neighbours
    assert result["gcd"] == 1 and result["laps"] > 1


def test_celery_jobs_are_right_and_run_on_every_worker_host(lab):
    result = fab_json("run-celery", "--count", "120", inv=lab.path)
    assert result["submit"]["result"] == 144 and result["submit"]["host"] in lab.groups["workers"]
    ran_on = set()
    for mode, r in result["modes"].items():
        assert (r["ok"], r["error_count"]) == (120, 0), (mode, r["errors"])
        ran_on |= set(r["hosts"])
    assert ran_on == set(lab.groups["workers"])


def test_math_server_answers_the_client_host_and_refuses_bad_lines(lab):
    proc = fab("run-math", "--pair", "48,18", "--pair", "12,oops", "--json", inv=lab.path, check=False)
    assert proc.returncode == 1, "a refused request fails the run, as `labnodes math ask` does"
    good, bad = json.loads(proc.stdout)["answers"]
    assert (good["gcd"], good["lcm"]) == (6, 144)
    assert good["server"].startswith(lab.host("sockserver").address + ":")
    assert bad["error"] == "numbers must be decimal digits 0-9"


def test_values_that_start_with_a_dash_are_refused_by_the_programs_not_by_the_command_line(lab):
    """Before, labnodes on the client host read "-1,2" and "-4,2" as options and said "expected one argument"."""
    proc = fab("run-math", "--pair=-1,2", "--json", inv=lab.path, check=False)
    assert proc.returncode == 1
    answer = json.loads(proc.stdout)["answers"][0]
    assert (answer["pair"], answer["error"]) == ("-1,2", "negative numbers are not allowed")
    proc = fab("run-ring", "--numbers=-4,2", inv=lab.path, check=False)
    assert proc.returncode == 1 and proc.stderr.strip().endswith("--numbers=-4,2: negative numbers are not allowed")
    assert fab_json("run-ring", "--message=-x", inv=lab.path)["message"] == "-x"


def test_file_goes_to_the_server_and_back_with_equal_sha256(lab):
    result = fab_json("send-file", "--size", "8", inv=lab.path)
    assert result["match"] and result["size"] == 8 * 1024 * 1024
    assert len({f["sha256"] for f in result["files"]}) == 1
    assert result["send"]["server"].startswith(lab.host("sockserver").address + ":")
    # the stored copy really is on the sockserver host, not on the client
    stored = result["files"][1]["path"]
    assert ssh(lab.host("sockserver").address, f"test -f {stored}").returncode == 0
    assert ssh(lab.host("client").address, f"test -e {stored}", check=False).returncode != 0


def test_send_files_run_at_once_each_compare_their_own_copies(lab):
    """Three `fab send-file` at once wrote the same temporary file on the client: two failed in `mv` ("cannot
    stat"), and a run could compare another run's copies. Runs on one cluster now take turns."""
    env = dict(os.environ, LABKIT_INVENTORY=str(lab.path))
    procs = [subprocess.Popen([FAB, "send-file", "--size", "32", "--json"], cwd=REPO, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
             for _ in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        result = json.loads(out)
        assert result["match"] and len({f["sha256"] for f in result["files"]}) == 1
    print(f"\n{sum('send-file: waiting for another send-file' in err for _, err in outs)} of 3 runs waited")


def test_remote_checks_of_every_host_pass(lab):
    proc = fab("check", inv=lab.path, check=False)
    summary = proc.stdout.strip().splitlines()[-1]
    assert proc.returncode == 0 and " passed" in summary and "failed" not in summary, proc.stdout[-3000:]


SECRETS = {"redis_password", "hmac_key"}
NEEDS = {"broker": {"redis_password", "hmac_key"},  # broker: Flower (Celery) and the name server
         "worker1": {"redis_password"}, "pyro1": {"hmac_key"}, "sockserver": set(), "client": SECRETS}


@pytest.mark.parametrize("host", list(NEEDS))
def test_each_host_holds_only_the_secrets_its_groups_need(lab, host):
    import tomllib
    settings = tomllib.loads(ssh(lab.host(host).address, "cat /etc/labnodes/labnodes.toml").stdout)
    assert {k for k in SECRETS if settings.get(k)} == NEEDS[host]
    assert settings.get("redis_user", "") == ("celery" if "redis_password" in NEEDS[host] else "")


def test_celerys_redis_user_may_not_run_administrative_commands(lab):
    """The password every Celery host holds opens Redis as user `celery`, which runs Celery's commands but not
    FLUSHALL, CONFIG or KEYS; the default user's password is on no host's settings."""
    broker = lab.host("broker").address
    cli = (f"/opt/labnodes/venv/bin/python -c 'from labnodes import config; s = config.load(); "
           f"print(s.redis_user, s.redis_password, s.redis_port)' | {{ read u p port; "
           f"for c in PING 'SET labkit-probe 1' FLUSHALL 'CONFIG GET maxclients' 'KEYS *'; do "
           f"REDISCLI_AUTH=$p redis-cli --no-auth-warning --user $u -h {broker} -p $port $c 2>&1 | head -1; done; }}")
    replies = ssh(lab.host("worker1").address, cli).stdout.splitlines()
    assert replies[:2] == ["PONG", "OK"], replies
    assert all(r.startswith("NOPERM") for r in replies[2:]), replies
    default = ssh(lab.host("worker1").address, cli.replace("--user $u", "")).stdout.splitlines()
    assert all("WRONGPASS" in r or "NOAUTH" in r for r in default), default


def test_second_provisioning_changes_nothing(lab):
    report = provision.provision(lab.path, cluster=lab.cluster, quiet=True)
    changed = {host: r["changed"] for host, r in report["hosts"].items() if r["changed"]}
    assert changed == {}, changed


def test_fab_provision_quiet_shows_the_plays_and_the_outcome_not_each_task(lab):
    """`fab up` had --quiet and `fab provision` did not: re-provisioning printed every task of every host."""
    out = fab("provision", "--quiet", inv=lab.path).stdout
    assert "provision: Prepare every host" in out and "TASK [" not in out, out[-2000:]
    assert out.rstrip().splitlines()[-1].endswith(", 0 changes"), out[-2000:]


def test_a_ctrl_c_during_provisioning_stops_the_playbook_says_so_and_the_next_run_finishes(lab):
    """Before, invoke ended an interrupted `fab provision` with exit 1 and not a word, and a SIGINT to fab alone
    (`kill -INT`; and a terminal's Ctrl-C, now that ansible-playbook runs in a process group of its own) left the
    playbook running on behind it."""
    env = dict(os.environ, LABKIT_INVENTORY=str(lab.path))
    proc = subprocess.Popen([FAB, "provision"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL)
    seen = []
    for line in proc.stdout:  # interrupt it while the playbook works on the hosts
        seen.append(line)
        if line.startswith("TASK [") and any(s.startswith("PLAY [Prepare every host") for s in seen):
            break
    playbook = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert len(playbook) == 1 and "ansible-playbook" in Path(f"/proc/{playbook[0]}/cmdline").read_text()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out[-2000:], err[-2000:])
    assert err.endswith("fab provision: interrupted: run it again: it keeps what is done and finishes the rest\n")
    assert not Path(f"/proc/{playbook[0]}").exists()  # fab waited for it (fab's own child: no zombie left)
    assert not (STATE / f"timing-{proc.pid}.json").exists()
    report = provision.provision(lab.path, cluster=lab.cluster, quiet=True)
    assert report["hosts"] and all(r["failed"] == r["unreachable"] == 0 for r in report["hosts"].values())


def test_a_ctrl_c_during_a_run_stops_it_at_once_on_the_client_host_too(lab):
    """Before, an interrupted `fab run-celery` waited for its `labnodes celery batch` on the client host to finish
    (invoke waits for the output to end), and a fab killed outright left the batch running there (SSH tells a
    command without a terminal nothing when the session ends). Now fab closes the command's channel on a Ctrl-C,
    and labnodes runs `--tethered`: it stops when its stdin ends. The batch asked for (10000 jobs in each mode)
    takes about 40 s here, so a fab and a batch that are both gone within 15 s were stopped; that is the only
    reason for the bounds."""
    env = dict(os.environ, LABKIT_INVENTORY=str(lab.path))
    client = lab.host("client").address
    batch = "pgrep -f 'bin/labnodes .*celery batch'"  # tethered or not
    proc = subprocess.Popen([FAB, "run-celery", "--count", "10000"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        assert poll(lambda: ssh(client, batch, check=False).returncode == 0, timeout=60), "the batch never ran"
    finally:
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 130, (out[-2000:], err[-2000:])
    assert err.endswith("fab run-celery: interrupted\n"), err[-2000:]
    assert poll(lambda: ssh(client, batch, check=False).returncode == 1, timeout=15), "the batch still runs"


def _pids(lab, host: str) -> dict[str, str]:
    """program -> pid of every RUNNING program on the host, as supervisorctl shows them."""
    rows = ssh(lab.host(host).address, "supervisorctl status", check=False).stdout.splitlines()
    return {f[0]: f[3].rstrip(",") for f in map(str.split, rows) if len(f) > 3 and f[1] == "RUNNING"}


def test_a_changed_setting_restarts_the_labnodes_programs_and_nothing_else(lab):
    """labnodes.toml's checksum is part of every labnodes program's definition (labnodes_revision): a setting changed
    in the inventory restarts the programs that read it; sshd and Redis, which do not, keep running."""
    group_vars = Path(lab.path) / "group_vars" / "all.yml"
    original = group_vars.read_text()
    before = {h: _pids(lab, h) for h in ("pyro1", "broker")}
    group_vars.write_text(original + "labnodes_config_extra: {log_rate: 99}\n")
    try:
        report = provision.provision(lab.path, cluster=lab.cluster, quiet=True)
        after = {h: _pids(lab, h) for h in ("pyro1", "broker")}
    finally:
        group_vars.write_text(original)
    assert report["hosts"]["pyro1"]["changed"] >= 2  # labnodes.toml, and the ring node's restart
    assert after["pyro1"]["labnodes-ring"] != before["pyro1"]["labnodes-ring"]
    assert after["broker"]["labnodes-flower"] != before["broker"]["labnodes-flower"]
    for host, program in (("pyro1", "sshd"), ("broker", "sshd"), ("broker", "labnodes-redis")):
        assert after[host][program] == before[host][program], (host, program)
    provision.provision(lab.path, cluster=lab.cluster, quiet=True)  # the setting as it was: the programs restart again
    assert _pids(lab, "pyro1")["labnodes-ring"] != after["pyro1"]["labnodes-ring"]
    ring = fab_json("run-ring", inv=lab.path)  # at once: a ring node that registered with the name server about
    assert [hop["node"] for hop in ring["trace"]] == ["pyro1", "pyro2", "pyro3", "pyro1"]  # to stop is not lost


def test_a_restarted_name_server_still_knows_the_ring(lab):
    """The cluster's name server keeps its names in a file (ns_storage). In memory it forgot them all, and the ring
    failed ("start node pyro1 is not registered") until each node's next check, up to 10 s later."""
    ssh(lab.host("broker").address, "supervisorctl restart labnodes-nameserver")
    ring = fab_json("run-ring", inv=lab.path)
    assert [hop["node"] for hop in ring["trace"]] == ["pyro1", "pyro2", "pyro3", "pyro1"]
    assert (ring["gcd"], ring["lcm"]) == (6, 144)


def test_common_ends_early_on_a_netns_host_and_goes_on_where_a_host_needs_setting_up(lab, tmp_path):
    """common's host setup (packages, /etc/hosts, supervisord under systemd) sits behind a `meta: end_role` that a
    netns host takes: none of its tasks even starts there. With /etc/hosts managed, as on a VM or a lab machine, the
    same role goes on into them. Shown in check mode, which writes nothing."""
    book = tmp_path / "common.yml"
    book.write_text("- hosts: pyro1\n  gather_facts: false\n  roles: [common]\n")
    hosts_file = ssh(lab.host("pyro1").address, "cat /etc/hosts").stdout

    def check(*extra: str) -> str:
        proc = subprocess.run([str(provision.VENV_BIN / "ansible-playbook"), "-i", str(lab.path), str(book), "--check",
                               *extra], cwd=REPO, env=provision.ansible_env(), capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    assert "Ensure every cluster host is listed in /etc/hosts" not in check()
    managed = check("-e", "common_manage_etc_hosts=true")
    assert "TASK [common : Ensure every cluster host is listed in /etc/hosts]" in managed
    assert "changed: [pyro1]" in managed  # its block is not in the netns host's /etc/hosts: it would add it
    assert ssh(lab.host("pyro1").address, "cat /etc/hosts").stdout == hosts_file


def _programs(lab, host: str) -> set[str]:
    rows = fab_json("status", inv=lab.path)["hosts"]
    return {name for name, state in next(r for r in rows if r["host"] == host)["programs"].items() if state == "RUNNING"}


def test_a_host_that_leaves_its_group_loses_its_programs_and_regains_them_when_it_returns(lab):
    hosts_yml = Path(lab.path) / "hosts.yml"
    original = hosts_yml.read_text()
    line = next(x for x in original.splitlines(keepends=True) if x.strip().startswith("worker2:"))
    client = next(x for x in original.splitlines(keepends=True) if x.strip().startswith("client:"))
    hosts_yml.write_text(original.replace(line, "").replace(client, client + line))  # worker2: workers -> clients
    try:
        provision.provision(lab.path, cluster=lab.cluster, quiet=True)
        assert _programs(lab, "worker2") == {"sshd"}
        result = fab_json("run-celery", "--count", "40", inv=lab.path)
        assert {h for r in result["modes"].values() for h in r["hosts"]} == {"worker1"}
    finally:
        hosts_yml.write_text(original)
    provision.provision(lab.path, cluster=lab.cluster, quiet=True)
    assert _programs(lab, "worker2") == {"sshd", "labnodes-celery-worker"}


# Every port and path a role chooses, and the venv, moved away from its default: the programs, `fab` and `fab check`
# must all follow the inventory (through each host's labnodes.toml), never a role's defaults.
OVERRIDES = {
    "labnodes_venv": "/opt/labnodes/venv-alt",
    "labnodes_redis_port": 6390, "labnodes_ns_port": 9390, "labnodes_math_port": 5390, "labnodes_file_port": 5391,
    "labnodes_flower_port": 5590, "labnodes_file_root": "/var/lib/labnodes/store",
}


def test_second_cluster_with_every_port_path_and_the_venv_overridden_runs_every_task_beside_the_first(lab, tmp_path):
    other = copy_inventory(tmp_path / "netns", "labci2", 202)
    with open(other / "group_vars" / "all.yml", "a") as f:
        f.write("".join(f"{k}: {v}\n" for k, v in OVERRIDES.items()))
    broker, sockserver = "10.77.202.10", "10.77.202.30"
    try:
        fab("up", "-i", str(other), "--quiet", inv=other)
        status = fab_json("status", inv=other)
        assert status["flower"] == f"http://{broker}:5590/"
        listening = ssh(sockserver, "ss -ltnpH").stdout + ssh(broker, "ss -ltnpH").stdout
        for port in (6390, 9390, 5390, 5391, 5590):
            assert f":{port} " in listening, (port, listening)
        assert ssh(sockserver, "test -x /opt/labnodes/venv-alt/bin/labnodes && test ! -e /opt/labnodes/venv"
                   ).returncode == 0
        assert ssh(sockserver, "readlink /usr/local/bin/labnodes").stdout == "/opt/labnodes/venv-alt/bin/labnodes\n"
        result = fab_json("run-ring", inv=other)
        assert result["trace"][0]["address"].startswith("10.77.202.") and result["gcd"] == 6
        assert fab_json("run-celery", "--count", "20", inv=other)["submit"]["result"] == 144
        answer = fab_json("run-math", inv=other)["answers"][0]
        assert (answer["gcd"], answer["server"]) == (6, f"{sockserver}:5390")
        sent = fab_json("send-file", "--size", "2", inv=other)
        assert sent["match"] and sent["files"][1]["path"].startswith("/var/lib/labnodes/store/")
        check = fab("check", inv=other, check=False)
        assert check.returncode == 0, check.stdout[-3000:]
    finally:
        fab("down", "-i", str(other), inv=other)
        shutil.rmtree(STATE / "labci2", ignore_errors=True)
    assert not leftovers("labci2", "10.77.202.0/24")
    # the first cluster did not notice
    assert fab_json("run-ring", inv=lab.path)["trace"][0]["address"].startswith("10.77.201.")


def test_a_run_against_a_cluster_that_is_down_says_so_in_one_line(lab, tmp_path):
    """A cluster never brought up (and, below, one taken down): one line naming the command that brings it up,
    no traceback. `fab status` shows every host down and exits 1."""
    never = copy_inventory(tmp_path / "never", "labci3", 203)
    for task in ("run-ring", "run-math", "send-file"):
        proc = fab(task, inv=never, check=False)
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines() == [
            f"fab: error: cluster labci3 (netns, {never}) is not up: bring it up with `fab up -i {never}`"], task
    status = fab("status", "--json", inv=never, check=False)
    assert status.returncode == 1
    assert {h["state"] for h in json.loads(status.stdout)["hosts"]} == {"down"}
    fab("down", "--forget", inv=never)  # send-file made the cluster's send-file.lock before it found it down
    assert not (STATE / "labci3").exists()


def test_down_leaves_nothing_a_second_is_harmless_and_forget_deletes_the_key_and_secrets_kept(lab):
    fab("down", inv=lab.path)
    assert not leftovers("labci", "10.77.201.0/24")
    fab("down", inv=lab.path)
    proc = fab("run-ring", inv=lab.path, check=False)  # taken down: the same one line as never brought up
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        f"fab: error: cluster labci (netns, {lab.path}) is not up: bring it up with `fab up -i {lab.path}`"]
    assert (STATE / "labci" / "secrets").is_dir()  # a plain down keeps the key and secrets for the next up
    forgot = fab("down", "--forget", inv=lab.path)
    assert "forgot cluster labci" in forgot.stdout and not (STATE / "labci").exists()
    assert not leftovers("labci", "10.77.201.0/24")
