"""labkit.checks without a cluster: blocked-by resolution, the probe's matching, grading, the three reports and
the class files, from hand-made reports."""

from __future__ import annotations

import contextlib
import csv
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import pytest

from labkit import REPO, LabkitError
from labkit.checks import classmode, failed_report, grading, key, report
from labnodes import selftest


def c(cid, host, outcome, deps=(), **kw):
    return {"id": cid, "host": host, "layer": cid.split(".")[0], "title": cid, "outcome": outcome,
            "expected": kw.get("expected", "e"), "found": kw.get("found", "f"), "hint": kw.get("hint", "h"),
            "deps": list(deps)}


def sample(broken=True) -> dict:
    checks = [
        c("reach.ssh", "a", "pass"), c("reach.ssh", "b", "fail" if broken else "pass"),
        c("service.ring.running", "b", "pass", ["reach.ssh@b"]),
        c("service.ring.listens", "b", "fail", ["service.ring.running@b"]),
        c("app.ring", "a", "fail", ["service.ring.listens@b", "reach.ssh@a"]),
        c("service.math.running", "a", "fail", ["reach.ssh@a"]),
    ]
    if not broken:
        for x in checks:
            x["outcome"] = "pass"
    selftest.resolve(checks, key=key)
    n = {o: sum(x["outcome"] == o for x in checks) for o in ("pass", "fail", "blocked")}
    return {"cluster": "t", "inventory": "/inv/t", "backend": "netns", "subnet": "10.0.0.0/24",
            "status": "failing" if broken else "ok", "seconds": 1.5, "counts": n, "checks": checks,
            "hosts": [{"name": "a", "address": "10.0.0.2", "groups": ["clients"], "ssh": "pass",
                       "services": {"math": "fail"}, "programs": {}},
                      {"name": "b", "address": "10.0.0.3", "groups": ["ring"], "ssh": "fail",
                       "services": {"ring": "blocked"}, "programs": {}}],
            "groups": {"ring": ["b"], "clients": ["a"]}, "ring": ["b"],
            "ring_trace": None, "celery": {"hosts": {"w1": 3, "w2": 1}, "tasks": 4, "ok": 4, "tasks_per_s": 9.0},
            "time": "now"}


def test_a_failed_prerequisite_blocks_every_check_above_it_by_the_root_failure():
    got = {key(x): x for x in sample()["checks"]}
    assert got["service.ring.running@b"]["outcome"] == "blocked"
    assert got["service.ring.running@b"]["blocked_by"] == "reach.ssh@b"
    assert got["service.ring.listens@b"]["blocked_by"] == "reach.ssh@b"  # the root, not the blocked step between
    assert got["app.ring@a"]["blocked_by"] == "reach.ssh@b"
    assert got["service.math.running@a"]["outcome"] == "fail"  # its own prerequisite passed


def test_probe_plan_lists_the_checks_of_each_service():
    ids = {p["id"] for p in selftest.plan({"services": ["ring", "celery", "redis"], "ring_next": "x"})}
    assert {"service.ring.next", "service.ring.listens", "service.celery.broker", "service.redis.auth",
            "host.settings"} <= ids
    assert "service.celery.listens" not in ids


def test_a_listener_of_another_program_on_the_same_address_does_not_count(monkeypatch):
    """The old check passed when sshd listened on the ring node's address; this one wants the node's own pid."""
    p = selftest.Probe.__new__(selftest.Probe)
    p.ctx, p.s, p.vars, p.checks = {"address": "10.0.0.3"}, {}, {}, []
    p.progs = {"labnodes-ring": {"state": "RUNNING", "pid": 50, "cmdline": "python labnodes ring serve"}}
    p.listen = [("10.0.0.3", 22, {16: "sshd"})]
    monkeypatch.setattr(selftest, "family", lambda pid: {pid})
    p.service("ring")
    listens = next(x for x in p.checks if x["id"] == "service.ring.listens")
    assert listens["outcome"] == "fail" and "listens on nothing" in listens["found"]
    p.checks, p.listen = [], [("10.0.0.3", 22, {16: "sshd"}), ("10.0.0.3", 4100, {50: "labnodes"})]
    p.service("ring")
    assert next(x for x in p.checks if x["id"] == "service.ring.listens")["outcome"] == "pass"
    p.checks, p.listen = [], [("0.0.0.0", 4100, {50: "labnodes"})]
    p.service("ring")
    assert next(x for x in p.checks if x["id"] == "service.ring.listens")["outcome"] == "fail"


def test_a_program_that_ended_by_itself_shows_the_last_line_of_its_log(tmp_path):
    log = tmp_path / "ring.log"
    log.write_text("x" * 10000 + "\nring node pyro2 up\nlabnodes: error: cannot register: message hmac mismatch\n\n")
    p = selftest.Probe.__new__(selftest.Probe)
    p.ctx, p.s, p.vars, p.checks, p.listen = {"address": "10.0.0.3"}, {}, {}, [], []
    for state, shown in (("BACKOFF", True), ("FATAL", True), ("EXITED", True), ("STOPPED", False)):
        p.checks = []
        p.progs = {"labnodes-ring": {"state": state, "pid": None, "cmdline": "", "log": str(log)}}
        p.service("ring")
        running = next(x for x in p.checks if x["id"] == "service.ring.running")
        ends = "; its log ends: labnodes: error: cannot register: message hmac mismatch"
        assert running["found"] == f"labnodes-ring {state}" + (ends if shown else ""), state
        assert ("fix what its log" in running["hint"]) is shown
    assert selftest.log_ends(tmp_path / "missing.log") == "" and selftest.log_ends(tmp_path) == ""


# supervisord's own log (its main log, as supervisorctl maintail shows it) for a ring node that cannot reach its
# name server: each run waits 30 s for it, ends with status 1, and supervisord starts it again at once
LOOPING = """\
2026-12-02 03:06:50,782 INFO supervisord started with pid 1
2026-12-02 03:07:18,811 INFO spawned: 'labnodes-ring' with pid 46
2026-12-02 03:07:19,937 INFO success: labnodes-ring entered RUNNING state, process has stayed up for > than 1 seconds (startsecs)
2026-12-02 03:08:22,483 INFO waiting for labnodes-ring to stop
2026-12-02 03:08:22,760 INFO stopped: labnodes-ring (exit status 0)
2026-12-02 03:08:22,767 INFO spawned: 'labnodes-ring' with pid 68
2026-12-02 03:08:24,488 INFO success: labnodes-ring entered RUNNING state, process has stayed up for > than 1 seconds (startsecs)
2026-12-02 03:08:52,201 WARN exited: labnodes-ring (exit status 1; not expected)
2026-12-02 03:08:53,204 INFO spawned: 'labnodes-ring' with pid 80
2026-12-02 03:08:54,943 INFO success: labnodes-ring entered RUNNING state, process has stayed up for > than 1 seconds (startsecs)
2026-12-02 03:09:23,100 WARN exited: labnodes-ring (terminated by SIGKILL; not expected)
2026-12-02 03:09:24,104 INFO spawned: 'labnodes-ring' with pid 87
2026-12-02 03:09:25,801 INFO success: labnodes-ring entered RUNNING state, process has stayed up for > than 1 seconds (startsecs)
"""


