"""Faults and scenarios without a cluster: argument validation and its messages, the rules and qdiscs generated,
the host-side scripts (run for real where they need no root: the all-or-nothing apply and the heal), and scenario
files with every kind of mistake."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from labkit import faults, inventory, scenario
from labkit.faults import FaultError, Impairment
from labkit.remote import Hosts, RemoteError, selftest_command
from labkit.scenario import ScenarioError

REPO = Path(__file__).resolve().parents[2]


# --- arguments ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, bps", [("1mbit", 1_000_000), ("500kbit", 500_000), ("2.5Mbit", 2_500_000),
                                       ("1gbit", 1_000_000_000), ("8000bit", 8000)])
def test_rate_is_parsed_in_bits_per_second(text, bps):
    assert faults.parse_rate(text) == bps


@pytest.mark.parametrize("text, says", [("10", "number and a unit"), ("10mbps", "number and a unit"),
                                        ("fast", "number and a unit"), ("1kbit", "between 8kbit"),
                                        ("-1mbit", "number and a unit")])
def test_bad_rates_are_refused_with_what_to_write(text, says):
    with pytest.raises(FaultError, match=says):
        faults.parse_rate(text)


def test_impairment_needs_something_to_do():
    with pytest.raises(FaultError, match="nothing to impair"):
        Impairment.parse()


@pytest.mark.parametrize("kwargs, says", [
    ({"loss": "0"}, "--loss '0': must be above 0"), ({"loss": "101"}, "at most 100"),
    ({"loss": "lots"}, "is not a number"), ({"jitter": "5"}, "give --delay too"),
    ({"delay": "5", "jitter": "10"}, "larger than --delay"), ({"delay": "-1"}, "must be above 0"),
])
def test_impairment_arguments_are_checked(kwargs, says):
    with pytest.raises(FaultError, match=says):
        Impairment.parse(**kwargs)


def test_impairment_describes_itself_and_knows_when_it_needs_netem():
    imp = Impairment.parse(loss="5", rate="10mbit")
    assert imp.describe() == "loss 5% each way, rate 10mbit each way" and not imp.needs_netem
    assert Impairment.parse(delay="20", jitter="5").needs_netem


@pytest.mark.parametrize("value, ok", [(None, None), ("30", 30.0), ("0", FaultError), ("100000", FaultError),
                                       ("soon", FaultError)])
def test_for_is_seconds_within_a_day(value, ok):
    if ok is FaultError:
        with pytest.raises(FaultError, match="--for"):
            faults.parse_for(value)
    else:
        assert faults.parse_for(value) == ok


@pytest.mark.parametrize("target, parsed", [("worker1", ("worker1", None)),
                                            ("worker1:labnodes-celery-worker", ("worker1", "labnodes-celery-worker"))])
def test_targets(target, parsed):
    assert faults.parse_target(target) == parsed


@pytest.mark.parametrize("target", ["", ":x", "worker1:", "worker1:a b", "w:$(reboot)"])
def test_bad_targets_are_refused(target):
    with pytest.raises(FaultError):
        faults.parse_target(target)


# --- what runs on a host --------------------------------------------------------------------------------------

IP_ADDR = """1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
2: eth0    inet 10.0.2.15/24 brd 10.0.2.255 scope global dynamic eth0\\       valid_lft 86000sec
3: eth1    inet 192.168.56.11/24 brd 192.168.56.255 scope global eth1\\       valid_lft forever
"""


def test_the_cluster_interface_is_the_one_holding_the_inventory_address_not_eth0():
    assert faults.interface_for(IP_ADDR, "192.168.56.11") == "eth1"  # a Vagrant VM: the second NIC
    assert faults.interface_for(IP_ADDR, "192.168.56.1") is None  # a prefix of another address is no match


def test_loss_rules_drop_in_both_directions_on_the_cluster_interface_only_tagged_with_the_fault():
    rules = faults.loss_rules("impair-x-1", "eth1", 5)
    assert [r[0] for r in rules] == [faults.CHAIN_IN, faults.CHAIN_OUT]
    assert rules[0][1:3] == ["-i", "eth1"] and rules[1][1:3] == ["-o", "eth1"]
    for r in rules:
        assert r[r.index("--probability") + 1] == "0.05"
        assert r[r.index("--comment") + 1] == "labkit-fault impair-x-1" and r[-2:] == ["-j", "DROP"]


def test_partition_rules_drop_from_and_to_the_peer():
    rules = faults.partition_rules("part-1", "10.77.80.30")
    assert rules[0][:3] == [faults.CHAIN_IN, "-s", "10.77.80.30"]
    assert rules[1][:3] == [faults.CHAIN_OUT, "-d", "10.77.80.30"]


def test_chains_spare_sshd_and_are_jumped_to_from_input_and_output():
    text = "\n".join(faults.chains_setup(2222))
    assert "--dport 2222" in text and "--sport 2222" in text and "RETURN" in text
    assert "-I INPUT 1 -m comment --comment labkit-fault -j LABKIT-FAULT-IN" in text
    assert "-I OUTPUT 1 -m comment --comment labkit-fault -j LABKIT-FAULT-OUT" in text


def test_rate_shapes_both_ways_with_tbf_and_an_ifb_and_undoes_exactly_that():
    apply, undo = faults.tc_plan("eth1", Impairment.parse(rate="10mbit"))
    text = "\n".join(apply)
    assert "tc qdisc add dev eth1 root handle 1ab: tbf rate 10000000bit" in text
    assert "ip link add lkf-ifb type ifb" in text and "redirect dev lkf-ifb" in text
    assert f"pref {faults.FILTER_PREF}" in text and "netem" not in text
    assert "tc qdisc del dev eth1 root handle 1ab:" in "\n".join(undo) and "ip link del lkf-ifb" in "\n".join(undo)


def test_delay_uses_netem_on_what_the_host_sends():
    apply, _ = faults.tc_plan("eth0", Impairment.parse(delay="40", jitter="10", rate="1mbit"))
    assert apply[0] == "tc qdisc add dev eth0 root handle 1ab: netem delay 40ms 10ms rate 1000000bit"


def test_loss_alone_adds_no_qdisc():
    assert faults.tc_plan("eth0", Impairment.parse(loss="1")) == ([], [])


def _sh(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run a host-side script with the state directory moved into tmp_path (no root, nothing on the box)."""
    return subprocess.run(["sh", "-c", script.replace(faults.STATE_DIR, str(tmp_path / "faults"))],
                          capture_output=True, text=True, timeout=60)


