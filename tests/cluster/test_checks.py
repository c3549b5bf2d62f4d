"""`fab check` on an embedded cluster: healthy, then broken on purpose one thing at a time, then a class of three.

The cluster (a copy of inventory/netns named `ckt`) comes up once for the module. Each break test breaks exactly
one thing, runs the real `fab check --json`, asserts that the check naming that thing fails on the right host,
that its dependents are blocked by it and that every other check passes, then repairs it and waits until the
cluster checks clean again, so the next test starts from a healthy cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET

import pytest

from labkit import STATE, inventory
from labkit.backends import netns
from tests.cluster.conftest import ssh
from tests.cluster.test_lab_cluster import copy_inventory, fab

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--no-first-run", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def ck(tmp_path_factory, keep_active_inventory):
    if os.geteuid() != 0:
        pytest.skip("cluster tests need root (they create network namespaces)")
    path = copy_inventory(tmp_path_factory.mktemp("inv") / "ckt", "ckt", 61)
    try:
        fab("up", "-i", str(path), "--quiet", inv=path)
        yield inventory.load(path)
    finally:
        fab("down", "-i", str(path), inv=path, check=False)
        shutil.rmtree(STATE / "ckt", ignore_errors=True)


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


# --- healthy ---------------------------------------------------------------------------------------------------

def test_healthy_cluster_passes_every_check_and_writes_junit_and_html(ck, tmp_path):
    junit, page = tmp_path / "check.xml", tmp_path / "check.html"
    proc = fab("check", "--junit", str(junit), "--html", str(page), inv=ck.path, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert proc.stdout.strip().splitlines()[-1].split()[1] == "passed"
    report = check(ck)
    layers = {c["layer"] for c in report["checks"]}
    assert layers == {"reach", "host", "service", "app"} and report["status"] == "ok"
    assert all(c["outcome"] == "pass" for c in report["checks"])
    cases = ET.parse(junit).getroot().iter("testcase")
    hosts_by_case = {(t.get("classname"), t.get("name")) for t in cases}
    assert ("ckt.service.ring.listens", "pyro2") in hosts_by_case and len(hosts_by_case) == len(report["checks"])
    assert report["ring_trace"]["gcd"] == 6 and set(report["celery"]["hosts"]) == {"worker1", "worker2"}
    text = page.read_text()
    assert "<svg" in text and "<script" not in text and "http://" not in text.replace("http://www.w3.org", "")


def test_html_report_renders_in_headless_chromium_with_every_host(ck, tmp_path):
    chromium = shutil.which("chromium")
    if not chromium:
        pytest.skip("Debian's chromium is not installed (scripts/setup.sh installs it)")
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


# --- a class: healthy, broken, down, and an inventory that cannot be read --------------------------------------

def test_class_mode_writes_a_row_per_student_healthy_broken_down(ck, tmp_path):
    openpyxl = pytest.importorskip("openpyxl")
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
    if "invalid choice" in out.stderr:
        pytest.skip("this cluster's labnodes predates selftest")
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
    wait_healthy(ck)
