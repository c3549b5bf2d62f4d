"""`fab check` on an embedded cluster: healthy, then broken on purpose one thing at a time, then a class of three.

The cluster is conftest's `course` (a copy of inventory/netns named `ckt`, up once for the session and shared
with test_faults). Each break test breaks exactly one thing, runs the real `fab check --json`, asserts that the
check naming that thing fails on the right host, that its dependents are blocked by it and that every other check
passes, then repairs it and waits until the cluster checks clean again, so the next test starts from a healthy
cluster.

Every check id is broken by at least one test here (`test_every_check_id_is_broken_by_some_test` keeps it so).
LABKIT_CHECKS_CLUSTER=INVENTORY runs it against a cluster that is already up (and leaves it up).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
import xml.etree.ElementTree as ET

import pytest

from labkit import REPO, STATE, checks, inventory
from labkit.backends import netns
from tests.cluster.conftest import copy_inventory, fab, poll, ssh

# Every check id, and the test below that breaks it and sees it fail (the healthy test wants one for each id).
BROKEN_BY = {
    "reach.ssh": "test_cut_network_fails_reach_of_that_host_and_blocks_its_checks",
    "reach.network": "test_cut_network_fails_reach_of_that_host_and_blocks_its_checks",
    "host.probe": "test_python3_that_cannot_run_the_probe_fails_the_probe_and_blocks_the_host",
    "host.clock": "test_a_worker_whose_clock_reads_five_minutes_ahead_fails_its_clock_check_only",
    "host.hostname": "test_hostname_changed_on_one_host_fails_its_hostname_check_only",
    "host.settings": "test_settings_readable_by_everyone_fail_the_settings_check_of_that_host_only",
    "host.supervisord": "test_supervisord_not_answering_fails_on_its_host_and_blocks_every_service_check_there",
    "host.labnodes": "test_labnodes_unimportable_from_its_venv_fails_on_the_client_and_blocks_every_run",
    "service.redis.running": "test_stopped_server_fails_its_running_check_and_blocks_what_needs_it",
    "service.redis.listens": "test_redis_bound_to_every_address_fails_its_listens_check",
    "service.redis.auth": "test_redis_answering_without_password_fails_its_auth_check_and_blocks_the_broker_checks",
    "service.flower.running": "test_stopped_server_fails_its_running_check_and_blocks_what_needs_it",
    "service.flower.listens": "test_server_bound_to_a_wildcard_or_loopback_address_fails_its_listens_check",
    "service.flower.auth": "test_flower_answering_without_password_fails_its_auth_check_only",
    "service.nameserver.running": "test_stopped_name_server_fails_its_running_check_and_blocks_the_lap",
    "service.nameserver.listens": "test_server_bound_to_a_wildcard_or_loopback_address_fails_its_listens_check",
    "service.celery.running": "test_stopped_worker_fails_its_running_check_and_blocks_the_celery_run",
    "service.celery.broker": "test_redis_password_changed_on_the_workers_only_fails_their_broker_check",
    "service.ring.running": "test_stopped_ring_node_fails_on_its_host_and_blocks_the_lap",
    "service.ring.listens": "test_server_bound_to_a_wildcard_or_loopback_address_fails_its_listens_check",
    "service.ring.next": "test_ring_node_passing_to_the_wrong_successor_fails_its_next_check",
    "service.math.running": "test_stopped_server_fails_its_running_check_and_blocks_what_needs_it",
    "service.math.listens": "test_server_bound_to_a_wildcard_or_loopback_address_fails_its_listens_check",
    "service.file.running": "test_stopped_server_fails_its_running_check_and_blocks_what_needs_it",
    "service.file.listens": "test_server_bound_to_a_wildcard_or_loopback_address_fails_its_listens_check",
    "app.ring": "test_ring_hop_refused_with_every_service_up_fails_the_lap_only",
    "app.celery": "test_worker_on_another_broker_database_fails_the_celery_run_naming_it",
    "app.math": "test_math_server_that_answers_wrongly_fails_the_math_run_only",
    "app.file": "test_read_only_file_root_fails_the_file_round_trip_only",
}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--no-first-run", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def ck(course):
    """The shared cluster, by this module's short name."""
    return course


def check(inv, *args: str) -> dict:
    proc = fab("check", "--json", *args, inv=inv.path, check=False)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    return json.loads(proc.stdout)


def outcomes(report: dict) -> dict[str, dict]:
    return {f"{c['id']}@{c['host']}": c for c in report["checks"]}


def on(inv, host: str, command: str) -> str:
    return ssh(inv.host(host).address, command).stdout


def wait_healthy(inv, seconds: float = 90) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        report = check(inv)
        if report["status"] == "ok" or time.monotonic() > deadline:
            bad = [f"{k}: {c['outcome']} {c['found']}" for k, c in outcomes(report).items() if c["outcome"] != "pass"]
            assert report["status"] == "ok", f"the cluster did not recover: {bad}"
            return report
        time.sleep(3)


def assert_broken(report: dict, failed: set[str], blocked: dict[str, str]) -> None:
    """Exactly `failed` fail, exactly `blocked` are blocked (each by the check named), every other check passes."""
    got = outcomes(report)
    assert {k for k, c in got.items() if c["outcome"] == "fail"} == failed, \
        {k: c["found"] for k, c in got.items() if c["outcome"] == "fail"}
    assert {k: c["blocked_by"] for k, c in got.items() if c["outcome"] == "blocked"} == blocked
    for k in failed:
        c = got[k]
        assert c["expected"] and c["found"] and c["hint"], c
    assert report["status"] == "failing"