def test_a_failing_step_rolls_back_the_steps_before_it_and_leaves_no_record(tmp_path):
    mark = tmp_path / "applied"
    rec = faults.record("impair-t-1", "h", "impair", "test", None)
    script = faults.apply_script(rec, [f"touch {mark}", "false", f"touch {tmp_path}/never"], [f"rm -f {mark}"], None)
    proc = _sh(script, tmp_path)
    assert proc.returncode != 0
    assert not mark.exists() and not (tmp_path / "never").exists()
    assert list((tmp_path / "faults").iterdir()) == []


def test_a_fault_is_recorded_and_heal_undoes_it_and_removes_the_record(tmp_path):
    mark = tmp_path / "applied"
    rec = faults.record("stop-t-2", "h", "stop", "test", None)
    assert _sh(faults.apply_script(rec, [f"touch {mark}"], [f"rm -f {mark}"], None), tmp_path).returncode == 0
    assert mark.exists()
    assert json.loads((tmp_path / "faults" / "stop-t-2.json").read_text())["what"] == "test"
    out = _sh(faults.heal_script(), tmp_path).stdout
    assert out.strip() == "healed stop-t-2" and not mark.exists()
    assert list((tmp_path / "faults").iterdir()) == []


def test_for_undoes_the_fault_by_itself_after_the_script_has_exited(tmp_path):
    mark = tmp_path / "applied"
    rec = faults.record("stop-t-3", "h", "stop", "test", 1)
    assert rec["until"] - rec["since"] == 1
    assert _sh(faults.apply_script(rec, [f"touch {mark}"], [f"rm -f {mark}"], 1), tmp_path).returncode == 0
    assert mark.exists()
    deadline = time.monotonic() + 30  # the undo removes the mark, then the record: wait for both
    while (mark.exists() or any((tmp_path / "faults").iterdir())) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not mark.exists()
    assert list((tmp_path / "faults").iterdir()) == []