def test_supervisords_log_tells_the_runs_that_ended_by_themselves_since_the_program_was_started():
    assert selftest.ends(LOOPING) == {"labnodes-ring": ["exit status 1", "terminated by SIGKILL"]}
    # stopped by hand, gave up (FATAL says so), or supervisord started again: what came before is not counted
    for reset in ("2026-12-02 03:10:00,000 INFO stopped: labnodes-ring (terminated by SIGTERM)",
                  "2026-12-02 03:10:00,000 INFO gave up: labnodes-ring entered FATAL state, too many start retries too "
                  "quickly", "2026-12-02 03:10:00,000 INFO supervisord started with pid 9"):
        assert selftest.ends(LOOPING + reset + "\n") == {}, reset
    # an exit with status 0 is an end by itself too: a server is not meant to end
    assert selftest.ends("2026-12-02 03:09:24,104 INFO spawned: 'sshd' with pid 87\n2026-12-02 03:09:25,801 INFO "
                         "success: sshd entered RUNNING state\n2026-12-02 03:09:30,000 INFO exited: sshd (exit status "
                         "0; expected)\n") == {"sshd": ["exit status 0"]}


def test_a_run_that_ended_within_its_startsecs_is_backoff_not_a_restart_and_one_that_outlived_them_is():
    backoff = ("2026-12-02 03:00:00,000 INFO spawned: 'labnodes-ring' with pid 5\n"
               "2026-12-02 03:00:00,400 WARN exited: labnodes-ring (exit status 1; not expected)\n")
    assert selftest.ends(backoff) == {}  # BACKOFF, then FATAL: supervisord's state already says so
    # supervisord counts a run that outlived its startsecs as started even when it ended before its next look,
    # with no "success" line: seen on a busy box, the node started slower than startsecs and then ended
    late = backoff.replace("03:00:00,400", "03:00:01,300")
    assert selftest.ends(late) == {"labnodes-ring": ["exit status 1"]}
    assert selftest.ends(late, {"labnodes-ring": 3.0}) == {}  # the program's own startsecs, from supervisord


def _ring(state="RUNNING", uptime=5.0, ended=None, log=""):
    return {"state": state, "pid": 80, "cmdline": "", "log": log, "uptime": uptime, "ended": ended}


def test_a_program_supervisord_keeps_starting_again_fails_its_running_check_with_its_last_error(tmp_path):
    """A ring node that cannot reach its name server runs 30 s, ends with status 1 and is started again: its state
    is RUNNING nearly all the time, and the check passed it (fab status too)."""
    log = tmp_path / "ring.log"
    log.write_text("labnodes: error: cannot register labkit.ring.pyro2 in the name server: connection refused\n"
                   + "2026-12-02 03:09:26,000 labnodes.ring INFO name server not reachable yet, retrying\n" * 50)
    p = selftest.Probe.__new__(selftest.Probe)
    p.ctx, p.s, p.vars, p.listen = {"address": "10.0.0.3"}, {}, {}, []
    ended = {"times": 2, "last": "exit status 1", "cut": False}

    def running(**prog):
        p.checks, p.progs = [], {"labnodes-ring": _ring(log=str(log), **prog)}
        p.service("ring")
        return next(x for x in p.checks if x["id"] == "service.ring.running")

    check = running(ended=ended, uptime=5.0)
    assert check["outcome"] == "fail"
    assert check["found"] == (
        "labnodes-ring RUNNING: it ended by itself 2 times since it was started (last: exit status 1) and "
        "supervisord started it again; this run is 5 s old; its log's last error: labnodes: error: cannot "
        "register labkit.ring.pyro2 in the name server: connection refused")
    assert "supervisorctl restart labnodes-ring" in check["hint"] and "fix what its log" in check["hint"]
    # a minute into a run after the last end it counts as running again, and still says what happened
    check = running(ended=dict(ended, cut=True), uptime=selftest.RECENT + 1)
    assert check["outcome"] == "pass"
    assert "ended by itself at least 2 times" in check["found"] and "this run is 61 s old" in check["found"]
    assert running(ended=None, uptime=5.0)["outcome"] == "pass"  # just started by hand: nothing ended


def test_where_supervisords_socket_asks_a_password_supervisorctl_gives_the_same_uptime_and_ends(monkeypatch):
    said = {("supervisorctl", "status"): "labnodes-ring   RUNNING   pid 87, uptime 1 day, 0:00:05\n"
                                         "sshd            RUNNING   pid 17, uptime 0:05:32\n",
            ("supervisorctl", "maintail", f"-{selftest.MAIN_LOG_TAIL}"): LOOPING}
    monkeypatch.setattr(selftest, "programs_rpc", lambda: None)
    monkeypatch.setattr(selftest, "sh", lambda args, **kw: (0, said[tuple(args)]))
    monkeypatch.setattr(selftest, "cmdline", lambda pid: "")
    progs = selftest.programs()
    assert (progs["labnodes-ring"]["uptime"], progs["sshd"]["uptime"]) == (86405, 332)
    assert progs["labnodes-ring"]["ended"] == {"times": 2, "last": "terminated by SIGKILL", "cut": False}
    assert progs["sshd"]["ended"] is None


def test_the_last_line_of_a_log_or_the_last_that_names_an_error():
    text = "starting\nTraceback (most recent call last):\nValueError: bad\n\nretrying\n"
    assert selftest.last_line(text) == "retrying"
    assert selftest.last_line(text, error=True) == "ValueError: bad"
    assert selftest.last_line("all fine\n", error=True) == "all fine" and selftest.last_line("") == ""


@pytest.mark.parametrize("listens, err, hint", [
    ("10.0.0.3:6001 (pid 76)", ("math server 10.0.0.3:5050: cannot connect: Connection refused", "10.0.0.3:5050"),
     "the client asks 10.0.0.3:5050, but the math server listens on 10.0.0.3:6001: math_host/math_port differ "
     "between the client's and s's labnodes.toml (fab provision writes both)"),
    ("10.0.0.3:5050 (pid 76)", ("math server 10.0.0.3:5050: cannot connect: No route to host", "10.0.0.3:5050"),
     "nothing answers at 10.0.0.3:5050: is the math server running there? (the service checks of s)"),
])
def test_a_run_that_cannot_reach_its_server_says_where_each_side_is(listens, err, hint):
    from labkit.checks import Run
    from labkit.remote import Failure
    run = Run.__new__(Run)
    run.checks = [{"id": "service.math.listens", "host": "s", "outcome": "pass", "found": listens}]
    message, address = err
    assert run.unreachable_hint(Failure(message, "connect", address), "s", "math") == hint
    # by its code, never its wording: a timeout, or a labnodes too old to give a code, keeps the protocol's hint
    assert run.unreachable_hint(Failure("math server 10.0.0.3:5050: no reply within 5 s", "timeout",
                                        "10.0.0.3:5050"), "s", "math") is None
    assert run.unreachable_hint(Failure(message), "s", "math") is None


def test_a_run_across_a_link_the_hosts_saw_cut_is_sent_to_the_network():
    from labkit.checks import Run
    run = Run.__new__(Run)
    run.facts = {"pyro2": {"reach": {"pyro1": None, "pyro3": "timed out"}}, "pyro3": {"reach": {"pyro2": "timed out"}},
                 "client": {"reach": {"sockserver": None}}, "broker": {}}
    ring = [("client", "broker"), ("pyro1", "pyro2"), ("pyro2", "pyro3"), ("pyro3", "pyro1"), ("pyro2", "pyro3")]
    assert run.cut_hint(ring) == ("pyro2 cannot connect to pyro3 (reach.network@pyro3) on the cluster network, and "
                                  "this run needs that connection: fix the network first")
    both = run.cut_hint([("pyro2", "pyro3"), ("pyro3", "pyro2")])
    assert both.startswith("pyro2 cannot connect to pyro3 (reach.network@pyro3); pyro3 cannot connect to pyro2")
    assert both.endswith("needs those connections: fix the network first")
    assert run.cut_hint([("client", "sockserver"), ("broker", "pyro2"), (None, "x")]) is None  # nothing cut


