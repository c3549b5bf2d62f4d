"""Faults on a real 8-host cluster (conftest's `course`: a copy of inventory/netns, up once for the session and
shared with test_checks): every fault is set through the real `fab` command and measured between hosts, and each
test ends with no labkit rule, qdisc, ifb or record left on any host. Measurements are printed (pytest -s shows
them)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from labkit import REPO, faults
from labkit.remote import Hosts
from tests.cluster.conftest import FAB, fab


@pytest.fixture
def lab(course):
    """The shared cluster (conftest's `course`; test_checks uses it too)."""
    return course


@pytest.fixture
def hosts(lab):
    """SSH to the cluster's hosts; after each test: heal everything, and nothing of labkit may remain."""
    with Hosts(lab) as h:
        yield h
        fab("heal", inv=lab.path)
        left = {n: v for n, v in faults.leftovers(h).items() if v}
        assert not left, f"left behind after heal: {left}"


def programs(hosts: Hosts, name: str) -> dict[str, tuple[str, str]]:
    """{program: (state, pid)} from supervisorctl on the host."""
    out = hosts.run(name, "supervisorctl status", check=False).stdout
    rows = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 2:
            rows[f[0]] = (f[1], f[3].rstrip(",") if len(f) > 3 and f[2] == "pid" else "")
    return rows


def wait_for(predicate, timeout: float = 60, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    return predicate()


def reaches(hosts: Hosts, src: str, dst: str, port: int, timeout: float = 3) -> bool:
    """Whether a TCP connection from src to dst:port is established within `timeout` seconds."""
    code = (f"import socket; socket.create_connection(({hosts.address(dst)!r}, {port}), timeout={timeout})")
    return hosts.run(src, f"python3 -c {json.dumps(code)}", check=False).exited == 0


# --- impairments ----------------------------------------------------------------------------------------------

def test_loss_drops_packets_both_ways_and_spares_ssh(lab, hosts):
    healthy = faults.measure_loss(hosts, "client", "pyro2", count=2000)
    fab("impair", "pyro2", "--loss", "5", inv=lab.path)
    lossy = faults.measure_loss(hosts, "client", "pyro2", count=2000)
    print(f"\nloss 5% on pyro2, 2000 UDP datagrams from client: healthy {healthy['one_way_loss_pct']:.1f}% lost; "
          f"impaired: {lossy['one_way_loss_pct']:.1f}% lost on the way in, {lossy['echo_loss_pct']:.1f}% of "
          f"echoes lost (in and out; expected {100 * (1 - 0.95 ** 2):.1f}%)")
    assert healthy["echoed"] == 2000
    assert 2 <= lossy["one_way_loss_pct"] <= 9
    assert 5 <= lossy["echo_loss_pct"] <= 16
    for _ in range(20):  # the host's sshd is spared: labkit can always reach it to heal
        hosts.run("pyro2", "true")


def test_rate_limits_throughput_both_ways(lab, hosts):
    healthy = faults.measure_rate(hosts, "client", "pyro2", seconds=2)
    fab("impair", "pyro2", "--rate", "10mbit", inv=lab.path)
    into = faults.measure_rate(hosts, "client", "pyro2", seconds=3)
    out = faults.measure_rate(hosts, "pyro2", "client", seconds=3)
    print(f"\nrate 10mbit on pyro2: healthy {healthy['mbit_s']:.0f} Mbit/s; into pyro2 {into['mbit_s']:.2f} Mbit/s, "
          f"out of pyro2 {out['mbit_s']:.2f} Mbit/s (asked 10; ratio {into['mbit_s'] / 10:.2f} and "
          f"{out['mbit_s'] / 10:.2f})")
    assert 4 <= into["mbit_s"] <= 12 and 4 <= out["mbit_s"] <= 12
    assert healthy["mbit_s"] > 50


def test_delay_without_netem_is_refused_and_changes_nothing(lab, hosts):
    caps = faults.probe(hosts, "pyro2", faults.Impairment.parse(delay="20"))
    if caps["netem"]:
        pytest.skip("this kernel has netem: delay is applied, not refused")
    proc = fab("impair", "pyro2", "--delay", "20", "--loss", "5", "--rate", "1mbit", inv=lab.path, check=False)
    print(f"\n{proc.stderr.strip()}")
    assert proc.returncode == 1
    assert "no netem" in proc.stderr and "Nothing was changed" in proc.stderr
    assert faults.leftovers(hosts, ["pyro2"]) == {"pyro2": []}


def test_impairing_a_host_twice_asks_to_heal_first(lab, hosts):
    fab("impair", "pyro1", "--loss", "1", inv=lab.path)
    proc = fab("impair", "pyro1", "--rate", "1mbit", inv=lab.path, check=False)
    assert proc.returncode == 1 and "already impaired" in proc.stderr and "fab heal pyro1" in proc.stderr


def test_two_impairs_of_one_host_at_once_leave_one(lab, hosts):
    """Both passed the control side's "already impaired" check and stacked their losses (5% and 10%: about 14.5%),
    both recorded; the host now applies its faults one at a time and refuses the second."""
    env = dict(os.environ, LABKIT_INVENTORY=str(lab.path))
    procs = [subprocess.Popen([FAB, "impair", "pyro1", "--loss", loss], cwd=REPO, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
             for loss in ("5", "10")]
    outs = [p.communicate(timeout=300) for p in procs]
    assert sorted(p.returncode for p in procs) == [0, 1], outs
    assert "already impaired" in "".join(err for _, err in outs)
    assert [r["kind"] for r in faults.in_force(hosts, ["pyro1"])] == ["impair"]


def test_check_lists_the_faults_labkit_set_and_forgets_them_once_healed(lab, hosts):
    fab("partition", "client", "sockserver", inv=lab.path)
    # the math and file runs across the cut wait out the check's timeout: 4 s, not the default 20, twice
    report = json.loads(fab("check", "--json", "--timeout", "4", inv=lab.path, check=False).stdout)
    assert report["status"] == "failing"  # the partition breaks the apps: a fault is still a failure
    assert sorted((f["host"], f["kind"]) for f in report["faults"]) == [("client", "partition"),
                                                                        ("sockserver", "partition")]
    got = {f"{c['id']}@{c['host']}": c for c in report["checks"]}
    # each host's probe finished though a peer is cut off (it waits for that peer a quarter of --timeout at most),
    # and the runs across the cut say what they waited for, within the check's time (they said "no output")
    assert [got[k]["outcome"] for k in ("reach.network@client", "host.probe@client", "host.probe@sockserver")] == \
        ["fail", "pass", "pass"], {k: c["found"] for k, c in got.items() if c["outcome"] != "pass"}
    for run in ("app.math@sockserver", "app.file@sockserver"):
        assert "no answer within 4 s" in got[run]["found"], got[run]
    text = fab("check", "--timeout", "4", inv=lab.path, check=False).stdout
    assert "labkit faults in force" in text and "FAULT   partition on client: cut from sockserver" in text
    fab("heal", inv=lab.path)
    assert json.loads(fab("check", "--json", inv=lab.path).stdout)["faults"] == []


@pytest.mark.parametrize("loss", ["1", "5"])
def test_the_ring_completes_with_loss_on_a_ring_host(lab, hosts, loss):
    fab("impair", "pyro2", "--loss", loss, inv=lab.path)
    laps = []
    for _ in range(5):
        result = json.loads(fab("run-ring", "--json", inv=lab.path, timeout=300).stdout)
        assert result["gcd"] == 6
        laps.append(result["total_ms"])
    print(f"\nring with {loss}% loss on pyro2: 5 of 5 completed, ms {', '.join(f'{x:.1f}' for x in laps)}")


@pytest.mark.parametrize("loss", ["1", "5"])
def test_a_100_mb_file_crosses_a_lossy_file_server_intact(lab, hosts, loss):
    fab("impair", "sockserver", "--loss", loss, inv=lab.path)
    result = json.loads(fab("send-file", "--size", "100", "--json", inv=lab.path, timeout=1200).stdout)
    print(f"\n100 MB with {loss}% loss on sockserver: there {result['send']['mb_per_s']} MB/s, back "
          f"{result['get'].get('mb_per_s')} MB/s, sha256 equal on both hosts: {result['match']}")
    assert result["match"] and result["size"] == 100 * 1024 * 1024


# --- partitions -----------------------------------------------------------------------------------------------

def test_partition_cuts_both_ways_and_heal_restores(lab, hosts):
    math_port, ssh_port = int(hosts.setting("sockserver", "math_port")), 22
    assert reaches(hosts, "client", "sockserver", math_port) and reaches(hosts, "sockserver", "client", ssh_port)
    fab("partition", "client", "sockserver", inv=lab.path)
    start = time.monotonic()
    proc = fab("run-math", inv=lab.path, check=False, timeout=300)
    took = time.monotonic() - start
    print(f"\npartition client|sockserver: run-math failed in {took:.1f} s: {proc.stderr.strip()}")
    assert proc.returncode == 1 and "math server" in proc.stderr and lab.host("sockserver").address in proc.stderr
    assert not reaches(hosts, "client", "sockserver", math_port)
    assert not reaches(hosts, "sockserver", "client", ssh_port)
    assert reaches(hosts, "client", "pyro1", ssh_port)  # only that link is cut
    for name in ("client", "sockserver"):
        rules = hosts.run(name, "iptables -w -S").stdout
        assert rules.count("labkit-fault part-") == 2, name  # each host drops both directions on its own
    fab("heal", "--host", "client", inv=lab.path)  # heals the partition on both of its hosts
    assert reaches(hosts, "client", "sockserver", math_port) and reaches(hosts, "sockserver", "client", ssh_port)
    answers = json.loads(fab("run-math", "--json", inv=lab.path).stdout)["answers"]
    assert answers[0]["gcd"] == 6


def test_send_file_across_a_partition_fails_clearly_and_works_when_healed(lab, hosts):
    fab("partition", "client", "sockserver", "--for", "600", inv=lab.path)
    start = time.monotonic()
    proc = fab("send-file", "--size", "1", "--timeout", "5", inv=lab.path, check=False, timeout=600)
    print(f"\npartition client|sockserver: send-file --timeout 5 failed in {time.monotonic() - start:.1f} s: "
          f"{proc.stderr.strip()}")
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert f"file server {lab.host('sockserver').address}:" in proc.stderr and "no answer within 5 s" in proc.stderr  # the client's wait
    fab("heal", "--host", "sockserver", inv=lab.path)
    assert json.loads(fab("send-file", "--size", "1", "--json", inv=lab.path).stdout)["match"]


# --- --for ------------------------------------------------------------------------------------------------------

def test_for_undoes_the_fault_after_the_fab_command_has_exited(lab, hosts):
    # long enough for the look below to come before it ends, on a box busy with a second test process
    proc = fab("impair", "pyro3", "--loss", "50", "--rate", "1mbit", "--for", "10", inv=lab.path)
    assert "pyro3" in proc.stdout  # fab has exited; only the host's timer is left to undo it
    assert faults.leftovers(hosts, ["pyro3"])["pyro3"]
    start = time.monotonic()
    clean = wait_for(lambda: not faults.leftovers(hosts, ["pyro3"])["pyro3"], timeout=60)
    print(f"\n--for 10: pyro3 clean again {time.monotonic() - start:.1f} s after fab exited")
    assert clean
    assert json.loads(fab("status", "--json", inv=lab.path).stdout)["faults"] == []


# --- programs -----------------------------------------------------------------------------------------------

def test_kill_of_a_worker_is_a_crash_that_supervisord_restarts(lab, hosts):
    before = programs(hosts, "worker1")["labnodes-celery-worker"]
    fab("fault", "kill", "worker1:labnodes-celery-worker", inv=lab.path)
    after = wait_for(lambda: (p := programs(hosts, "worker1")["labnodes-celery-worker"])[0] == "RUNNING"
                     and p[1] != before[1] and p, timeout=60)
    print(f"\nkill worker1's worker: pid {before[1]} -> {after[1]}, RUNNING again")
    assert after


def test_a_stopped_ring_node_is_named_and_comes_back_without_restarting_the_others(lab, hosts):
    pids = {h: programs(hosts, h)["labnodes-ring"][1] for h in ("pyro1", "pyro3")}
    fab("fault", "stop", "pyro2:labnodes-ring", inv=lab.path)
    start = time.monotonic()
    proc = fab("run-ring", inv=lab.path, check=False, timeout=300)
    print(f"\npyro2 stopped: run-ring failed in {time.monotonic() - start:.1f} s: {proc.stderr.strip()}")
    assert proc.returncode == 1 and "pyro2" in proc.stderr
    status = json.loads(fab("status", "--json", inv=lab.path).stdout)
    assert [(f["host"], f["kind"]) for f in status["faults"]] == [("pyro2", "stop")]
    fab("fault", "start", "pyro2:labnodes-ring", inv=lab.path)
    result = json.loads(fab("run-ring", "--json", inv=lab.path).stdout)
    assert [hop["node"] for hop in result["trace"]][:3] == ["pyro1", "pyro2", "pyro3"]
    assert {h: programs(hosts, h)["labnodes-ring"][1] for h in ("pyro1", "pyro3")} == pids
    assert json.loads(fab("status", "--json", inv=lab.path).stdout)["faults"] == []


def test_kill_for_keeps_a_ring_node_down_until_the_time_is_up(lab, hosts):
    # the run below must start before the time is up: 5 s was not always enough beside a second test process
    fab("fault", "kill", "pyro3", "--for", "20", inv=lab.path)
    assert programs(hosts, "pyro3")["labnodes-ring"][0] != "RUNNING"
    proc = fab("run-ring", inv=lab.path, check=False, timeout=300)
    assert proc.returncode == 1 and "pyro3" in proc.stderr
    assert wait_for(lambda: programs(hosts, "pyro3")["labnodes-ring"][0] == "RUNNING", timeout=60)
    assert wait_for(lambda: fab("run-ring", inv=lab.path, check=False).returncode == 0, timeout=60, every=2)


def test_stopping_a_host_stops_its_labnodes_programs_but_not_sshd(lab, hosts):
    fab("fault", "stop", "sockserver", inv=lab.path)
    states = programs(hosts, "sockserver")
    print(f"\nfault stop sockserver: {states}")
    assert states["labnodes-math"][0] == states["labnodes-file"][0] == "STOPPED"
    assert states["sshd"][0] == "RUNNING"
    proc = fab("fault", "stop", "sockserver:sshd", inv=lab.path, check=False)
    assert proc.returncode == 1 and "not a labnodes program" in proc.stderr
    fab("fault", "start", "sockserver", inv=lab.path)
    assert {s for s, _ in programs(hosts, "sockserver").values()} == {"RUNNING"}


def test_unknown_hosts_and_programs_are_one_line_errors(lab, hosts):
    for args, says in [(("fault", "stop", "nosuch"), f"not a host of cluster {lab.cluster}"),
                       (("fault", "stop", "pyro1:labnodes-nope"), "no supervised program 'labnodes-nope'"),
                       (("fault", "pause", "pyro1"), "one of stop, start, kill"),
                       (("partition", "pyro1", "pyro1"), "two different hosts"),
                       (("impair", "pyro1", "--loss", "0"), "must be above 0")]:
        proc = fab(*args, inv=lab.path, check=False)
        assert proc.returncode == 1 and says in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# --- heal, status, scenario -----------------------------------------------------------------------------------

def test_heal_with_no_host_leaves_no_rule_qdisc_or_record_anywhere(lab, hosts):
    fab("impair", "pyro1", "--loss", "3", "--rate", "20mbit", inv=lab.path)
    fab("impair", "worker2", "--rate", "5mbit", "--for", "600", inv=lab.path)
    fab("partition", "client", "broker", "--for", "600", inv=lab.path)
    fab("fault", "stop", "pyro3", inv=lab.path)
    status = json.loads(fab("status", "--json", inv=lab.path).stdout)
    shown = sorted((f["host"], f["kind"]) for f in status["faults"])
    print(f"\nin force: {shown}")
    assert shown == [("broker", "partition"), ("client", "partition"), ("pyro1", "impair"), ("pyro3", "stop"),
                     ("worker2", "impair")]
    for f in status["faults"]:
        assert f["since"] and f["what"]
        assert (f["until"] is None) == (f["host"] in ("pyro1", "pyro3"))
    table = fab("status", inv=lab.path).stdout
    assert "faults in force" in table and "loss 3% each way" in table
    fab("heal", inv=lab.path)
    left = {n: v for n, v in faults.leftovers(hosts).items() if v}
    assert not left
    assert programs(hosts, "pyro3")["labnodes-ring"][0] == "RUNNING"
    timers = hosts.run("worker2", "ps -eo args | grep -c '[s]leep 600' || true").stdout.strip()
    assert timers == "0"  # the --for timers were ended, not left to fire later


def test_heal_sweeps_tagged_rules_that_lost_their_record(lab, hosts):
    fab("impair", "pyro1", "--loss", "2", "--rate", "5mbit", inv=lab.path)
    hosts.run("pyro1", f"rm -f {faults.STATE_DIR}/*")  # as if the record were lost (a fab killed half-way)
    assert json.loads(fab("status", "--json", inv=lab.path).stdout)["faults"] == []
    out = fab("heal", "--host", "pyro1", inv=lab.path).stdout
    print(f"\n{out}")
    assert "swept" in out and faults.leftovers(hosts, ["pyro1"]) == {"pyro1": []}


def test_a_scenario_runs_alongside_a_run_and_leaves_nothing_behind(lab, hosts, tmp_path):
    plan = tmp_path / "short.yml"
    # pyro3 down from 1 s to 9 s: room for a ring run to fail while it is, on a box busy with a second test process
    plan.write_text("name: short\nend: 11\nsteps:\n"
                    "  - {at: 1, stop: 'pyro3:labnodes-ring'}\n"
                    "  - {at: 2, impair: pyro2, loss: 5, rate: 50mbit}\n"
                    "  - {at: 3, partition: [client, sockserver]}\n"
                    "  - {at: 9, start: pyro3}\n")
    result = json.loads(fab("scenario", str(plan), "--run", "ring", "--json", inv=lab.path, timeout=600).stdout)
    for e in result["events"]:
        print(f"+{e['t']:5.2f}s {e['kind']:<5} {'ok ' if e['ok'] else 'ERR'} {e['what'][:100]}")
    assert all(e["ok"] for e in result["events"] if e["kind"] in ("fault", "heal"))
    assert result["failed_attempts"] >= 1 and result["ok_after_heal"]
    assert any("pyro3" in e["what"] for e in result["events"] if e["kind"] == "ring" and not e["ok"])


def test_ctrl_c_during_a_scenario_heals_everything(lab, hosts, tmp_path):
    plan = tmp_path / "long.yml"
    plan.write_text("steps:\n  - {at: 0, partition: [client, sockserver]}\n  - {at: 0.5, stop: pyro2}\n"
                    "  - {at: 1, impair: pyro1, loss: 5}\n  - {at: 300, heal: all}\n")
    # PYTHONFAULTHANDLER: if fab does not end, SIGABRT makes it print every thread's stack (seen once in CI)
    env = dict(os.environ, LABKIT_INVENTORY=str(lab.path), PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1")
    proc = subprocess.Popen([FAB, "scenario", str(plan), "--run", "math"], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "impair pyro1" in line:
                break
        assert len(faults.in_force(hosts)) == 4  # two halves of the partition, the stop, the impairment
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            out, err = proc.communicate(timeout=30)
            pytest.fail(f"fab scenario did not end within 300 s of Ctrl-C; its threads:\n{err[-6000:]}\n"
                        f"output:\n{''.join(seen)}{out[-3000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
    print("\n" + "".join(seen) + out + err)
    assert proc.returncode == 130 and "interrupted; healed" in err
    assert faults.in_force(hosts) == [] and not any(faults.leftovers(hosts).values())
    assert programs(hosts, "pyro2")["labnodes-ring"][0] == "RUNNING"