def host_checks(report: dict, host: str) -> set[str]:
    return {k for k, c in outcomes(report).items() if c["host"] == host}


def check_broken(inv, failed: set[str], blocked: dict[str, str], seconds: float = 90, *args: str) -> dict:
    """`fab check` until exactly `failed` fail and `blocked` are blocked (a restarted program takes a moment to
    bind), at most `seconds`; then assert_broken on the last report, so a wrong outcome shows what was found."""
    deadline = time.monotonic() + seconds
    while True:
        report = check(inv, *args)
        got = outcomes(report)
        if ({k for k, c in got.items() if c["outcome"] == "fail"} == failed
                and {k: c.get("blocked_by") for k, c in got.items() if c["outcome"] == "blocked"} == blocked) \
                or time.monotonic() > deadline:
            assert_broken(report, failed, blocked)
            return report
        time.sleep(2)


def conf_of(inv, host: str, program: str) -> str:
    return on(inv, host, f"grep -l '^\\[program:{program}\\]' /etc/supervisor/conf.d/*.conf").strip()


@contextmanager
def program_changed(inv, host: str, program: str, sed: str):
    """The program's section of its supervisord file edited by the sed command `sed` and applied (supervisorctl
    update restarts it); the file put back and applied again afterwards."""
    conf = conf_of(inv, host, program)
    on(inv, host, f"cp -p {conf} /root/{program}.conf.orig && "
                  f"sed -i '/^\\[program:{program}\\]/,/^\\[/ {sed}' {conf} && supervisorctl update")
    try:
        yield
    finally:
        on(inv, host, f"cp -p /root/{program}.conf.orig {conf} && supervisorctl update")


@contextmanager
def done_then_undone(inv, host: str, do: str, undo: str):
    on(inv, host, do)
    try:
        yield
    finally:
        on(inv, host, undo)


def setting(inv, host: str, name: str) -> str:
    """One value of the host's labnodes.toml (a string or a number)."""
    line = on(inv, host, f"grep '^{name} = ' /etc/labnodes/labnodes.toml").strip()
    return line.split(" = ", 1)[1].strip('"')


# --- healthy ---------------------------------------------------------------------------------------------------