def test_a_run_that_times_out_or_crashes_is_one_line_with_what_was_expected(monkeypatch):
    """A ring lap longer than `fab check --timeout` was reported as invoke's whole CommandTimedOut text (the
    command, its stdout and stderr) under an empty "expected"; a failing run across a cut link says so."""
    from invoke.exceptions import CommandTimedOut

    from labkit import checks, inventory
    names = {"client": "clients", "broker": "nameservers", "p1": "ring", "p2": "ring", "s": "sockservers"}
    hosts = tuple(inventory.Host(n, f"10.0.0.{i}") for i, n in enumerate(names, 2))
    groups = {}
    for n, g in names.items():
        groups[g] = (*groups.get(g, ()), n)
    run = checks.Run(inventory.Inventory(path=REPO / "inv", cluster="t", subnet=None, backend="lab", hosts=hosts,
                                         groups=groups), timeout=8)
    for cid in ("reach.ssh", "host.labnodes", "service.nameserver.listens", "service.ring.listens",
                "service.ring.next", "service.math.listens", "service.file.listens"):
        for n in names:
            run.add(cid, n, "pass")
    run.facts = {"p1": {"reach": {"p2": "timed out"}}}

    def timed_out(*args):
        raise CommandTimedOut(SimpleNamespace(command="labnodes ring send ...", stdout="", stderr=""), 8)

    def crashed(*args):
        raise RuntimeError("first line\nsecond line")
    monkeypatch.setattr(checks.Run, "app_ring", timed_out)
    monkeypatch.setattr(checks.Run, "app_math", crashed)
    monkeypatch.setattr(checks.Run, "app_file", lambda self, c, s: ("pass", s, "same sha256", "same", ""))
    run.app_layer()
    got = {c["id"]: c for c in run.checks if c["layer"] == "app"}
    assert (got["app.ring"]["expected"], got["app.ring"]["found"]) == (checks.APP_TITLES["app.ring"],
                                                                        "client: the run did not finish within 8 s")
    assert got["app.ring"]["hint"].startswith("p1 cannot connect to p2 (reach.network@p2) on the cluster network")
    assert (got["app.math"]["expected"], got["app.math"]["found"], got["app.math"]["hint"]) == (
        checks.APP_TITLES["app.math"], "client: RuntimeError: first line", "the run could not finish")


def app_checks_of(monkeypatch, left_out=None, least=None) -> dict:
    """The app checks of a cluster of one host in each group but two in `ring`, every prerequisite passed and
    every run passing (`left_out`: a group made empty; `least`: a grading file's `groups`)."""
    from labkit import checks, inventory
    names = {"client": "clients", "broker": "brokers", "w1": "workers", "p1": "ring", "p2": "ring",
             "s": "sockservers"}
    groups = {"nameservers": ("broker",)}
    for n, g in names.items():
        groups[g] = (*groups.get(g, ()), n)
    if left_out:
        groups[left_out] = ()  # an empty group is the same as none
    hosts = tuple(inventory.Host(n, f"10.0.0.{i}") for i, n in enumerate(names, 2))
    run = checks.Run(inventory.Inventory(path=REPO / "inv", cluster="t", subnet=None, backend="lab", hosts=hosts,
                                         groups=groups), groups=least)
    for cid in ("reach.ssh", "host.labnodes", "service.nameserver.listens", "service.ring.listens",
                "service.ring.next", "service.redis.auth", "service.celery.running", "service.celery.broker",
                "service.math.listens", "service.file.listens"):
        for n in names:
            run.add(cid, n, "pass")
    for cid in checks.APP_TITLES:
        monkeypatch.setattr(checks.Run, cid.replace(".", "_"), lambda self, client, x: ("pass", "", "", "", ""))
    run.app_layer()
    return {checks.key(c): c for c in run.checks if c["layer"] == "app"}


@pytest.mark.parametrize("left_out, failing", [
    ("clients", {"app.ring@p1": "'clients'", "app.celery@broker": "'clients'", "app.math@s": "'clients'",
                 "app.file@s": "'clients'"}),
    ("ring", {"app.ring@broker": "'ring'"}),  # keyed on the next group's host: the name server
    ("nameservers", {"app.ring@p1": "'nameservers'"}),
    ("workers", {"app.celery@broker": "'workers'"}),
    ("brokers", {"app.celery@w1": "'brokers'"}),
    ("sockservers", {"app.math@client": "'sockservers'", "app.file@client": "'sockservers'"}),
    (None, {}),
])
def test_a_run_whose_group_the_inventory_lacks_fails_naming_the_group(monkeypatch, left_out, failing):
    """An inventory without a clients group passed `fab check` (74 passed) with no application run at all, and
    a class's grading counted nothing against it: a run that cannot be made is a failure, not an absence."""
    app = app_checks_of(monkeypatch, left_out)
    assert {k for k, c in app.items() if c["outcome"] == "fail"} == set(failing)
    assert len(app) == 4  # every run is reported once, made or not
    for k, group in failing.items():
        assert app[k]["found"] == f"the inventory has no host in group {group}, so this run cannot be made"
        assert app[k]["hint"].startswith(f"add {group} with a host to the inventory")


def test_a_group_smaller_than_the_grading_file_asks_fails_the_run_that_needs_it(monkeypatch):
    """A student who left a broken ring host out of the inventory passed every check: a check is made for each
    host the inventory names. A grading file's `groups` says how many each group must have."""
    app = app_checks_of(monkeypatch, least={"ring": 3, "workers": 1})
    assert {k for k, c in app.items() if c["outcome"] == "fail"} == {"app.ring@p1"}
    ring = app["app.ring@p1"]
    assert ring["found"] == "the inventory has 2 hosts in group 'ring', the grading file asks for at least 3"
    assert ring["expected"] == "hosts in each group this run needs: ring (3 or more), nameservers, clients"
    assert ring["hint"] == "add hosts to 'ring' in the inventory, as many as the grading file asks, then fab up"
    both = app_checks_of(monkeypatch, left_out="clients", least={"ring": 3})["app.ring@p1"]["found"]
    assert both == ("the inventory has 2 hosts in group 'ring', the grading file asks for at least 3; no host in "
                    "group 'clients', so this run cannot be made")
    assert all(c["outcome"] == "pass" for c in app_checks_of(monkeypatch, least={"ring": 2}).values())


def test_students_whose_inventories_name_the_same_hosts_are_told_apart_in_the_class_files(tmp_path, monkeypatch):
    """Two students with one inventory (copied, or a typo in an address) were both checked on the same machines
    and got the same outcomes, with nothing in the class files to say so."""
    import openpyxl
    other = sample(broken=False)
    other["hosts"] = [dict(h, address=h["address"].replace("10.0.0.", "10.0.1.")) for h in other["hosts"]]
    results = {"ana": sample(), "bob": sample(broken=False), "cid": other,
               "dan": failed_report(tmp_path / "dan", "no inventory")}
    for name in results:
        (tmp_path / "class" / name).mkdir(parents=True)
    monkeypatch.setattr(classmode, "check_student", lambda path, timeout, groups: results[path.name])
    said = []
    classmode.run_class(tmp_path / "class", tmp_path / "out", echo=said.append)
    rows = {r["student"]: r["shares hosts with"] for r in csv.DictReader((tmp_path / "out" / "class.csv").open())}
    assert rows == {"ana": "bob: 10.0.0.2, 10.0.0.3", "bob": "ana: 10.0.0.2, 10.0.0.3", "cid": "", "dan": ""}
    assert [line.split() for line in said if "shares" in line] == [
        ["ana", "shares", "hosts", "with", "bob:", "10.0.0.2,", "10.0.0.3"],
        ["bob", "shares", "hosts", "with", "ana:", "10.0.0.2,", "10.0.0.3"]]
    sheet = openpyxl.load_workbook(tmp_path / "out" / "class.xlsx")["Summary"]
    assert [cell.value for cell in sheet[1]][:len(classmode.FIXED)] == classmode.FIXED