def test_an_exclusive_fault_is_refused_on_the_host_when_one_of_its_kind_is_recorded(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    rec = faults.record("impair-h-1", "h", "impair", "loss 5%", None)
    assert _sh(faults.apply_script(rec, [f"touch {first}"], [f"rm -f {first}"], None, exclusive="impair-h-"),
               tmp_path).returncode == 0
    rec2 = faults.record("impair-h-2", "h", "impair", "loss 10%", None)
    proc = _sh(faults.apply_script(rec2, [f"touch {second}"], [f"rm -f {second}"], None, exclusive="impair-h-"),
               tmp_path)
    assert (proc.returncode, proc.stderr) == (3, f"{faults.ALREADY} impair-h-1\n")
    assert first.exists() and not second.exists()
    assert sorted(p.name for p in (tmp_path / "faults").iterdir()) == ["impair-h-1.json", "impair-h-1.undo"]


def test_the_control_side_reads_a_refused_exclusive_fault_from_the_exit_status_and_stderr(tmp_path):
    rec = faults.record("impair-h-1", "h", "impair", "loss 5%", None)
    _sh(faults.apply_script(rec, ["true"], ["true"], None, exclusive="impair-h-"), tmp_path)
    rec2 = faults.record("impair-h-2", "h", "impair", "loss 10%", None)
    proc = _sh(faults.apply_script(rec2, ["true"], ["true"], None, exclusive="impair-h-"), tmp_path)
    refused = RemoteError("h: `set -e` exited 3: ...", exited=proc.returncode, stderr=proc.stderr)
    assert faults.already_in_force(refused) == "impair-h-1"


def test_a_failure_that_only_quotes_the_refusal_is_not_taken_for_one():
    """The error quotes the script, which holds ALREADY itself: only exit 3 with ALREADY on stderr is a refusal."""
    quoted = f'h: `set -e ... echo "{faults.ALREADY} $(basename ...)"` exited 1: tc: RTNETLINK answers: Invalid'
    assert faults.already_in_force(RemoteError(quoted, exited=1, stderr="RTNETLINK answers: Invalid\n")) is None
    assert faults.already_in_force(RemoteError(quoted, exited=3, stderr="something else\n")) is None
    assert faults.already_in_force(RemoteError("h: cannot connect over SSH", unreachable=True)) is None


def test_two_exclusive_faults_applied_at_once_on_one_host_leave_one(tmp_path):
    """Two `fab impair client --loss` at once both passed the control side's check and stacked their losses: the
    host now changes its faults one script at a time, so the second sees the first's record."""
    scripts = [faults.apply_script(faults.record(f"impair-h-{i}", "h", "impair", "loss", None),
                                   ["sleep 0.5", f"touch {tmp_path}/applied-{i}"], [], None, exclusive="impair-h-")
               for i in (1, 2)]
    procs = [subprocess.Popen(["sh", "-c", s.replace(faults.STATE_DIR, str(tmp_path / "faults"))], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for s in scripts]
    for p in procs:
        p.communicate(timeout=60)
    assert sorted(p.returncode for p in procs) == [0, 3]
    assert len(list(tmp_path.glob("applied-*"))) == 1


def test_a_for_timer_does_not_hold_the_hosts_fault_lock(tmp_path):
    rec = faults.record("stop-t-4", "h", "stop", "test", 300)
    assert _sh(faults.apply_script(rec, ["true"], [], 300), tmp_path).returncode == 0
    try:
        other = faults.record("stop-t-5", "h", "stop", "test", None)
        proc = subprocess.run(["sh", "-c", faults.apply_script(other, ["true"], [], None).replace(
            faults.STATE_DIR, str(tmp_path / "faults"))], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr  # a timeout here: the timer of stop-t-4 held the lock
    finally:
        assert "healed stop-t-4" in _sh(faults.heal_script(), tmp_path).stdout


def test_fault_rows_show_where_what_since_and_until():
    rec = {"id": "i", "host": "pyro2", "kind": "impair", "what": "loss 5%", "since": 1000.0, "until": 1030.0}
    row = next(faults.fault_rows([rec], now=1010.0))
    assert row[:3] == ["pyro2", "impair", "loss 5%"] and "(20s left)" in row[4]
    assert next(faults.fault_rows([dict(rec, until=None)], now=1010.0))[4] == "until healed"


# --- scenarios ------------------------------------------------------------------------------------------------

def test_the_shipped_example_parses():
    sc = scenario.load(REPO / "scenarios" / "ride-through.yml")
    assert [s.action for s in sc.steps] == ["kill", "stop", "impair", "partition", "heal"]
    assert sc.run == "ring" and sc.end == 12
    assert sc.steps[2].options == {"loss": 5} and sc.steps[3].target == ("client", "sockserver")
    assert sc.steps[4].target is None


@pytest.mark.parametrize("path", sorted((REPO / "scenarios").glob("*.yml")), ids=lambda p: p.name)
def test_every_shipped_scenario_parses_and_heals_at_the_end(path):
    sc = scenario.load(path)
    assert sc.run in scenario.RUNS and sc.steps[-1].action == "heal"


def test_steps_are_sorted_by_time_and_end_defaults_to_after_the_last():
    sc = scenario.parse("steps:\n  - {at: 5, heal: all}\n  - {at: 1, stop: pyro1}\n")
    assert [s.at for s in sc.steps] == [1, 5] and sc.end == 5 + scenario.TAIL


@pytest.mark.parametrize("text, says", [
    ("[1, 2", "not valid YAML at line 1, column 6: expected ',' or ']', but got '<stream end>'"),
    ("steps: []", "non-empty `steps:`"),
    ("steps:\n  - {at: 1, heal: all}\nrepeat: 3", "unknown key"),
    ("steps:\n  - {kill: w1}", "`at` must be seconds"),
    ("steps:\n  - {at: -1, kill: w1}", "`at` must be seconds"),
    ("steps:\n  - {at: 1}", "exactly one action"),
    ("steps:\n  - {at: 1, kill: w1, stop: w2}", "exactly one action"),
    ("steps:\n  - {at: 1, explode: w1}", "exactly one action"),
    ("steps:\n  - {at: 1, impair: pyro2}", "nothing to impair"),
    ("steps:\n  - {at: 1, impair: pyro2, loss: 200}", "at most 100"),
    ("steps:\n  - {at: 1, impair: pyro2, rate: 10}", "unit"),
    ("steps:\n  - {at: 1, kill: w1, loss: 5}", "kill does not take loss"),
    ("steps:\n  - {at: 1, partition: client}", "two host names"),
    ("steps:\n  - {at: 1, partition: [a, a]}", "two different hosts"),
    ("steps:\n  - {at: 1, stop: 'w1:'}", "HOST or HOST:PROGRAM"),
    ("steps:\n  - {at: 1, stop: w1, for: 0}", "--for"),
    ("run: pyro\nsteps:\n  - {at: 1, heal: all}", "run 'pyro'"),
    ("end: 1\nsteps:\n  - {at: 5, heal: all}", "not before the last step"),
])
def test_scenario_mistakes_are_named_with_their_step(text, says):
    with pytest.raises(ScenarioError, match=says) as err:
        scenario.parse(text, "my.yml")
    assert str(err.value).startswith("my.yml: ")


def test_step_errors_say_which_step():
    with pytest.raises(ScenarioError, match="step 2:"):
        scenario.parse("steps:\n  - {at: 1, heal: all}\n  - {at: 2, impair: x}\n")


def test_unknown_hosts_are_refused_before_anything_runs():
    sc = scenario.parse("steps:\n  - {at: 1, partition: [client, nosuch]}\n", "s.yml")
    with pytest.raises(ScenarioError, match="'nosuch' is not a host"):
        scenario.check_hosts(sc, ["client", "sockserver"])
    scenario.check_hosts(scenario.parse("steps:\n  - {at: 1, heal: all}\n"), ["client"])


def test_a_missing_file_is_one_line():
    with pytest.raises(ScenarioError, match="No such file"):
        scenario.load("/nonexistent/scenario.yml")


def test_a_binary_file_given_as_a_scenario_is_one_line(tmp_path):
    """It was a UnicodeDecodeError traceback (say, `fab scenario` given a program instead of its YAML)."""
    path = tmp_path / "s.yml"
    path.write_bytes(b"steps:\n  - {at: 1, heal: all}\n\xd0\x00\xff")
    with pytest.raises(ScenarioError) as err:
        scenario.load(path)
    assert str(err.value) == f"scenario {path}: not UTF-8 text (byte 30)"
    path.write_text("steps:\n  - {at: 1, heal: all}\n")
    assert scenario.load(path).name == str(path)  # a scenario without a name: its file's


# --- the control side's decisions, against hosts that only record what they are asked ------------------------

class FakeResult:
    def __init__(self, stdout="", exited=0):
        self.stdout, self.stderr, self.exited = stdout, "", exited


class FakeHosts(Hosts):
    """Hosts whose commands are answered by `answer(name, command) -> (stdout, exit code)` and recorded."""

    def __init__(self, answer):
        hosts = tuple(inventory.Host(n, a, {}) for n, a in [("client", "10.77.1.40"), ("sockserver", "10.77.1.30"),
                                                             ("pyro2", "10.77.1.22")])
        super().__init__(inventory.Inventory(Path("inv"), "t", None, "netns", hosts, {}))
        self.answer, self.commands = answer, []

    def run(self, name, command, *, check=True, timeout=None):  # the signature of labkit.remote.Hosts.run
        if command.startswith(selftest_command("python3", "--programs")):  # Hosts.programs: the host's look, from the
            status, code = self.answer(name, "supervisorctl status")  # answer given for supervisorctl status
            progs = {f[0]: {"state": f[1]} for f in map(str.split, status.splitlines()) if len(f) >= 2}
            return FakeResult(json.dumps({"programs": progs}), code)
        self.commands.append((name, command))
        out, code = self.answer(name, command)
        if check and code:
            raise RemoteError(f"{name}: exited {code}")
        return FakeResult(out, code)


def test_a_partition_whose_second_half_fails_undoes_the_first():
    def answer(name, command):
        return ("", 1) if name == "sockserver" and "set -e" in command else ("", 0)
    hosts = FakeHosts(answer)
    with pytest.raises(FaultError, match="nothing is left applied"):
        faults.partition(hosts, "client", "sockserver")
    applied_first = [c for n, c in hosts.commands if n == "client" and "set -e" in c]
    assert len(applied_first) == 1 and "-s 10.77.1.30" in applied_first[0]
    fid = applied_first[0].split("labkit-fault ")[1].split("'")[0]
    assert ("client", faults.heal_script([fid])) in hosts.commands


def test_delay_refused_runs_nothing_but_the_probes():
    def answer(name, command):
        if command == faults.NETEM_PROBE:
            return "netem=no Error: Specified qdisc kind is unknown.", 0
        return ("6.1.0-test\n" if command == "uname -r" else ""), 0
    hosts = FakeHosts(answer)
    with pytest.raises(FaultError, match="cannot add delay.*6.1.0-test.*Nothing was changed"):
        faults.impair(hosts, "pyro2", delay=20, loss=5)
    assert [c for _, c in hosts.commands] == [faults.TOOLS_PROBE, faults.NETEM_PROBE, "uname -r"]


def test_a_missing_tool_is_named_before_anything_changes():
    hosts = FakeHosts(lambda n, c: ("missing iptables\n" if c == faults.TOOLS_PROBE else "", 0))
    with pytest.raises(FaultError, match="iptables missing on the host"):
        faults.impair(hosts, "pyro2", loss=5)
    assert len(hosts.commands) == 1


STATUS = "labnodes-math RUNNING pid 5, uptime 0:01:00\nlabnodes-file STOPPED\nsshd RUNNING pid 3, uptime 1:00\n"


def _records(*recs):
    return "\n".join(json.dumps(r) for r in recs) + "\n"


def test_start_heals_only_the_stops_it_fully_undoes():
    recs = _records({"id": "stop-a", "host": "sockserver", "kind": "stop", "programs": ["labnodes-math"],
                     "since": 1, "until": None, "what": "x"},
                    {"id": "stop-b", "host": "sockserver", "kind": "stop",
                     "programs": ["labnodes-math", "labnodes-file"], "since": 2, "until": None, "what": "y"})

    def answer(name, command):
        if command == "supervisorctl status":
            return STATUS, 0
        return (recs if command.startswith("cat ") else ""), 0
    hosts = FakeHosts(answer)
    result = faults.fault(hosts, "start", "sockserver:labnodes-math")
    assert result["healed"] == ["stop-a"]
    assert ("sockserver", "supervisorctl start labnodes-math") in hosts.commands


@pytest.mark.parametrize("target, says", [("sockserver:sshd", "not a labnodes program"),
                                          ("sockserver:labnodes-nope", "no supervised program 'labnodes-nope'"),
                                          ("nosuch", "not a host of cluster t")])
def test_programs_outside_labnodes_are_left_alone(target, says):
    hosts = FakeHosts(lambda n, c: (STATUS if c == "supervisorctl status" else "", 0))
    with pytest.raises(FaultError, match=says):
        faults.fault(hosts, "stop", target)


def test_a_host_means_its_labnodes_programs():
    hosts = FakeHosts(lambda n, c: (STATUS if c == "supervisorctl status" else "", 0))
    result = faults.fault(hosts, "stop", "sockserver", for_=30)
    assert result["faults"][0]["programs"] == ["labnodes-file", "labnodes-math"]
    script = hosts.commands[-1][1]
    assert "supervisorctl stop labnodes-file labnodes-math" in script and "sleep 30" in script and "sshd" not in script


def test_heal_of_one_host_also_heals_the_other_half_of_its_partitions():
    rec = {"id": "part-x", "host": "client", "kind": "partition", "peer": "sockserver", "since": 1, "until": None,
           "what": "cut"}
    hosts = FakeHosts(lambda n, c: (_records(rec) if c.startswith("cat ") and n == "client" else "", 0))
    faults.heal(hosts, "client")
    assert ("sockserver", faults.heal_script(["part-x"])) in hosts.commands
    assert not any(n == "pyro2" for n, _ in hosts.commands)


def test_no_interface_holding_the_address_is_an_error_naming_it():
    hosts = FakeHosts(lambda n, c: (IP_ADDR, 0))
    with pytest.raises(FaultError, match="no interface holds its inventory address 10.77.1.22"):
        faults.cluster_interface(hosts, "pyro2")


def test_rate_without_ifb_is_refused_before_anything_changes():
    def answer(name, command):
        return ("ifb=no Error: Unknown device type." if command == faults.IFB_PROBE else ""), 0
    hosts = FakeHosts(answer)
    with pytest.raises(FaultError, match="no ifb device.*Unknown device type.*Nothing was changed"):
        faults.impair(hosts, "pyro2", rate="1mbit")
    assert [c for _, c in hosts.commands] == [faults.TOOLS_PROBE, faults.IFB_PROBE]
