"""Scenarios: a short YAML timeline of faults played while one of the runs repeats, so a class watches it cope.

    name: the ring rides through a crash and a lossy host    # optional, printed first
    run: ring                    # optional default for --run: ring, celery, math or file
    end: 12                      # optional: seconds the runs go on (default: last step + 3)
    steps:
      - {at: 2, kill: "worker1:labnodes-celery-worker"}     # fault kill|stop|start HOST[:PROGRAM]
      - {at: 5, impair: pyro2, loss: 5}                     # impair HOST with loss/rate/delay/jitter/for
      - {at: 7, partition: [client, sockserver], for: 3}    # partition A B [for]
      - {at: 9, heal: all}                                  # heal HOST, or all

`at` is seconds from the start. Every step is checked (actions, arguments, host names) before anything runs. The
run repeats from the client host in a thread of its own, one line per attempt (time, ok or the error); the steps
are applied on time in the main thread. At the end, and also on Ctrl-C or an error, every fault on every host is
healed (labkit.faults.heal), then the run is tried once more to show the cluster whole again. Each line gives when the attempt or step started
(seconds from the start), how long it took, and what happened; on a busy machine a step can start late.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


from labkit import LabkitError, faults, options, runs
from labkit.faults import FaultError, Impairment
from labkit.remote import Hosts

RUNS = ("ring", "celery", "math", "file")
ACTIONS = ("kill", "stop", "start", "impair", "partition", "heal")
IMPAIR_KEYS = ("loss", "rate", "delay", "jitter", "for")
MAX_AT = 3600  # s
TAIL = 3.0  # s of runs after the last step when `end` is not given
RUN_GAP = 0.3  # s between two attempts of the run


class ScenarioError(LabkitError):
    """A scenario file that cannot be played; the message names the file, the step and what is wrong."""


@dataclass(frozen=True)
class Step:
    at: float
    action: str
    target: str | tuple[str, str] | None
    options: dict = field(default_factory=dict)

    def describe(self) -> str:
        if self.action == "partition":
            what = f"partition {self.target[0]} {self.target[1]}"
        elif self.action == "heal":
            what = f"heal {self.target or 'all'}"
        elif self.action == "impair":
            what = f"impair {self.target}"
        else:
            what = f"fault {self.action} {self.target}"
        return what + "".join(f" --{k} {v}" for k, v in self.options.items())

    def hosts(self) -> list[str]:
        if self.action == "partition":
            return list(self.target)
        if self.action == "heal":
            return [self.target] if self.target else []
        return [faults.parse_target(self.target)[0]]


@dataclass(frozen=True)
class Scenario:
    name: str
    steps: tuple[Step, ...]
    end: float
    run: str | None = None


def _step(i: int, raw) -> Step:
    where = f"step {i}"
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: expected a mapping like {{at: 2, kill: worker1}}, got {raw!r}")
    at = raw.get("at")
    if isinstance(at, bool) or not isinstance(at, (int, float)) or not 0 <= at <= MAX_AT:
        raise ScenarioError(f"{where}: `at` must be seconds from the start, 0..{MAX_AT}, got {at!r}")
    actions = [a for a in ACTIONS if a in raw]
    if len(actions) != 1:
        raise ScenarioError(f"{where}: needs exactly one action of {', '.join(ACTIONS)}, got "
                            f"{', '.join(actions) or 'none'}")
    action = actions[0]
    value = raw[action]
    extra = set(raw) - {"at", action} - (set(IMPAIR_KEYS) if action == "impair" else
                                         {"for"} if action in ("kill", "stop", "partition") else set())
    if extra:
        raise ScenarioError(f"{where}: {action} does not take {', '.join(sorted(extra))}")
    options = {k: raw[k] for k in IMPAIR_KEYS if k in raw and k != "at"}
    try:
        if "for" in options:
            faults.parse_for(options["for"])
        if action == "impair":
            if not isinstance(value, str):
                raise ScenarioError(f"{where}: impair takes one host name, got {value!r}")
            Impairment.parse(*(options.get(k) for k in ("loss", "rate", "delay", "jitter")))
            target = value
        elif action == "partition":
            if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
                raise ScenarioError(f"{where}: partition takes two host names, like [client, sockserver]")
            if value[0] == value[1]:
                raise ScenarioError(f"{where}: partition needs two different hosts, got {value[0]} twice")
            target = (value[0], value[1])
        elif action == "heal":
            if not isinstance(value, str):
                raise ScenarioError(f"{where}: heal takes a host name or `all`, got {value!r}")
            target = None if value == "all" else value
        else:
            if not isinstance(value, str):
                raise ScenarioError(f"{where}: {action} takes HOST or HOST:PROGRAM, got {value!r}")
            faults.parse_target(value)
            target = value
    except FaultError as exc:
        raise ScenarioError(f"{where}: {exc}") from None
    return Step(float(at), action, target, options)


def parse(text: str, source: str = "scenario") -> Scenario:
    """A Scenario from YAML text; every error names the source and the step."""
    return build(options.load_yaml(text, source, error=ScenarioError), source)


def build(data, source: str, name: str | None = None) -> Scenario:
    """A Scenario from YAML's data; every error names the source and the step. Without a `name:` it is named
    `name`, else `source`."""
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list) or not data["steps"]:
        raise ScenarioError(f"{source}: expected a mapping with a non-empty `steps:` list")
    unknown = set(data) - {"name", "run", "end", "steps"}
    if unknown:
        raise ScenarioError(f"{source}: unknown key(s) {', '.join(sorted(unknown))} (name, run, end, steps)")
    try:
        steps = tuple(sorted((_step(i, raw) for i, raw in enumerate(data["steps"], 1)), key=lambda s: s.at))
    except ScenarioError as exc:
        raise ScenarioError(f"{source}: {exc}") from None
    run = data.get("run")
    if run is not None and run not in RUNS:
        raise ScenarioError(f"{source}: run {run!r} is not one of {', '.join(RUNS)}")
    end = data.get("end", steps[-1].at + TAIL)
    if isinstance(end, bool) or not isinstance(end, (int, float)) or not steps[-1].at <= end <= MAX_AT:
        raise ScenarioError(f"{source}: end must be seconds, not before the last step ({steps[-1].at:g}), got {end!r}")
    return Scenario(str(data.get("name") or name or source), steps, float(end), run)


def load(path) -> Scenario:
    source = f"scenario {path}"
    return build(options.read_yaml(path, source, error=ScenarioError), source, name=str(path))


def check_hosts(scenario: Scenario, names) -> None:
    known = set(names)
    for step in scenario.steps:
        for h in step.hosts():
            if h not in known:
                raise ScenarioError(f"{scenario.name}: at {step.at:g}s {step.describe()}: {h!r} is not a host of this "
                                    f"cluster ({', '.join(names)})")


# --- playing it --------------------------------------------------------------------------------------------

def _attempt(hosts: Hosts, run: str) -> str:
    """One run; a one-line summary of what came back."""
    if run == "ring":
        r = runs.ring(hosts)
        return f"{r['laps']} lap(s) in {r['total_ms']:.1f} ms, gcd {r['gcd']}"
    if run == "celery":
        r = runs.celery(hosts, count=20, mode="group")
        m = r["modes"]["group"]
        spread = ", ".join(f"{h}: {n}" for h, n in m["hosts"].items())
        return f"{m['ok']}/{m['tasks']} correct ({spread}), {m['error_count']} errors"
    if run == "math":
        a = runs.math(hosts)["answers"][0]
        return f"48,18 -> gcd {a.get('gcd')} lcm {a.get('lcm')}" if "error" not in a else f"ERR {a['error']}"
    r = runs.send_file(hosts, size_mb=4)
    return f"4 MB there and back, {r['send']['mb_per_s']} MB/s, sha256 {'matches' if r['match'] else 'DIFFERS'}"


def _apply(hosts: Hosts, step: Step) -> str:
    o = step.options
    if step.action == "impair":
        res = faults.impair(hosts, step.target, loss=o.get("loss"), rate=o.get("rate"), delay=o.get("delay"),
                            jitter=o.get("jitter"), for_=o.get("for"))
    elif step.action == "partition":
        res = faults.partition(hosts, *step.target, for_=o.get("for"))
    elif step.action == "heal":
        res = faults.heal(hosts, step.target)
        return "healed " + (", ".join(f"{h['host']}: {len(h['undone'])}" for h in res["hosts"] if h["undone"])
                            or "(nothing in force)")
    else:
        res = faults.fault(hosts, step.action, step.target, for_=o.get("for"))
    return "; ".join([*(f["what"] + f" on {f['host']}" for f in res["faults"]),
                      *(e["what"] + f" on {e['host']}" for e in res.get("events", []))])


def play(inv, scenario: Scenario, run: str, echo=print) -> dict:
    """Play the timeline while `run` repeats; heal everything at the end (also on Ctrl-C or an error)."""
    if run not in RUNS:
        raise ScenarioError(f"--run {run!r}: one of {', '.join(RUNS)}")
    events: list[dict] = []
    lock = threading.Lock()
    t0 = time.monotonic()  # reset once the SSH connections are open
    stop = threading.Event()

    def note(kind: str, what: str, ok: bool, start: float) -> None:
        """One line: when it started (s from t0), how long it took, what happened."""
        now = time.monotonic()
        e = {"t": round(start - t0, 2), "took": round(now - start, 2), "kind": kind, "what": what, "ok": ok}
        with lock:
            events.append(e)
        echo(f"+{e['t']:6.2f}s {e['took']:5.2f}s  {kind:<6} {'ok ' if ok else 'ERR'}  {what}")

    def repeat():
        with Hosts(inv) as hosts:
            while not stop.is_set():
                start = time.monotonic()
                try:
                    note(run, _attempt(hosts, run), True, start)
                except LabkitError as exc:
                    note(run, str(exc), False, start)
                stop.wait(RUN_GAP)

    echo(f"scenario {scenario.name}: {len(scenario.steps)} step(s) over {scenario.end:g} s, run {run} repeating")
    runner = threading.Thread(target=repeat, name="scenario-run", daemon=True)
    healed = None
    with Hosts(inv) as hosts:
        check_hosts(scenario, [h.name for h in inv.hosts])
        hosts.on_all([h.name for h in inv.hosts], lambda n: hosts.run(n, "true"))  # connections open first
        t0 = time.monotonic()
        try:
            runner.start()
            for step in scenario.steps:
                time.sleep(max(0.0, t0 + step.at - time.monotonic()))
                start = time.monotonic()
                try:
                    note("fault", f"{step.describe()}: {_apply(hosts, step)}", True, start)
                except LabkitError as exc:
                    note("fault", f"{step.describe()}: {exc}", False, start)
            time.sleep(max(0.0, t0 + scenario.end - time.monotonic()))
        finally:
            stop.set()
            start = time.monotonic()
            with Hosts(inv) as fresh:  # a step cut short by Ctrl-C may have left its connection mid-command
                res = faults.heal(fresh)
            healed = {h["host"]: h["undone"] for h in res["hosts"] if h["undone"]}
            note("heal", "everything undone: " + (", ".join(f"{h}: {len(u)}" for h, u in healed.items())
                                                  or "nothing was left in force")
                 + (f"; could not reach {'; '.join(res['failed'])}" if res["failed"] else ""), not res["failed"],
                 start)
            runner.join(timeout=120)
    with Hosts(inv) as hosts:
        time.sleep(1.0)  # a killed program restarted by supervisord registers again
        start = time.monotonic()
        try:
            note(run, f"after healing: {_attempt(hosts, run)}", True, start)
            final_ok = True
        except LabkitError as exc:
            note(run, f"after healing: {exc}", False, start)
            final_ok = False
    attempts = [e for e in events if e["kind"] == run]
    return {"scenario": scenario.name, "run": run, "events": events, "healed": healed,
            "attempts": len(attempts), "failed_attempts": sum(not e["ok"] for e in attempts),
            "ok_after_heal": final_ok}