def test_a_class_run_checks_each_student_with_the_grading_files_groups(tmp_path, monkeypatch):
    (tmp_path / "class" / "ana").mkdir(parents=True)
    (tmp_path / "g.yml").write_text("groups: {ring: 3, workers: 2}\n")
    given = []
    monkeypatch.setattr(classmode, "check_student", lambda path, timeout, groups: given.append(groups) or sample())
    classmode.run_class(tmp_path / "class", tmp_path / "out", tmp_path / "g.yml", echo=lambda *a: None)
    assert given == [{"ring": 3, "workers": 2}]


def hop(src, dst, code, rest=""):
    """What `ring send --json` reports for a hop's failure, made as labnodes makes it: (message, code, address)."""
    from labnodes.ring_lap import hop_code, hop_failed
    text = str(hop_failed(src, dst, code, rest))
    return text, hop_code(text)["code"], hop_code(text)["address"]


@pytest.mark.parametrize("failure, where, hint", [
    (("name server at 10.0.0.1:9090: refused: wrong HMAC key? (cannot connect to ('10.0.0.1', 9090): message hmac "
      "mismatch)", "wrong-key", "10.0.0.1:9090"), "client", "10.0.0.1:9090 refused the client's hmac_key"),
    (hop("p1", "p2", "hop-wrong-key", " (...)"), "p2", "p2 refused the previous node's hmac_key"),
    (hop("p2", "p3", "hop-unregistered"), "p3", "p3's ring node is not registered in the name server"),
    (hop("p2", "p3", "hop-gone", " 10.0.0.5:4000 but does not answer (process gone?): ..."), "p3",
     "p3's ring node does not answer where it registered"),
    (hop("p2", "p3", "hop-timeout", " 1.80 s"), "p3", "p3 did not answer the hop in time"),
    (hop("p2", "p3", "hop-no-time", " (0.20 s budget; ...)"), "p3", "the lap ran out of time before the hop to p3"),
    (hop("p2", "p3", "hop-nameserver", " 10.0.0.1:9090 unreachable (...)"), "broker",
     "a ring node could not reach the name server at 10.0.0.1:9090"),
    (hop("p2", "ghost", "hop", "OSError: ..."), "p1", "the ring broke at the hop to ghost"),  # not a host: the start
    (("ring from p1: numbers not done after 10 laps (ring_max_laps)", "", ""), "p1", "the ring did not finish"),
])
def test_a_ring_run_that_fails_points_at_the_host_to_look_at(failure, where, hint):
    """A client with another HMAC key than the cluster's was told "the ring broke at the hop named" (none was);
    the host of a hop's failure was the last ring host named in its message, so a ring node that could not reach
    the name server had its successor blamed."""
    from labkit import inventory
    from labkit.checks import Run
    from labkit.remote import Failure
    names = {"client": "clients", "broker": "nameservers", "p1": "ring", "p2": "ring", "p3": "ring"}
    groups = {}
    for n, g in names.items():
        groups[g] = (*groups.get(g, ()), n)
    run = Run(inventory.Inventory(path=REPO / "inv", cluster="t", subnet=None, backend="lab", groups=groups,
                                  hosts=tuple(inventory.Host(n, f"10.0.0.{i}") for i, n in enumerate(names, 2))))
    run.labnodes = lambda *a, **kw: (None, Failure(*failure))
    outcome, host, _, found, got_hint = run.app_ring("client", ["p1", "p2", "p3"])
    assert (outcome, host, found) == ("fail", where, failure[0]) and got_hint.startswith(hint)


@pytest.mark.parametrize("timeout", [0.5, 4.0, 20.0])
def test_every_application_run_is_given_the_checks_timeout_and_its_ssh_call_ten_seconds_more(timeout):
    """So that a run across a partition ends with what it waited for before its SSH call is cut (the math and
    file runs had their own 5 and 60 s: at --timeout 4 they said "no output"); Celery's was cut to whole seconds
    (--timeout 0.5 gave it 0, which labnodes refuses)."""
    from labkit import inventory
    from labkit.checks import Run
    from labkit.remote import Failure
    names = {"client": "clients", "broker": "brokers", "sock": "sockservers"}
    run = Run(inventory.Inventory(path=REPO / "inv", cluster="t", subnet=None, backend="lab",
                                  groups={g: (n,) for n, g in names.items()},
                                  hosts=tuple(inventory.Host(n, f"10.0.0.{i}") for i, n in enumerate(names, 2))),
              timeout=timeout)
    calls = []

    def labnodes(host, *args, timeout=None):
        calls.append((args, timeout))
        if args[:2] == ("file", "send"):  # sent: the round trip goes on to its get
            return {"sha256": "ab" * 32}, None
        return None, Failure("no answer", "", "")

    run.labnodes = labnodes
    run.ssh = lambda *a, **kw: SimpleNamespace(exited=0, stdout="ab" * 32 + "  x\n", stderr="")
    run.app_ring("client", ["p1"]), run.app_celery("client", ["w1"]), run.app_math("client", "sock")
    run.app_file("client", "sock")
    assert [a[:2] for a, _ in calls] == [("ring", "send"), ("celery", "batch"), ("math", "ask"), ("file", "send"),
                                         ("file", "get")]
    for args, ssh_timeout in calls:
        assert args[args.index("--timeout") + 1] == f"{timeout:g}" and ssh_timeout == timeout + 10, args


def test_every_kind_of_hop_failure_reads_back_as_its_code_and_node():
    from labnodes.ring_lap import HOP_FAILURES, hop_code, hop_failed
    for code in HOP_FAILURES:
        rest = " 10.0.0.1:9090 unreachable (x)" if code == "hop-nameserver" else " (x)"
        want = "10.0.0.1:9090" if code == "hop-nameserver" else "pyro-3"
        assert hop_code(str(hop_failed("pyro-2", "pyro-3", code, rest))) == {"code": code, "address": want}
    assert hop_code("ring from pyro1: not done within 9 s after 3 laps") == {}
    assert hop_code("start node pyro1 did not answer") == {}


def test_a_lab_machine_whose_sudo_wants_a_password_gets_the_sudoers_line_not_install_python3():
    """The probe runs through `sudo -n`: where sudo wanted a password, host.probe failed with "python3 exited 1:
    sudo: a password is required" and the hint to install python3."""
    from labkit import inventory
    from labkit.checks import Run
    from labkit.remote import Hosts
    h = inventory.Host("pc1", "10.20.30.11", {"ansible_user": "labadmin", "ansible_become": True})
    inv = inventory.Inventory(path=REPO / "inventory/x", cluster="c1", subnet=None, backend="lab", hosts=(h,),
                              groups={"clients": ("pc1",)})
    run = Run(inv)
    run.hosts = Hosts(inv)
    run.ssh = lambda host, command, timeout=None: SimpleNamespace(
        stdout="", stderr="sudo: a password is required\n", exited=1)
    run.host_layers()
    probe = next(c for c in run.checks if c["id"] == "host.probe")
    assert (probe["outcome"], probe["found"]) == ("fail", "sudo: a password is required")
    assert probe["hint"].startswith("logs in as labadmin, but sudo will not run without a password")
    assert "labadmin ALL=(ALL) NOPASSWD: ALL" in probe["hint"]


def test_a_hosts_clock_is_judged_by_how_far_its_reading_falls_outside_the_probes_round_trip():
    from labkit.checks import clock_offset

    assert clock_offset(105.0, sent=100.0, back=110.0) == 0.0  # read during the round trip: agrees
    assert clock_offset(400.0, sent=100.0, back=110.0) == 290.0  # ahead by at least this much
    assert clock_offset(40.0, sent=100.0, back=110.0) == -60.0  # behind