def test_healthy_cluster_passes_every_check_and_writes_junit_and_html(ck, tmp_path):
    junit, page = tmp_path / "check.xml", tmp_path / "check.html"
    proc = fab("check", "--junit", str(junit), "--html", str(page), inv=ck.path, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert proc.stdout.strip().splitlines()[-1].split()[1] == "passed"
    report = check(ck)
    layers = {c["layer"] for c in report["checks"]}
    assert layers == {"reach", "host", "service", "app"} and report["status"] == "ok"
    assert {c["id"] for c in report["checks"]} == set(BROKEN_BY)  # a new check needs a test that breaks it
    assert checks.check_ids() == set(BROKEN_BY)  # what grading files may name: every check, and only those
    assert all(callable(globals()[test]) for test in BROKEN_BY.values())
    assert all(c["outcome"] == "pass" for c in report["checks"])
    cases = ET.parse(junit).getroot().iter("testcase")
    hosts_by_case = {(t.get("classname"), t.get("name")) for t in cases}
    assert (f"{ck.cluster}.service.ring.listens", "pyro2") in hosts_by_case and len(hosts_by_case) == len(report["checks"])
    assert report["ring_trace"]["gcd"] == 6 and set(report["celery"]["hosts"]) == {"worker1", "worker2"}
    text = page.read_text()
    assert "<svg" in text and "<script" not in text and "http://" not in text.replace("http://www.w3.org", "")


def test_html_report_renders_in_headless_chromium_with_every_host(ck, tmp_path):
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is not installed (scripts/setup.sh installs it): the report needs a browser"
    page, shot = tmp_path / "check.html", tmp_path / "check.png"
    fab("check", "--html", str(page), inv=ck.path)
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1800"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    subprocess.run([chromium, *flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 50_000  # a blank page is a few kB
    keep = os.environ.get("LABKIT_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
    svg = dom[dom.index("<svg"):dom.index("</svg>")]
    for h in ck.hosts:
        assert f">{h.name}</text>" in svg and h.address in svg, h.name
    assert "Pyro4 ring: pyro1 → pyro2 → pyro3 → pyro1" in svg


# --- broken on purpose, one thing at a time ----------------------------------------------------------------------

def test_stopped_worker_fails_its_running_check_and_blocks_the_celery_run(ck):
    on(ck, "worker1", "supervisorctl stop labnodes-celery-worker")
    try:
        report = check(ck)
    finally:
        on(ck, "worker1", "supervisorctl start labnodes-celery-worker")
    assert_broken(report, {"service.celery.running@worker1"},
                  {"app.celery@broker": "service.celery.running@worker1"})
    wait_healthy(ck)


def test_stopped_ring_node_fails_on_its_host_and_blocks_the_lap(ck):
    on(ck, "pyro2", "supervisorctl stop labnodes-ring")
    try:
        report = check(ck)
    finally:
        on(ck, "pyro2", "supervisorctl start labnodes-ring")
    assert_broken(report, {"service.ring.running@pyro2"},
                  {"service.ring.listens@pyro2": "service.ring.running@pyro2",
                   "service.ring.next@pyro2": "service.ring.running@pyro2",
                   "app.ring@pyro1": "service.ring.running@pyro2"})
    assert "STOPPED" in outcomes(report)["service.ring.running@pyro2"]["found"]
    wait_healthy(ck)


def test_a_ring_node_that_cannot_start_says_why_in_its_running_check(ck):
    """A ring node with another HMAC key than the name server's exits at start, again and again: the check said
    only "labnodes-ring BACKOFF" and "supervisorctl start labnodes-ring", which would end the same way."""
    settings = "/etc/labnodes/labnodes.toml"
    with done_then_undone(ck, "pyro2", f"cp -p {settings} /root/labnodes.toml.cx && sed -i "
                                       f"'s/^hmac_key = .*/hmac_key = \"not-the-clusters\"/' {settings} && "
                                       "supervisorctl restart labnodes-ring >/dev/null || true",
                          f"cp -p /root/labnodes.toml.cx {settings} && supervisorctl restart labnodes-ring"):
        check_broken(ck, {"service.ring.running@pyro2"},
                     {"service.ring.listens@pyro2": "service.ring.running@pyro2",
                      "service.ring.next@pyro2": "service.ring.running@pyro2",
                      "app.ring@pyro1": "service.ring.running@pyro2"})
        # between two of supervisord's starts (BACKOFF: "its log ends"), not during one (STARTING: no log line);
        # on a busy box a run can outlive startsecs and be started again as RUNNING ("its log's last error")
        reports = []
        poll(lambda: reports.append(check(ck)) or "cannot register" in outcomes(reports[-1])[
            "service.ring.running@pyro2"]["found"], timeout=90, interval=1)
    running = outcomes(reports[-1])["service.ring.running@pyro2"]
    assert re.search(r"its log(?: ends|'s last error): labnodes: error: cannot register labkit\.ring\.pyro2",
                     running["found"]), running
    assert "hmac mismatch" in running["found"] and "fix what its log" in running["hint"]
    wait_healthy(ck)


def infra_pytest(inv, junit: Path) -> tuple[subprocess.CompletedProcess, dict[str, tuple[str, str]]]:
    """`pytest tests/infra --ansible-inventory=INV` as an instructor runs it; with each test case's outcome from
    its JUnit XML: {check@host: (passed / failed / skipped, the message)}."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "tests/infra", f"--ansible-inventory={inv.path}", "-q",
                           "-p", "no:cacheprovider", f"--junitxml={junit}"], cwd=REPO, capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)
    cases = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("name").removeprefix("test_check[").removesuffix("]")
        end = next((e for e in case if e.tag in ("failure", "error", "skipped")), None)
        cases[name] = ("passed", "") if end is None else \
            ({"error": "failed", "failure": "failed"}.get(end.tag, end.tag), end.get("message") or "")
    return proc, cases


def test_the_checks_as_pytest_tests_pass_fail_and_skip_as_fab_check_says(ck, tmp_path):
    """tests/infra: one test per check and host; a broken program fails its test, its dependents are skipped as
    blocked by it, and pytest's exit status says so. Broken: pyro2's ring node stopped."""
    every = {f"{c['id']}@{c['host']}" for c in check(ck)["checks"]}
    proc, cases = infra_pytest(ck, tmp_path / "healthy.xml")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert set(cases) == every and {o for o, _ in cases.values()} == {"passed"}
    blocked = {"service.ring.listens@pyro2", "service.ring.next@pyro2", "app.ring@pyro1"}
    on(ck, "pyro2", "supervisorctl stop labnodes-ring")
    try:
        proc, cases = infra_pytest(ck, tmp_path / "broken.xml")
    finally:
        on(ck, "pyro2", "supervisorctl start labnodes-ring")
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert {k for k, (o, _) in cases.items() if o == "failed"} == {"service.ring.running@pyro2"}
    assert "STOPPED" in cases["service.ring.running@pyro2"][1]
    assert {k: m for k, (o, m) in cases.items() if o == "skipped"} == \
        {k: "blocked by service.ring.running@pyro2" for k in blocked}
    assert {k for k, (o, _) in cases.items() if o == "passed"} == every - blocked - {"service.ring.running@pyro2"}
    wait_healthy(ck)


def test_redis_password_changed_on_the_workers_only_fails_their_broker_check(ck):
    settings = "/etc/labnodes/labnodes.toml"
    for w in ("worker1", "worker2"):
        on(ck, w, f"cp -p {settings} /root/labnodes.toml.orig && "
                  f"sed -i 's/^redis_password = .*/redis_password = \"not-the-password\"/' {settings} && "
                  "supervisorctl restart labnodes-celery-worker")
    try:
        report = check(ck)
    finally:
        for w in ("worker1", "worker2"):
            on(ck, w, f"cp -p /root/labnodes.toml.orig {settings} && supervisorctl restart labnodes-celery-worker")
    got = outcomes(report)
    for w in ("worker1", "worker2"):
        c = got[f"service.celery.broker@{w}"]
        assert c["outcome"] == "fail" and "WRONGPASS" in c["found"], c
    assert got["app.celery@broker"]["outcome"] == "blocked"
    assert got["app.celery@broker"]["blocked_by"].startswith("service.celery.")
    unrelated = {k: c for k, c in got.items() if c["host"] not in ("worker1", "worker2") and k != "app.celery@broker"}
    assert all(c["outcome"] == "pass" for c in unrelated.values()), \
        {k: c["found"] for k, c in unrelated.items() if c["outcome"] != "pass"}
    assert got["service.redis.auth@broker"]["outcome"] == "pass"
    wait_healthy(ck)


def test_cut_network_fails_reach_of_that_host_and_blocks_its_checks(ck):
    veth = next(n.veth for n in netns.Cluster.from_inventory(ck).nodes if n.name == "worker2")
    subprocess.run(["ip", "link", "set", veth, "down"], check=True)
    try:
        report = check(ck, "--timeout", "8")
    finally:
        subprocess.run(["ip", "link", "set", veth, "up"], check=True)
    got = outcomes(report)
    on_worker2 = host_checks(report, "worker2") - {"reach.ssh@worker2", "reach.network@worker2"}
    assert on_worker2 and {"service.celery.running@worker2", "host.hostname@worker2"} <= on_worker2
    blocked = {k: "reach.ssh@worker2" for k in on_worker2}
    blocked["app.celery@broker"] = "reach.ssh@worker2"
    assert_broken(report, {"reach.ssh@worker2", "reach.network@worker2"}, blocked)
    assert "worker1" in got["reach.network@worker2"]["found"]  # seen from the other hosts
    wait_healthy(ck)


def test_a_link_cut_between_two_ring_hosts_sends_the_instructor_to_the_network_not_the_ring(ck):
    """`fab partition pyro2 pyro3`: both hosts' reach.network said "cluster interface is down" (every other host
    reached them), and app.ring said the ring broke (ring programs: look at supervisorctl) and "process gone?"."""
    fab("partition", "pyro2", "pyro3", inv=ck.path)
    try:
        report = check_broken(ck, {"reach.network@pyro2", "reach.network@pyro3", "app.ring@pyro1"}, {}, 90,
                              "--timeout", "8")
    finally:
        fab("heal", inv=ck.path)
    got = outcomes(report)
    assert got["reach.network@pyro3"]["hint"].startswith("6 other hosts reach pyro3, pyro2 cannot: a firewall rule")
    ring = got["app.ring@pyro1"]
    assert ring["hint"] == ("pyro2 cannot connect to pyro3 (reach.network@pyro3) on the cluster network, and this run "
                            "needs that connection: fix the network first"), ring
    assert "pyro2 -> pyro3" in ring["found"] and "process gone" not in ring["found"], ring
    wait_healthy(ck)


def test_a_math_server_moved_to_another_port_than_the_clients_is_named_in_the_hint(ck):
    """The math server's math_port edited by hand on its host: it listens (its own checks pass) where the client
    does not ask. The hint was the math protocol's; it now names both addresses and the two settings files."""
    settings = "/etc/labnodes/labnodes.toml"
    with done_then_undone(ck, "sockserver", f"cp -p {settings} /root/labnodes.toml.cx && sed -i "
                                            f"'s/^math_port = .*/math_port = 6011/' {settings} && "
                                            "supervisorctl restart labnodes-math >/dev/null",
                          f"cp -p /root/labnodes.toml.cx {settings} && supervisorctl restart labnodes-math"):
        report = check_broken(ck, {"app.math@sockserver"}, {})
    math = outcomes(report)["app.math@sockserver"]
    address = ck.host("sockserver").address
    assert "cannot connect" in math["found"]
    assert math["hint"].startswith(f"the client asks {address}:") and f"listens on {address}:6011" in math["hint"]
    wait_healthy(ck)


def test_a_client_with_another_hmac_key_is_told_so_not_sent_to_a_ring_hop(ck):
    settings = "/etc/labnodes/labnodes.toml"
    with done_then_undone(ck, "client", f"cp -p {settings} /root/labnodes.toml.cx && sed -i "
                                        f"'s/^hmac_key = .*/hmac_key = \"not-the-clusters\"/' {settings}",
                          f"cp -p /root/labnodes.toml.cx {settings}"):
        report = check_broken(ck, {"app.ring@pyro1"}, {})
    ring = outcomes(report)["app.ring@pyro1"]
    name_server = ck.host(ck.groups["nameservers"][0]).address
    assert "wrong HMAC key" in ring["found"], ring
    assert ring["hint"].startswith(f"{name_server}:9090 refused the client's hmac_key"), ring


def test_math_server_that_answers_wrongly_fails_the_math_run_only(ck):
    conf = on(ck, "sockserver", "grep -l '^\\[program:labnodes-math\\]' /etc/supervisor/conf.d/*.conf").strip()
    python = "$(tr '\\0' '\\n' < /proc/$(supervisorctl pid labnodes-math)/cmdline | head -1)"
    where = on(ck, "sockserver", f"{python} -c 'from labnodes import config; s = config.load(); "
                                 "print(s.math_host, s.math_port)'").split()
    fake = ("import socketserver, sys\n"
            "class H(socketserver.StreamRequestHandler):\n"
            "    def handle(self):\n"
            "        for line in self.rfile:\n"
            "            self.wfile.write(b'OK gcd=7 lcm=1\\n')\n"
            "socketserver.ThreadingTCPServer.allow_reuse_address = True\n"
            "socketserver.ThreadingTCPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()\n")
    on(ck, "sockserver", f"cat > /root/fakemath.py <<'EOF'\n{fake}EOF\ncp -p {conf} /root/math.conf.orig && "
       f"sed -i '/^\\[program:labnodes-math\\]/,/^\\[/ s|^command=.*|command=/usr/bin/python3 /root/fakemath.py "
       f"{where[0]} {where[1]}|' {conf} && supervisorctl update && sleep 1")
    try:
        report = check(ck)
    finally:
        on(ck, "sockserver", f"cp -p /root/math.conf.orig {conf} && supervisorctl update")
    assert_broken(report, {"app.math@sockserver"}, {})
    c = outcomes(report)["app.math@sockserver"]
    assert "gcd=7" in c["found"] and "gcd=6" in c["expected"]
    wait_healthy(ck)


def test_settings_readable_by_everyone_fail_the_settings_check_of_that_host_only(ck):
    on(ck, "client", "chmod 0644 /etc/labnodes/labnodes.toml")
    try:
        report = check(ck)
    finally:
        on(ck, "client", "chmod 0600 /etc/labnodes/labnodes.toml")
    assert_broken(report, {"host.settings@client"}, {})
    assert "mode 0644" in outcomes(report)["host.settings@client"]["found"]


def test_a_setting_of_the_wrong_type_fails_the_settings_check_in_labnodes_own_words(ck):
    """Valid TOML that labnodes refuses (the ring node would not start again with it): the probe passed
    host.settings, then crashed on the value, which showed as host.probe failing ("install python3")."""
    settings = "/etc/labnodes/labnodes.toml"
    with done_then_undone(ck, "pyro3", f"cp -p {settings} /root/labnodes.toml.cx && sed -i '/^ring_port/d' {settings} "
                                       f"&& echo 'ring_port = \"abc\"' >> {settings}",
                          f"cp -p /root/labnodes.toml.cx {settings}"):
        report = check_broken(ck, {"host.settings@pyro3"}, {})
    assert outcomes(report)["host.settings@pyro3"]["found"] == f"{settings}: ring_port must be int, got 'abc'"


def test_hostname_changed_on_one_host_fails_its_hostname_check_only(ck):
    with done_then_undone(ck, "client", "hostname cxwrong", "hostname client"):
        report = check_broken(ck, {"host.hostname@client"}, {})
    c = outcomes(report)["host.hostname@client"]
    assert c["found"] == "cxwrong" and c["expected"] == "client"
    wait_healthy(ck)


def test_supervisord_not_answering_fails_on_its_host_and_blocks_every_service_check_there(ck):
    # supervisord is the host's PID 1 (netns): it is not stopped; its socket moves away and comes back
    sock = "/var/run/supervisor.sock"
    with done_then_undone(ck, "pyro3", f"mv {sock} {sock}.cx", f"mv {sock}.cx {sock}"):
        report = check_broken(ck, {"host.supervisord@pyro3"}, {
            "service.ring.running@pyro3": "host.supervisord@pyro3",
            "service.ring.listens@pyro3": "host.supervisord@pyro3",
            "service.ring.next@pyro3": "host.supervisord@pyro3",
            "app.ring@pyro1": "host.supervisord@pyro3"})
    assert "no answer" in outcomes(report)["host.supervisord@pyro3"]["found"]
    wait_healthy(ck)


def test_labnodes_unimportable_from_its_venv_fails_on_the_client_and_blocks_every_run(ck):
    site = "$(ls -d /opt/labnodes/venv/lib/python3*/site-packages)"
    with done_then_undone(ck, "client", f"mv {site}/labnodes {site}/labnodes.cx",
                          f"mv {site}/labnodes.cx {site}/labnodes"):
        report = check_broken(ck, {"host.labnodes@client"},
                              {k: "host.labnodes@client" for k in
                               ("app.ring@pyro1", "app.celery@broker", "app.math@sockserver", "app.file@sockserver")})
    assert "No module named 'labnodes'" in outcomes(report)["host.labnodes@client"]["found"]
    wait_healthy(ck)


def test_python3_that_cannot_run_the_probe_fails_the_probe_and_blocks_the_host(ck):
    # /usr is the box's on netns hosts: a broken python3 is bind-mounted in the client's own mount namespace only
    fake = "#!/bin/sh\\necho python3: broken on purpose >&2\\nexit 1\\n"
    with done_then_undone(ck, "client", f"printf '{fake}' > /root/cx-python3 && chmod 0755 /root/cx-python3 && "
                                        "mount --bind /root/cx-python3 /usr/bin/python3",
                          "umount /usr/bin/python3"):
        report = check(ck)
    on_client = host_checks(report, "client") - {"reach.ssh@client", "reach.network@client", "host.probe@client"}
    assert {"host.hostname@client", "host.settings@client", "host.labnodes@client"} <= on_client
    blocked = {k: "host.probe@client" for k in on_client}
    blocked.update({k: "host.probe@client" for k in
                    ("app.ring@pyro1", "app.celery@broker", "app.math@sockserver", "app.file@sockserver")})
    assert_broken(report, {"host.probe@client"}, blocked)
    assert "broken on purpose" in outcomes(report)["host.probe@client"]["found"]
    wait_healthy(ck)


AHEAD_PY = """import os, sys, time
name, args = sys.argv[1], sys.argv[2:]
if name != "/usr/bin/python3" or args[:1] != ["-c"]:  # another python (the venv's, which is this file too): itself
    os.execv("/root/cx-real-python3", [name, *args])  # argv[0] tells Python which venv it runs for
real = time.time
time.time = lambda: real() + 300
sys.argv = ["-c", *args[2:]]
exec(compile(args[1], "<string>", "exec"), {"__name__": "__main__"})
"""


def test_a_worker_whose_clock_reads_five_minutes_ahead_fails_its_clock_check_only(ck):
    # A netns host shares the box's clock (a time namespace offsets CLOCK_MONOTONIC, never the wall clock), so here
    # worker1's /usr/bin/python3 (the inventory's ansible_python_interpreter, which runs the probe) reads the clock
    # 300 s ahead: a script bind-mounted over it in worker1's own mount namespace runs a copy of the real
    # interpreter with time.time shifted. `make vm-test` sets a VM's real clock instead.
    wrapper = '#!/bin/sh\\nexec /root/cx-real-python3 /root/cx-ahead.py "$0" "$@"\\n'
    with done_then_undone(ck, "worker1",
                          f"cp /usr/bin/python3.11 /root/cx-real-python3 && printf '{wrapper}' > /root/cx-python3 && "
                          f"printf %s {shlex.quote(AHEAD_PY)} > /root/cx-ahead.py && chmod 0755 /root/cx-python3 && "
                          "mount --bind /root/cx-python3 /usr/bin/python3",
                          "umount /usr/bin/python3; rm -f /root/cx-real-python3 /root/cx-python3 /root/cx-ahead.py"):
        report = check(ck)
    assert_broken(report, {"host.clock@worker1"}, {})  # its jobs still run: its real clock is right
    found = outcomes(report)["host.clock@worker1"]["found"]
    assert 299 <= int(found.split()[0]) <= 300 and found.endswith("s ahead of the control machine's clock"), found
    assert "drops its jobs as expired" in outcomes(report)["host.clock@worker1"]["hint"]
    wait_healthy(ck)


def test_a_ring_host_whose_clock_reads_ahead_is_told_in_fab_run_rings_last_line(ck):
    # The +ms column is each hop's own clock. pyro2's ring node reads the clock 298 s ahead: a sitecustomize on its
    # PYTHONPATH shifts time.time (netns hosts share the box's clock).
    on(ck, "pyro2", "mkdir -p /root/cx-skew && printf 'import time\\n_real = time.time\\n"
                    "time.time = lambda: _real() + 298\\n' > /root/cx-skew/sitecustomize.py")
    runs = []

    def ran_round():  # a restarted ring node registers again first: a run may fail until it has
        runs.append(fab("run-ring", inv=ck.path, check=False))
        return runs[-1].returncode == 0

    try:
        with program_changed(ck, "pyro2", "labnodes-ring",
                             r's|^environment=\(.*\)$|environment=\1,PYTHONPATH="/root/cx-skew"|'):
            assert poll(ran_round, timeout=60, interval=1), runs[-1].stdout + runs[-1].stderr
            skewed = runs[-1].stdout
    finally:
        on(ck, "pyro2", "rm -rf /root/cx-skew")
    last = skewed.strip().splitlines()[-1]
    assert last.startswith("the hops' times are read on each host's own clock, and these disagree: pyro2's reads "
                           "+2980") and "host.clock" in last, skewed
    assert poll(ran_round, timeout=60, interval=1), runs[-1].stdout + runs[-1].stderr
    assert "disagree" not in runs[-1].stdout  # pyro2 back on the box's clock: no such line
    wait_healthy(ck)


def test_redis_answering_without_password_fails_its_auth_check_and_blocks_the_broker_checks(ck):
    # CONFIG is an administrative command: only Redis's default user may run it, whose password no host holds
    addr = ck.host("broker").address
    pw = (STATE / ck.cluster / "secrets" / "redis_admin_password").read_text().strip()
    cli = f"redis-cli --no-auth-warning -h {addr} -p {setting(ck, 'broker', 'redis_port')}"
    # without a password Redis's protected mode refuses every client not on loopback (-DENIED, a fail too):
    # protected mode off first, so that Redis really answers anyone; a restart reads redis.conf again
    with done_then_undone(ck, "broker", f"{cli} -a '{pw}' CONFIG SET protected-mode no && "
                                        f"{cli} -a '{pw}' CONFIG SET requirepass ''",
                          "supervisorctl restart labnodes-redis"):
        report = check_broken(ck, {"service.redis.auth@broker"}, {
            "service.celery.broker@worker1": "service.redis.auth@broker",
            "service.celery.broker@worker2": "service.redis.auth@broker",
            "app.celery@broker": "service.redis.auth@broker"})
    assert "without password: +PONG" in outcomes(report)["service.redis.auth@broker"]["found"]
    wait_healthy(ck)


@pytest.mark.parametrize("sed, open_pages", [
    ('s/FLOWER_BASIC_AUTH="[^"]*",//', ["/", "/metrics"]),  # no password at all
    ("s|bin/python -m labnodes.flower_serve|bin/celery -A labnodes.celery_app flower|", ["/metrics"]),  # plain
], ids=["no-password", "plain-flower-leaves-metrics-open"])
def test_flower_answering_without_password_fails_its_auth_check_only(ck, sed, open_pages):
    with program_changed(ck, "broker", "labnodes-flower", sed):
        report = check_broken(ck, {"service.flower.auth@broker"}, {}, 120)
    found = dict(x.split(": ", 1) for x in outcomes(report)["service.flower.auth@broker"]["found"].split("; "))
    assert [p for p, got in found.items() if got.split()[1:2] != ["401"]] == open_pages, found
    wait_healthy(ck, 120)


def test_ring_node_passing_to_the_wrong_successor_fails_its_next_check(ck):
    with program_changed(ck, "pyro1", "labnodes-ring", "s/--next pyro2/--next pyro3/"):
        report = check_broken(ck, {"service.ring.next@pyro1"}, {"app.ring@pyro1": "service.ring.next@pyro1"})
    assert "--next pyro3" in outcomes(report)["service.ring.next@pyro1"]["found"]
    wait_healthy(ck)


def test_stopped_name_server_fails_its_running_check_and_blocks_the_lap(ck):
    with done_then_undone(ck, "broker", "supervisorctl stop labnodes-nameserver",
                          "supervisorctl start labnodes-nameserver"):
        report = check_broken(ck, {"service.nameserver.running@broker"}, {
            "service.nameserver.listens@broker": "service.nameserver.running@broker",
            "app.ring@pyro1": "service.nameserver.running@broker"})
    assert "STOPPED" in outcomes(report)["service.nameserver.running@broker"]["found"]
    wait_healthy(ck)


@pytest.mark.parametrize("host, program, svc, address, dependents", [
    ("broker", "labnodes-nameserver", "nameserver", "0.0.0.0", ["app.ring@pyro1"]),
    ("pyro2", "labnodes-ring", "ring", "0.0.0.0", ["app.ring@pyro1"]),
    ("sockserver", "labnodes-math", "math", "0.0.0.0", ["app.math@sockserver"]),
    ("sockserver", "labnodes-file", "file", "127.0.0.1", ["app.file@sockserver"]),
    ("broker", "labnodes-flower", "flower", "0.0.0.0", ["service.flower.auth@broker"]),
], ids=["nameserver", "ring", "math", "file", "flower"])
def test_server_bound_to_a_wildcard_or_loopback_address_fails_its_listens_check(ck, host, program, svc, address,
                                                                               dependents):
    sed = (f"s|--address=[^ ]*|--address={address}|" if svc == "flower" else
           f"s|^command=.*|& --host {address}|")
    failed = f"service.{svc}.listens@{host}"
    with program_changed(ck, host, program, sed):
        report = check_broken(ck, {failed}, {k: failed for k in dependents}, 120)
    assert f"listens on {address}:" in outcomes(report)[failed]["found"]
    wait_healthy(ck, 120)


def test_ring_hop_refused_with_every_service_up_fails_the_lap_only(ck):
    # pyro3's ring port refuses pyro2 (the connection pyro2 keeps open too): every service check passes, the lap
    # breaks there
    port = on(ck, "pyro3", "ss -ltnpH | grep \"pid=$(supervisorctl pid labnodes-ring),\" | awk '{print $4}'")
    port = port.split()[0].rsplit(":", 1)[1]
    rule = f"INPUT -s {ck.host('pyro2').address} -p tcp --dport {port} -j REJECT --reject-with tcp-reset"
    with done_then_undone(ck, "pyro3", f"iptables -w -I {rule}", f"iptables -w -D {rule}"):
        report = check_broken(ck, {"app.ring@pyro1"}, {})
    ring = outcomes(report)["app.ring@pyro1"]
    assert ring["found"].startswith("pyro3: ") and "pyro2 -> pyro3" in ring["found"], ring
    assert ring["hint"].startswith("pyro3's ring node does not answer where it registered (it ended, or a "
                                   "firewall drops the hop)"), ring  # ring send --json's code: hop-gone
    wait_healthy(ck)


def test_worker_on_another_broker_database_fails_the_celery_run_naming_it(ck):
    # worker2 runs and its password is right, but it listens for jobs in Redis database 7: it never gets one
    with program_changed(ck, "worker2", "labnodes-celery-worker", "s|^command=.*|& --redis-db 7|"):
        report = check_broken(ck, {"app.celery@broker"}, {}, 120)
    found = outcomes(report)["app.celery@broker"]["found"]
    assert found.startswith("worker2: ") and "none on worker2" in found, found
    wait_healthy(ck)


def test_read_only_file_root_fails_the_file_round_trip_only(ck):
    root = setting(ck, "sockserver", "file_root")
    # the server writes through a directory fd opened at start, which a mount on top does not change: restart it
    restart = "supervisorctl restart labnodes-file"
    with done_then_undone(ck, "sockserver", f"mount --bind {root} {root} && mount -o remount,bind,ro {root} && "
                                            f"{restart}", f"umount -l {root} && {restart}"):
        report = check_broken(ck, {"app.file@sockserver"}, {})
    assert outcomes(report)["app.file@sockserver"]["found"].startswith("send: ")
    wait_healthy(ck)


@pytest.mark.parametrize("host, program, svc, dependents", [
    ("broker", "labnodes-redis", "redis",
     ["service.redis.listens@broker", "service.redis.auth@broker", "service.celery.broker@worker1",
      "service.celery.broker@worker2", "app.celery@broker"]),
    ("broker", "labnodes-flower", "flower", ["service.flower.listens@broker", "service.flower.auth@broker"]),
    ("sockserver", "labnodes-math", "math", ["service.math.listens@sockserver", "app.math@sockserver"]),
    ("sockserver", "labnodes-file", "file", ["service.file.listens@sockserver", "app.file@sockserver"]),
], ids=["redis", "flower", "math", "file"])
def test_stopped_server_fails_its_running_check_and_blocks_what_needs_it(ck, host, program, svc, dependents):
    failed = f"service.{svc}.running@{host}"
    with done_then_undone(ck, host, f"supervisorctl stop {program}", f"supervisorctl start {program}"):
        report = check_broken(ck, {failed}, {k: failed for k in dependents})
    assert "STOPPED" in outcomes(report)[failed]["found"]
    wait_healthy(ck, 120)


def test_redis_bound_to_every_address_fails_its_listens_check(ck):
    conf = on(ck, "broker", "supervisorctl pid labnodes-redis >/dev/null && "
                            "grep -o '/[^ ]*redis.conf' " + conf_of(ck, "broker", "labnodes-redis")).strip()
    failed = "service.redis.listens@broker"
    with done_then_undone(ck, "broker", f"cp -p {conf} /root/redis.conf.orig && "
                                        f"sed -i 's/^bind .*/bind 0.0.0.0/' {conf} && supervisorctl restart labnodes-redis",
                          f"cp -p /root/redis.conf.orig {conf} && supervisorctl restart labnodes-redis"):
        report = check_broken(ck, {failed}, {k: failed for k in (
            "service.redis.auth@broker", "service.celery.broker@worker1", "service.celery.broker@worker2",
            "app.celery@broker")})
    assert "listens on 0.0.0.0:" in outcomes(report)[failed]["found"]
    wait_healthy(ck, 120)


# --- a class: healthy, broken, down, and an inventory that cannot be read --------------------------------------

def test_class_mode_writes_a_row_per_student_healthy_broken_down(ck, tmp_path):
    import openpyxl
    students = tmp_path / "class"
    students.mkdir()
    shutil.copytree(ck.path, students / "ana")  # healthy: the module's cluster
    broken = copy_inventory(students / "bob", "ckb", 62)
    copy_inventory(students / "cem", "ckd", 63)  # never brought up: down
    (students / "dan").mkdir()
    (students / "dan" / "hosts.yml").write_text("all: [this is not an inventory\n")
    out = tmp_path / "out"
    try:
        fab("up", "-i", str(broken), "--quiet", inv=broken)
        bob = inventory.load(broken)
        on(bob, "pyro3", "supervisorctl stop labnodes-ring")
        start = time.monotonic()
        proc = fab("check", "--class", str(students), "--out", str(out), "--timeout", "8", inv=ck.path,
                   check=False)
        took = time.monotonic() - start
    finally:
        fab("down", "-i", str(broken), inv=broken, check=False)
        shutil.rmtree(STATE / "ckb", ignore_errors=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    import csv
    rows = {r["student"]: r for r in csv.DictReader((out / "class.csv").open())}
    assert set(rows) == {"ana", "bob", "cem", "dan"}
    assert rows["ana"]["status"] == "ok" and rows["ana"]["failed"] == "0" and rows["ana"]["percent"] == "100.0"
    assert rows["bob"]["status"] == "failing" and rows["bob"]["service.ring.running@pyro3"] == "fail"
    assert rows["bob"]["app.ring@pyro1"] == "blocked" and rows["bob"]["app.math@sockserver"] == "pass"
    assert rows["cem"]["status"] == "unreachable" and rows["cem"]["reach.ssh@broker"] == "fail"
    assert rows["cem"]["passed"] == "0" and rows["cem"]["app.ring@pyro1"] == "blocked"
    assert rows["dan"]["status"].startswith("broken inventory")
    wb = openpyxl.load_workbook(out / "class.xlsx")
    assert wb.sheetnames == ["Class", "Summary", "Failures"]
    summary = {r[0]: r for r in wb["Summary"].iter_rows(min_row=2, values_only=True)}
    assert set(summary) == {"ana", "bob", "cem", "dan"} and summary["ana"][1] == "ok"
    failures = [r for r in wb["Failures"].iter_rows(min_row=2, values_only=True)]
    assert ("bob", "service.ring.running", "pyro3") in {r[:3] for r in failures}
    assert not any(r[0] == "ana" for r in failures)
    for s in ("ana", "bob", "cem", "dan"):
        assert (out / f"{s}.html").stat().st_size > 1000
    print(f"class of 4 checked in {took:.1f}s")


def test_selftest_on_a_host_needs_no_control_machine(ck):
    labnodes = "$(dirname $(tr '\\0' '\\n' < /proc/$(supervisorctl pid labnodes-ring)/cmdline | head -1))/labnodes"
    labnodes = on(ck, "pyro1", f"echo {labnodes}").strip()
    out = ssh(ck.host("pyro1").address, f"{labnodes} selftest --json", check=False)
    result = json.loads(out.stdout)
    ids = {c["id"]: c["outcome"] for c in result["checks"]}
    assert ids["service.ring.running"] == "pass" and ids["service.ring.listens"] == "pass"
    assert ids["reach.nameserver"] == "pass" and out.returncode == 0
    on(ck, "pyro1", "supervisorctl stop labnodes-ring")
    try:
        broken = ssh(ck.host("pyro1").address, f"{labnodes} selftest", check=False)
    finally:
        on(ck, "pyro1", "supervisorctl start labnodes-ring")
    assert broken.returncode == 1
    assert "FAIL     service.ring.running" in broken.stdout and "blocked by service.ring.running" in broken.stdout
    settings = "/etc/labnodes/labnodes.toml"  # unparsable: reported as host.settings, not a config error
    on(ck, "pyro1", f"cp -p {settings} /root/labnodes.toml.orig && echo 'oops = = 1' >> {settings}")
    try:
        unparsable = ssh(ck.host("pyro1").address, f"{labnodes} selftest --json", check=False)
    finally:
        on(ck, "pyro1", f"cp -p /root/labnodes.toml.orig {settings}")
    assert unparsable.returncode == 1 and "labnodes: error" not in unparsable.stderr, unparsable.stderr
    got = {c["id"]: c for c in json.loads(unparsable.stdout)["checks"]}
    assert got["host.settings"]["outcome"] == "fail" and "line" in got["host.settings"]["found"]
    assert got["service.ring.running"]["outcome"] == "pass"
    assert got["service.ring.listens"]["blocked_by"] == "host.settings"
    wait_healthy(ck)