def test_a_host_whose_clock_is_off_fails_host_clock_with_what_it_breaks_and_an_unreached_one_is_blocked(
        monkeypatch):
    """A worker compares a Celery job's expiry with its own clock: a worker host a few minutes ahead of the client
    dropped every job as expired ("revoked"), and `fab check` had nothing that named the clock."""
    import time

    from labkit import inventory
    from labkit.checks import CLOCK_LIMIT, Run, check_ids

    hosts = [inventory.Host(n, f"10.0.0.{i + 2}", {}) for i, n in enumerate(["ahead", "behind", "right", "gone"])]
    inv = inventory.Inventory(path=REPO / "inventory/x", cluster="c1", subnet=None, backend="lab",
                              hosts=tuple(hosts), groups={"workers": ("ahead", "behind", "right", "gone")})
    skew = {"ahead": 300.0, "behind": -(CLOCK_LIMIT + 5), "right": CLOCK_LIMIT - 5}

    def ssh(host, command, timeout=None):
        if host == "gone":
            raise OSError("No route to host")
        return SimpleNamespace(stdout=json.dumps({"checks": [], "facts": {}, "time": time.time() + skew[host]}),
                               stderr="", exited=0)

    run = Run(inv)
    run.ssh = ssh
    run.host_layers()
    run.resolve()
    clock = {x["host"]: x for x in run.checks if x["id"] == "host.clock"}
    assert clock["ahead"]["outcome"] == "fail" and clock["ahead"]["found"].startswith("300 s ahead of")
    assert "drops its jobs as expired" in clock["ahead"]["hint"]
    assert "timedatectl set-ntp true" in clock["ahead"]["hint"]
    assert clock["behind"]["outcome"] == "fail"
    assert clock["behind"]["found"].startswith(f"{CLOCK_LIMIT + 5:.0f} s behind")
    assert clock["right"]["outcome"] == "pass" and clock["right"]["found"].endswith("s ahead")
    assert (clock["gone"]["outcome"], clock["gone"]["blocked_by"]) == ("blocked", "reach.ssh@gone")
    assert "host.clock" in check_ids()  # a grading file may name it


def test_grading_weights_and_counted_checks(tmp_path):
    r = sample()
    assert grading.score(r, grading.load(None)) == {"points": 1.0, "max": 6.0, "percent": pytest.approx(100 / 6)}
    f = tmp_path / "g.yml"
    f.write_text("count: ['reach.*', 'app.*']\nweights:\n  app.*: 4\n")
    s = grading.score(r, grading.load(f))
    assert (s["points"], s["max"]) == (1.0, 6.0)  # reach.ssh@a passes (1); reach.ssh@b (1) and app.ring (4) do not
    f.write_text("weights: [1]\n")
    with pytest.raises(grading.GradingError):
        grading.load(f)
    f.write_text("count: ['reach.*', 'app.ring@pyro1', 'service.*.running@*']\nweights: {'app.*@client': 0.5}\n")
    assert grading.load(f)["weights"] == {"app.*@client": 0.5}


@pytest.mark.parametrize("text, says", [
    ("count: ['reach.*', 'apps.*']", "'apps.*' matches no check (their ids: app.celery, app.file, "),
    ("weights: {service.rign.*: 2}", "'service.rign.*' matches no check"),
    ("count: ['app.ring@pyro1', 'ring@pyro1']", "'ring@pyro1' matches no check"),
    ("weights: {app.*: .inf}", "`weights` maps patterns to numbers (0 or more)"),
    ("weights: {app.*: -1}", "`weights` maps patterns to numbers (0 or more)"),
    ("weights: {app.*: true}", "`weights` maps patterns to numbers (0 or more)"),
    ("groups: {rings: 3}", "`groups` maps groups of the course's cluster (brokers, clients, nameservers, ring, "),
    ("groups: {ring: 0}", "to the least number of hosts each must have (1 or more)"),
    ("groups: {ring: '3'}", "to the least number of hosts each must have (1 or more)"),
    ("groups: {ring: true}", "to the least number of hosts each must have (1 or more)"),
    ("groups: [ring]", "to the least number of hosts each must have (1 or more)"),
])
def test_a_grading_pattern_that_matches_no_check_or_a_weight_that_is_no_number_is_refused(tmp_path, text, says):
    """A typo in a pattern counted or weighed nothing, for every student, without a word; an infinite weight made
    every score NaN."""
    f = tmp_path / "g.yml"
    f.write_text(text + "\n")
    with pytest.raises(grading.GradingError) as got:
        grading.load(f)
    assert str(got.value).startswith(f"grading file {f}: ") and says in str(got.value)


def test_a_grading_file_that_is_not_yaml_or_not_there_is_one_line_saying_where(tmp_path):
    f = tmp_path / "g.yml"
    f.write_text("weights:\n  app.*: [4\n")
    with pytest.raises(grading.GradingError) as got:
        grading.load(f)
    assert str(got.value) == (f"grading file {f}: not valid YAML at line 3, column 1: "
                              "expected ',' or ']', but got '<stream end>'")
    with pytest.raises(grading.GradingError, match=r"^grading file \S+: No such file or directory$"):
        grading.load(tmp_path / "absent.yml")
    (tmp_path / "binary.yml").write_bytes(b"count: [\xd0\x00]")
    with pytest.raises(grading.GradingError, match=r"^grading file \S+/binary.yml: not UTF-8 text \(byte 8\)$"):
        grading.load(tmp_path / "binary.yml")


def test_junit_has_one_case_per_check_and_host_with_failures_and_skips():
    cases = list(ET.fromstring(report.junit(sample())).iter("testcase"))
    assert len(cases) == 6
    by = {(x.get("classname"), x.get("name")): x for x in cases}
    assert by[("t.reach.ssh", "b")].find("failure") is not None
    assert "blocked by reach.ssh@b" in by[("t.app.ring", "a")].find("skipped").get("message")


def test_console_names_failures_with_expected_found_hint_and_groups_blocked():
    text = report.console(sample())
    assert "FAIL    reach.ssh on b" in text and "expected: e" in text and "hint:     h" in text
    assert "BLOCKED by reach.ssh@b" in text
    assert text.splitlines()[-1].startswith("failing: 2 failed, 3 blocked, 1 passed")
    assert report.console(sample(broken=False)).splitlines()[-1] == "6 passed in 1.5s"


FAULT = {"id": "part-ab-1", "host": "a", "kind": "partition", "what": "cut from b (10.0.0.3), both ways",
         "since": 1000.0, "until": None}


def test_labkits_own_faults_in_force_head_the_console_and_the_html_report():
    """An instructor who forgot a `fab partition` saw app checks fail with "timed out" and nothing saying why."""
    text = report.console(dict(sample(), faults=[FAULT]))
    assert text.splitlines()[2:4] == [
        "labkit faults in force: failures below may be these (`fab heal` undoes them)",
        "  FAULT   partition on a: cut from b (10.0.0.3), both ways (fault part-ab-1, until healed)"]
    assert "faults in force" not in report.console(sample())
    page = report.html_page(dict(sample(), faults=[FAULT]))
    assert "<h2>labkit faults in force</h2>" in page and "partition on a: cut from b" in page
    assert "faults in force" not in report.html_page(sample())
    for odd in ("soon", 1e300, float("nan"), [1]):  # a record is the host's word: none may end the report
        assert f"until {odd!r})" in report.console(dict(sample(), faults=[dict(FAULT, until=odd)]))


def test_the_host_probe_reads_labkits_fault_records_from_the_directory_it_is_given(tmp_path):
    (tmp_path / "part-ab-1.json").write_text(json.dumps(FAULT))
    (tmp_path / "part-ab-1.undo").write_text("iptables ...")
    (tmp_path / "impair-a-2.json").write_text('{"id": "impair-a-2", "what": "loss')  # half-written: not in force
    probe = selftest.Probe({"faults_dir": str(tmp_path)})
    probe.faults()
    assert probe.facts["faults"] == [FAULT]
    unasked = selftest.Probe({})
    unasked.faults()
    assert "faults" not in unasked.facts  # `labnodes selftest` on a host: no control side, no fault records


def test_html_is_self_contained_and_draws_every_host_and_the_ring():
    page = report.html_page(sample())
    assert "<script" not in page and "<link" not in page
    assert ">a</text>" in page and ">b</text>" in page and "10.0.0.3 (no SSH)" in page
    assert "Pyro4 ring: b → b" in page and "blocked by <code>reach.ssh@b</code>" in page
    assert "<tag>" not in report.html_page(dict(sample(), cluster="<tag>"))  # escaped


def test_a_students_folder_with_a_link_out_of_it_is_not_read(tmp_path):
    """Ansible follows links and its parse errors quote what it read: `hosts -> /some/secret` put a piece of the
    file into the student's report. And a report of an unreadable inventory said "every check passed"."""
    secret = tmp_path / "secret"
    secret.write_text("line one: [oops\nsecret-stuff\n")
    eve = tmp_path / "class" / "eve"
    (eve / "group_vars").mkdir(parents=True)
    (eve / "hosts").symlink_to(secret)
    (eve / "vars.yml").write_text("labkit_backend: lab\n")
    (eve / "group_vars" / "all.yml").symlink_to("../vars.yml")  # a link within the folder is fine
    assert classmode.links_out(eve) == [f"hosts -> {secret}"]
    got = classmode.check_student(eve, timeout=5)
    assert (got["status"], got["error"]) == ("broken inventory", f"{eve}: links out of the student's folder, not "
                                                                 f"read: hosts -> {secret}")
    page = report.html_page(got)
    assert "oops" not in page and "every check passed" not in page and "None ran" in page
    assert classmode.links_out(tmp_path / "class") == ["eve/hosts -> " + str(secret)]
    (eve / "hosts").unlink()
    (eve / "a").symlink_to("b")
    (eve / "b").symlink_to("a")  # a loop: no crash, and Ansible's own error
    assert classmode.links_out(eve) == []
    assert classmode.check_student(eve, timeout=5)["status"] == "broken inventory"


def test_class_files_have_a_row_per_student_even_before_they_are_checked(tmp_path):
    import openpyxl
    results = {"ana": sample(broken=False), "bob": sample(), "dan": failed_report(tmp_path / "dan", "bad yaml")}
    classmode.write_class(tmp_path, ["ana", "bob", "cem", "dan"], results, grading.load(None))
    rows = {r["student"]: r for r in csv.DictReader((tmp_path / "class.csv").open())}
    assert rows["ana"]["status"] == "ok" and rows["ana"]["percent"] == "100.0"
    assert rows["bob"]["reach.ssh@b"] == "fail" and rows["bob"]["app.ring@a"] == "blocked"
    assert rows["cem"]["status"] == "not checked (run interrupted)"
    assert rows["dan"]["status"] == "broken inventory: bad yaml"
    wb = openpyxl.load_workbook(tmp_path / "class.xlsx")
    assert wb.sheetnames == ["Class", "Summary", "Failures"]
    assert {r[0] for r in wb["Failures"].iter_rows(min_row=2, values_only=True)} == {"bob", "cem", "dan"}


def test_selftest_cli_is_registered():
    from labnodes import cli
    args = cli.build_parser().parse_args(["selftest", "--json"])
    assert args.json is True and json.dumps(selftest.plan({}))


def test_an_interrupted_class_run_still_writes_the_class_files(tmp_path, monkeypatch):

    for name in ("ana", "bob", "cem"):
        (tmp_path / "class" / name).mkdir(parents=True)

    def fake(path, timeout, groups):
        if path.name == "bob":
            raise KeyboardInterrupt
        return sample(broken=False)

    monkeypatch.setattr(classmode, "check_student", fake)
    with pytest.raises(KeyboardInterrupt):
        classmode.run_class(tmp_path / "class", tmp_path / "out", parallel=1, echo=lambda *a: None)
    rows = {r["student"]: r["status"] for r in csv.DictReader((tmp_path / "out" / "class.csv").open())}
    assert rows["ana"] == "ok" and rows["bob"] == "not checked (run interrupted)" and set(rows) == {"ana", "bob", "cem"}
    assert (tmp_path / "out" / "class.xlsx").exists() and (tmp_path / "out" / "ana.html").exists()


def test_a_class_run_rewrites_its_class_files_every_few_seconds_not_after_every_student(tmp_path, monkeypatch):
    """class.xlsx was rewritten after each student: 0.2-0.5 s a write here, so O(students^2) (about 50 s for
    200 students) on the thread collecting results. Each fake student takes 3 s of a fake clock."""
    names = [f"s{i:02}" for i in range(30)]
    for name in names:
        (tmp_path / "class" / name).mkdir(parents=True)
    now = [0.0]

    def fake(path, timeout, groups):
        now[0] += 3.0
        return sample(broken=False)

    writes = []
    real_write = classmode.write_class
    monkeypatch.setattr(classmode, "check_student", fake)
    monkeypatch.setattr(classmode, "write_class", lambda out, n, results, g: writes.append(len(results)) or
                        real_write(out, n, results, g))
    classmode.run_class(tmp_path / "class", tmp_path / "out", parallel=1, echo=lambda *a: None, clock=lambda: now[0])
    assert writes[0] == 0 and writes[-1] == 30 and len(writes) <= 2 + 90 / classmode.REWRITE, writes
    rows = {r["student"]: r["status"] for r in csv.DictReader((tmp_path / "out" / "class.csv").open())}
    assert rows == dict.fromkeys(names, "ok")


def test_a_finished_students_row_is_written_while_the_others_are_still_being_checked(tmp_path, monkeypatch):
    """A run killed outright (not a Ctrl-C, which writes at the end) leaves the class files at most REWRITE
    seconds behind, even while no other student finishes."""
    import threading

    for name in ("ana", "bob"):
        (tmp_path / "class" / name).mkdir(parents=True)
    release = threading.Event()

    def fake(path, timeout, groups):
        if path.name == "bob":
            release.wait(30)
        return sample(broken=False)

    monkeypatch.setattr(classmode, "check_student", fake)
    monkeypatch.setattr(classmode, "REWRITE", 0.05)
    run = threading.Thread(target=classmode.run_class, args=(tmp_path / "class", tmp_path / "out"),
                           kwargs={"echo": lambda *a: None})
    run.start()
    try:
        class_csv, rows = tmp_path / "out" / "class.csv", {}
        for _ in range(200):  # up to 10 s
            if class_csv.exists():
                rows = {r["student"]: r["status"] for r in csv.DictReader(class_csv.open())}
                if rows["ana"] == "ok":
                    break
            release.wait(0.05)
        assert rows == {"ana": "ok", "bob": "not checked (run interrupted)"}
    finally:
        release.set()
        run.join()


def test_selftest_reports_unreadable_settings_as_a_failed_check_instead_of_stopping(tmp_path, monkeypatch, capsys):
    from labnodes import cli
    bad = tmp_path / "labnodes.toml"
    bad.write_text("redis_port = = 6379\n")
    bad.chmod(0o600)
    monkeypatch.setenv("LABNODES_CONFIG", str(bad))
    monkeypatch.setattr(selftest, "SETTINGS", str(bad))
    monkeypatch.setattr(selftest, "programs", lambda: {  # a ring node, not this box's own supervisord
        "labnodes-ring": {"state": "RUNNING", "pid": 50, "cmdline": "labnodes ring serve"}})
    monkeypatch.setattr(selftest, "listeners", lambda: [("10.0.0.3", 4100, {50: "labnodes"})])
    monkeypatch.setattr(selftest, "family", lambda pid: {pid})
    assert cli.main(["selftest", "--json"]) == 1
    out = capsys.readouterr()
    assert "labnodes: error" not in out.err
    got = {x["id"]: x for x in json.loads(out.out)["checks"]}
    assert got["host.settings"]["outcome"] == "fail" and str(bad) in got["host.settings"]["found"]
    assert got["service.ring.running"]["outcome"] == "pass"
    # where it should listen is in the settings: not known, so not a finding of its own
    assert got["service.ring.listens"]["outcome"] == "blocked"
    assert got["service.ring.listens"]["blocked_by"] == "host.settings"


def test_selftest_judges_the_settings_by_labnodes_own_rules(tmp_path, monkeypatch, capsys):
    """`ring_port = "abc"` is valid TOML, and the ring node would not start with it: the probe passed
    host.settings, then crashed on int("abc") (fab check: host.probe failing, "install python3"; labnodes
    selftest: a traceback)."""
    from labnodes import cli
    bad = tmp_path / "labnodes.toml"
    bad.write_text('ring_host = "10.0.0.3"\nring_port = "abc"\n')
    bad.chmod(0o600)
    monkeypatch.setenv("LABNODES_CONFIG", str(bad))
    monkeypatch.setattr(selftest, "SETTINGS", str(bad))
    monkeypatch.setattr(selftest, "programs", lambda: {
        "labnodes-ring": {"state": "RUNNING", "pid": 50, "cmdline": "labnodes ring serve"}})
    monkeypatch.setattr(selftest, "listeners", lambda: [("10.0.0.3", 4100, {50: "labnodes"})])
    monkeypatch.setattr(selftest, "family", lambda pid: {pid})
    assert cli.main(["selftest", "--json"]) == 1
    out = capsys.readouterr()
    got = {x["id"]: x for x in json.loads(out.out)["checks"]}
    assert got["host.settings"]["outcome"] == "fail"
    assert got["host.settings"]["found"] == f"{bad}: ring_port must be int, got 'abc'"  # labnodes.config's words
    assert got["host.labnodes"]["outcome"] == "pass" and got["host.labnodes"]["found"].startswith("labnodes ")
    assert got["service.ring.listens"]["blocked_by"] == "host.settings"  # the file's values are not used


def test_a_setting_the_checks_cannot_use_is_a_finding_where_the_venv_cannot_judge_it(monkeypatch):
    monkeypatch.setattr(selftest, "read_settings", lambda path=None: (
        {"ring_host": "10.0.0.3", "ring_port": "abc", "ns_host": "10.0.0.1", "ns_port": "x"},
        SimpleNamespace(st_uid=0, st_gid=0, st_mode=0o100600), ""))
    monkeypatch.setattr(selftest, "programs", lambda: {
        "labnodes-ring": {"state": "RUNNING", "pid": 50, "cmdline": "labnodes ring serve"}})
    monkeypatch.setattr(selftest, "listeners", lambda: [("10.0.0.3", 4100, {50: "labnodes"})])
    monkeypatch.setattr(selftest, "family", lambda pid: {pid})
    result = selftest.probe({"services": ["ring"], "vars": {"labnodes_venv": "/nonexistent/venv"}})
    got = {x["id"]: x for x in selftest.resolve(result["checks"])}
    assert got["host.labnodes"]["outcome"] == "fail"
    listens = got["service.ring.listens"]
    assert (listens["outcome"], listens["found"]) == ("fail", "ring_port = 'abc'")
    assert got["reach.nameserver"]["found"] == "not an address and port: '10.0.0.1', 'x'"


def test_a_silent_supervisord_blocks_the_service_checks_of_its_host_but_not_the_broker_password(monkeypatch):
    monkeypatch.setattr(selftest, "read_settings", lambda path=None: (
        {"redis_host": "10.0.0.1", "redis_port": 6379, "redis_password": "pw"},
        SimpleNamespace(st_uid=0, st_gid=0, st_mode=0o100600), ""))
    monkeypatch.setattr(selftest, "programs", lambda: None)
    monkeypatch.setattr(selftest, "listeners", lambda: [])
    monkeypatch.setattr(selftest, "talk", lambda *a, **kw: "+OK")
    result = selftest.probe({"host": "h", "services": ["ring", "celery"], "ring_next": "n", "peers": {}})
    got = {x["id"]: x for x in selftest.resolve(result["checks"])}
    assert got["host.supervisord"]["outcome"] == "fail"
    for cid in ("service.ring.running", "service.ring.listens", "service.ring.next", "service.celery.running"):
        assert got[cid]["outcome"] == "blocked" and got[cid]["blocked_by"] == "host.supervisord", got[cid]
    assert got["service.celery.broker"]["outcome"] == "pass"


@pytest.mark.parametrize("given, message", [
    ({"out": "reports"}, "--out FOLDER is for --class DIR; one cluster's reports go to --junit PATH or --html PATH"),
    ({"class_": "students"}, "--class needs --out FOLDER"),
    ({"class_": "students", "out": "o", "inventory_": "inv"}, "give --class or --inventory"),
    ({"class_": "students", "out": "o", "junit": "c.xml"}, "--junit: for one cluster; --class writes class.csv"),
    ({"class_": "students", "out": "o", "html": "c.html", "json_": True}, "--html and --json: for one cluster"),
])
def test_check_options_that_a_mode_would_ignore_are_refused(given, message):
    """`fab check --out reports` checked one cluster and wrote nothing into reports, silently; so did --junit,
    --html and --json with --class."""
    from labkit.checks import check_modes

    options = dict(dict.fromkeys(["class_", "out", "inventory_", "junit", "html", "json_"]), **given)
    with pytest.raises(LabkitError, match=re.escape(message)):
        check_modes(**options)


def test_check_options_of_each_mode_are_accepted():
    from labkit.checks import check_modes

    check_modes(None, None, "inv", "c.xml", "c.html", True)
    check_modes("students", "o", None, None, None, False)


@pytest.mark.parametrize("section, path", [
    # Debian's own /etc/supervisor/supervisord.conf (the VMs' and lab machines'): an inline comment after the path
    ("file=/var/run/supervisor.sock   ; (the path to the socket file)\nchmod=0700   ; sockef file mode",
     "/var/run/supervisor.sock"),
    ("file = /run/labkit/supervisor.sock   # ours, one day", "/run/labkit/supervisor.sock"),
    ("file=/run/labnodes-supervisor.sock", "/run/labnodes-supervisor.sock"),  # the netns hosts' own file
    ("file=/run/s.sock\nusername=u\npassword=p", None),  # the look does not send credentials: supervisorctl does
    ("file=%(here)s/s.sock", None),
])
def test_the_supervisord_socket_is_read_as_supervisor_reads_its_file(tmp_path, section, path):
    """With Debian's file the look read the path with its comment, could not connect, and fell back to two
    supervisorctl runs: 9 of the broker VM's 14 s of probe, and `fab check` timed out on it."""
    conf = tmp_path / "supervisord.conf"
    conf.write_text(f"[unix_http_server]\n{section}\n\n[supervisord]\nlogfile=/var/log/supervisor/supervisord.log ; x\n")
    assert selftest.supervisor_socket(str(conf)) == path
    assert selftest.supervisor_socket(str(tmp_path / "missing.conf")) is None


def test_a_probe_that_runs_out_of_time_is_told_to_give_the_host_more_not_to_install_python(monkeypatch):
    """On the emulated broker VM the probe ran past 120 s, and the hint said to install python3."""
    from invoke.exceptions import CommandTimedOut

    from labkit import inventory
    from labkit.checks import Run

    def ssh(self, host, command, timeout=None):
        raise CommandTimedOut(SimpleNamespace(command=command), timeout=self.timeout)

    monkeypatch.setattr(Run, "ssh", ssh)
    monkeypatch.setattr(Run, "ctx", lambda self, h: {})
    host = inventory.Host("broker", "10.0.0.5")
    res = Run(SimpleNamespace(hosts=[host]), timeout=120.0).probe(host)
    assert res["ran"] and res["error"] == "the probe did not finish within 120 s"
    assert res["hint"].startswith("a slow host") and "--timeout" in res["hint"] and "install" not in res["hint"]


def test_the_check_timeout_is_the_flag_else_the_inventorys_else_twenty_seconds():
    from labkit.checks import DEFAULT_TIMEOUT, Run, timeout_for

    def inv(*values):
        return SimpleNamespace(hosts=[SimpleNamespace(vars={} if v is None else {"labkit_check_timeout": v})
                                      for v in values])

    assert timeout_for(inv(None, None)) == DEFAULT_TIMEOUT == 20.0
    assert timeout_for(inv(120, 120)) == 120.0  # inventory/vagrant: emulated VMs are slow
    assert timeout_for(inv(120, None), timeout=5) == 5.0
    # each step of the probe on a host gets a sixth of it, at least 3 s, but at most a quarter of it: a step that
    # waits out its time (a peer behind a partition) leaves the probe time for the rest
    assert Run(inv(None), timeout=20.0).op_timeout == 3.3 and Run(inv(None), timeout=120.0).op_timeout == 20.0
    assert Run(inv(None), timeout=12.0).op_timeout == 3.0 and Run(inv(None), timeout=8.0).op_timeout == 2.0
    assert Run(inv(None), timeout=4.0).op_timeout == 1.0


@pytest.mark.parametrize("value, message", [
    ("abc", "labkit_check_timeout 'abc' is not a number"),
    (0, "labkit_check_timeout 0: must be above 0 and at most 3600"),
    (-5, "must be above 0"),
    (99999, "must be above 0 and at most 3600"),
])
def test_a_check_timeout_in_the_inventory_that_is_not_a_sane_number_is_one_clear_error(value, message):
    """Before, `labkit_check_timeout: abc` ended fab check in a ValueError traceback, and 0 timed every probe out."""
    from labkit.checks import timeout_for

    inv = SimpleNamespace(hosts=[SimpleNamespace(vars={"labkit_check_timeout": value})])
    with pytest.raises(LabkitError, match=re.escape(message)):
        timeout_for(inv)


def test_a_student_whose_inventory_sets_a_bad_check_timeout_gets_that_line_in_the_class_files(tmp_path):
    from labkit import inventory

    student = inventory.new_sized(tmp_path / "eve", "eve", "10.77.98.0/24")
    hosts = student / "hosts.yml"
    hosts.write_text(hosts.read_text().replace("  vars:\n", "  vars:\n    labkit_check_timeout: abc\n", 1))
    got = classmode.check_student(student, None)
    assert (got["status"], got["error"]) == ("broken inventory", "labkit_check_timeout 'abc' is not a number")


def test_the_checks_as_pytest_tests_with_an_inventory_that_is_not_there_is_one_line_and_exit_4(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pytest", "tests/infra", f"--ansible-inventory={tmp_path}/absent",
                           "-q", "-p", "no:cacheprovider"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert f"labkit: inventory {tmp_path}/absent does not exist" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr and "error during collection" not in proc.stdout


# --- text from the hosts, and the report files -------------------------------------------------------------------

HOSTILE = "OK \x1b[2J\x00gcd=6\r\x9b \udc80\ufffe, tab\tand é"  # a terminal escape, NUL, CR, C1 CSI, a surrogate


def test_text_from_the_hosts_reaches_every_report_with_its_control_characters_escaped(tmp_path, monkeypatch):
    """A student's math server can answer anything, and a check's `found` shows it. Unescaped, it cleared the
    instructor's terminal, made the JUnit XML unreadable, and openpyxl's IllegalCharacterError ended the whole class
    run at the first such student."""
    from labkit import checks, inventory
    inv = inventory.Inventory(path=tmp_path, cluster="t", subnet=None, backend="lab",
                              hosts=(inventory.Host("a", "10.0.0.2"),), groups={"sockservers": ("a",)})
    monkeypatch.setattr(checks, "Hosts", lambda inv: contextlib.nullcontext())
    monkeypatch.setattr(checks.Run, "host_layers",
                        lambda self: self.add("app.math", "a", "fail", expected="OK", found=HOSTILE, hint="h"))
    monkeypatch.setattr(checks.Run, "app_layer", lambda self: None)
    got = checks.run(inv)

    escaped = "OK \\x1b[2J\\x00gcd=6\\x0d\\x9b \\udc80\\ufffe, tab\tand é"
    assert got["checks"][0]["found"] == escaped
    assert "\x1b" not in report.console(got) and escaped in report.console(got)
    found = ET.fromstring(report.junit(got)).find(".//failure").get("message")
    assert found.endswith(escaped)
    assert escaped in report.html_page(got)
    classmode.write_class(tmp_path, ["ana"], {"ana": got}, grading.load(None))
    import openpyxl
    assert openpyxl.load_workbook(tmp_path / "class.xlsx")["Failures"]["G2"].value == escaped


def test_an_unreadable_student_and_a_student_folder_named_with_an_escape_still_give_the_class_files(tmp_path):
    """Ansible's error about a binary file in a student's folder quotes the bytes it could not parse."""
    import openpyxl
    name = "bob\x1b[31m"
    results = {name: failed_report(tmp_path / name, "Expected key=value, got: \x00\x00\x7fELF")}
    classmode.write_class(tmp_path, [name], results, grading.load(None))
    rows = list(openpyxl.load_workbook(tmp_path / "class.xlsx")["Class"].iter_rows(min_row=2, values_only=True))
    assert rows[0][:2] == ("bob\\x1b[31m", "broken inventory: Expected key=value, got: \\x00\\x00\\x7fELF")


def test_a_report_file_that_cannot_be_written_is_refused_before_the_check_runs(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(LabkitError, match=r"^--junit \S+/no/j.xml: cannot write in \S+/no: No such file or directory$"):
        report.check_output("--junit", tmp_path / "no" / "j.xml")
    with pytest.raises(LabkitError, match=r"^--html \S+/file/p.html: cannot write in \S+/file: Not a directory$"):
        report.check_output("--html", tmp_path / "file" / "p.html")
    with pytest.raises(LabkitError, match=r"^--html \S+: is a folder; give a file name$"):
        report.check_output("--html", tmp_path)
    report.check_output("--html", tmp_path / "p.html")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # the probe leaves nothing


def test_a_report_file_is_replaced_whole_or_left_as_it_was(tmp_path):
    """A write that fails half-way (here a file size limit, as a full disk would) leaves the old report and no
    temporary file."""
    path = tmp_path / "r.html"
    report.save("--html", path, "old")
    code = ("import resource, signal, sys; from labkit.checks import report; from labkit import LabkitError\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))\n"
            "try: report.save('--html', sys.argv[1], 'new ' * 1000)\n"
            "except LabkitError as exc: print(exc)")
    r = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (0, f"--html {path}: cannot write it: File too large\n", "")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]


def test_a_class_out_that_is_a_file_or_cannot_be_made_is_one_line_before_any_student_is_checked(tmp_path):
    (tmp_path / "class" / "ana").mkdir(parents=True)
    (tmp_path / "out").write_text("x")
    with pytest.raises(LabkitError, match=r"^--out \S+/out: is a file, not a folder$"):
        classmode.run_class(tmp_path / "class", tmp_path / "out")
    with pytest.raises(LabkitError, match=r"^--out \S+/out/sub: cannot make the folder: Not a directory$"):
        classmode.run_class(tmp_path / "class", tmp_path / "out" / "sub")
