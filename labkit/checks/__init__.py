"""Instructor checks of one cluster, in layers: reach -> host -> service -> app (application results).

`run(inventory)` returns a report dict (JSON-able): the cluster, its hosts (address, groups, each service's
state), every check with its host, outcome (pass / fail / blocked), expected, found, hint and `blocked_by`, the
last ring trace and how Celery jobs spread over the workers. `labkit.checks.report` renders it (console, JUnit,
HTML), `labkit.checks.classmode` runs many clusters at once.

How it runs, and why not pytest: one SSH session per host sends `labnodes/selftest.py` (stdlib only) to the
host's python3, which gathers every host and service fact in one go and answers JSON; then the application runs
go from the client host, all at once. A check is planned with its dependencies before anything runs, so a check
whose host is unreachable or whose prerequisite failed is reported *blocked by* that check, never as one more
failure; pytest has no such outcome (a skip is not a blocked-by), and one pytest item per host and check costs
one SSH round trip each (~16 s for a cluster). JUnit XML is written by `report.junit`, one test case per check
and host, blocked ones as skipped with the check that blocked them.

Nothing here knows a port or path: the hosts' /etc/labnodes/labnodes.toml, then the inventory's variables, then
the running programs themselves say where things are.
"""

from __future__ import annotations

import dataclasses
import json
import math as _math
import secrets
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paramiko
from invoke.exceptions import CommandTimedOut

from labkit import LabkitError, faults, printable
from labkit.remote import (
    DEFAULT_TIMEOUT, Failure, Hosts, labnodes_output, probe_timeout, selftest_command, timeout_for,
)
from labnodes import selftest
from labnodes.config import CLOCK_ALLOWANCE

# What each inventory group runs (the course's spec; playbooks/site.yml's labkit_group_roles makes it so).
GROUP_SERVICES = {"brokers": ["redis", "flower"], "nameservers": ["nameserver"], "workers": ["celery"],
                  "ring": ["ring"], "sockservers": ["math", "file"]}
LAYERS = ["reach", "host", "service", "app"]
APP_TITLES = {
    "app.ring": "a ring lap from the client visits every ring host in order and returns with gcd/lcm",
    "app.celery": "Celery jobs from the client are answered right by every worker host",
    "app.math": "the math server answers 48,18 and refuses a bad line",
    "app.file": "a file round trip from the client has equal sha256 on both hosts",
}
# What to look at for each kind of ring hop failure (`ring send --json`'s code; {node}: the node the hop could
# not reach, or the name server's H:P for hop-nameserver).
HOP_HINTS = {
    "hop-unregistered": "{node}'s ring node is not registered in the name server: supervisorctl status "
                        "labnodes-ring on {node}, its log in /var/log/labnodes/",
    "hop-gone": "{node}'s ring node does not answer where it registered (it ended, or a firewall drops the hop): "
                "supervisorctl status on {node}, its log in /var/log/labnodes/",
    "hop-timeout": "{node} did not answer the hop in time: a hung ring node there (its log in /var/log/labnodes/) "
                   "or a network that drops packets on the way",
    "hop-wrong-key": "{node} refused the previous node's hmac_key: fab provision writes the cluster's key into "
                     "every host's labnodes.toml",
    "hop-nameserver": "a ring node could not reach the name server at {node} to find its successor: the ring "
                      "hosts' ns_host/ns_port in labnodes.toml, and the name server's own checks",
    "hop-no-time": "the lap ran out of time before the hop to {node}: ring_timeout in labnodes.toml is too short "
                   "for a ring this long",
    "hop": "the ring broke at the hop to {node}: supervisorctl status and /var/log/labnodes/ on that host",
}
# The inventory groups each application run needs, the one whose first host the check is keyed on first.
APP_GROUPS = {"app.ring": ("ring", "nameservers", "clients"), "app.celery": ("brokers", "workers", "clients"),
              "app.math": ("sockservers", "clients"), "app.file": ("sockservers", "clients")}
REACH_TITLES = {"reach.ssh": "answers SSH from the control machine",
                "reach.network": "reachable from the other hosts on the cluster network"}
PROBE_TITLE = "the host runs the check probe (python3)"
CLOCK_LIMIT = CLOCK_ALLOWANCE / 2  # s a host's clock may be off the control machine's: two hosts within it agree
CLOCK_TITLE = f"the host's clock is within {CLOCK_LIMIT:g} s of the control machine's"
SSH_PORT = 22  # ssh's own default, when the inventory sets no ansible_port


def key(c: dict) -> str:
    return f"{c['id']}@{c['host']}"


def check_ids() -> set[str]:
    """Every check id `fab check` can report: what a grading file's patterns may name."""
    every_service = {"services": [s for services in GROUP_SERVICES.values() for s in services], "ring_next": "any"}
    return {*REACH_TITLES, "host.probe", "host.clock", *(c["id"] for c in selftest.plan(every_service)),
            *APP_TITLES}


def clock_offset(host_time: float, sent: float, back: float) -> float:
    """How far a host's clock is off the control machine's (+ ahead, - behind), from a reading of it taken
    while the control machine's clock went from `sent` to `back`: 0 within that round trip, so never more
    than it is."""
    if host_time > back:
        return host_time - back
    return min(0.0, host_time - sent)


def clock_check(name: str, offset: float) -> tuple[str, str, str]:
    """host.clock's outcome, finding and hint for a host whose clock is `offset` s off the control machine's."""
    if abs(offset) <= CLOCK_LIMIT:
        return "pass", (f"{abs(offset):.1f} s {'ahead' if offset > 0 else 'behind'}" if offset
                        else "agrees (within the SSH round trip)"), ""
    return "fail", f"{abs(offset):.0f} s {'ahead of' if offset > 0 else 'behind'} the control machine's clock", \
        (f"set {name}'s clock and keep it set (timedatectl set-ntp true: systemd-timesyncd or chrony; or date -s): "
         f"a Celery worker whose clock runs more than {CLOCK_ALLOWANCE:g} s ahead of the client's drops its jobs "
         "as expired, and apt refuses package lists that are 'not valid yet' on a clock behind")


def _first_line(text: str) -> str:
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1].strip()[:300] if lines else "no output"


class Run:
    """One cluster's check run."""

    def __init__(self, inv, timeout: float = DEFAULT_TIMEOUT, groups: dict[str, int] | None = None):
        self.inv = inv
        self.timeout = timeout
        self.least = groups or {}  # group -> the least number of hosts it must have (a grading file's); else 1
        self.op_timeout = probe_timeout(timeout)  # each connection, request and supervisord call of the probe
        self.checks: list[dict] = []
        self.facts: dict[str, dict] = {}
        self.extra: dict = {"ring": None, "celery": None}
        self.phases: dict[str, float] = {}

    # --- helpers
    def groups_of(self, name: str) -> list[str]:
        return [g for g, members in self.inv.groups.items() if name in members]

    def services_of(self, name: str) -> list[str]:
        return [s for g in self.groups_of(name) for s in GROUP_SERVICES.get(g, [])]

    def first(self, group: str) -> str | None:
        return (self.inv.groups.get(group) or (None,))[0]

    def ctx(self, h) -> dict:
        ring = list(self.inv.groups.get("ring", ()))
        peers = {o.name: [o.address, int(o.vars.get("ansible_port", SSH_PORT))] for o in self.inv.hosts
                 if o.name != h.name}
        vars_ = {k: v for k, v in h.vars.items() if k.endswith(("_port", "_venv")) and not isinstance(v, dict)}
        return {"host": h.name, "timeout": self.op_timeout, "address": h.address, "services": self.services_of(h.name), "peers": peers,
                "ring_next": ring[(ring.index(h.name) + 1) % len(ring)] if h.name in ring else None,
                "vars": vars_, "faults_dir": faults.STATE_DIR}

    def add(self, cid, host, outcome, title=None, expected="", found="", hint="", deps=(), layer=None):
        self.checks.append({"id": cid, "host": host, "layer": layer or cid.split(".")[0],
                            "title": title or APP_TITLES.get(cid) or REACH_TITLES.get(cid, cid),
                            "outcome": outcome, "expected": str(expected), "found": str(found),
                            "hint": hint if outcome == "fail" else "", "deps": list(deps)})

    def ssh(self, host: str, command: str, timeout: float | None = None):
        sudo = getattr(self.hosts, "sudo", None)  # a non-root login with ansible_become: as root, like Ansible
        if sudo and sudo(host):
            command = f"sudo -n sh -c {shlex.quote(command)}"
        conn = self.hosts.connection(host)
        conn.connect_timeout = min(conn.connect_timeout or 15, max(3, int(self.timeout / 2)))
        return conn.run(command, hide=True, warn=True, in_stream=False, timeout=timeout or self.timeout)

    # --- layers 1 and 2: one probe per host
    def probe(self, h):
        python = h.python
        try:
            sent = time.time()
            r = self.ssh(h.name, selftest_command(python, "--context", json.dumps(self.ctx(h))))
            back = time.time()
        except CommandTimedOut:  # SSH worked; the probe was slower than the timeout
            return {"ran": True, "error": f"the probe did not finish within {self.timeout:g} s",
                    "hint": "a slow host (an emulated VM, a busy machine)? give it more: fab check --timeout S, "
                            "or labkit_check_timeout in the inventory"}
        except Exception as exc:  # noqa: BLE001 -- any way SSH fails is this check's finding
            msg = str(exc) or type(exc).__name__
            if isinstance(exc, paramiko.AuthenticationException):
                msg = f"authentication refused: {msg}"
            return {"error": msg.splitlines()[0][:300]}
        try:
            res = json.loads(r.stdout)
            res["clock_offset"] = clock_offset(float(res["time"]), sent, back)
            return res
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            why = _first_line(r.stderr or r.stdout)
            refused = self.hosts.sudo_refused(h.name, why)
            if refused:  # logged in; sudo would not run the probe
                return {"ran": True, "error": why, "hint": refused}
            return {"ran": True, "error": f"{python} exited {r.exited}: {why}"}

    def host_layers(self):
        with ThreadPoolExecutor(max_workers=max(1, len(self.inv.hosts))) as pool:
            results = dict(zip([h.name for h in self.inv.hosts], pool.map(self.probe, self.inv.hosts)))
        broker = self.first("brokers")
        for h in self.inv.hosts:
            res = results[h.name]
            python = h.python
            ssh_ok = "checks" in res or res.get("ran")
            self.add("reach.ssh", h.name, "pass" if ssh_ok else "fail",
                     expected=f"an SSH session to {h.vars.get('ansible_user', 'root')}@{h.address}",
                     found="connected" if ssh_ok else res["error"],
                     hint="is the host up and its network up? (fab status; on the host: ip addr, "
                          "supervisorctl status sshd)")
            # always reported (pass too), so that a class has the same columns for every student
            self.add("host.probe", h.name, "pass" if "checks" in res else "fail", title=PROBE_TITLE,
                     expected=f"{python} answers the probe with JSON",
                     found=f"{len(res['checks'])} checks" if "checks" in res else res["error"],
                     hint=res.get("hint") or "install python3 on the host (Debian: apt-get install python3), or "
                                             "set ansible_python_interpreter to a working one",
                     deps=["reach.ssh"], layer="host")
            base = ["reach.ssh", "host.probe"]
            outcome, found, hint = clock_check(h.name, res["clock_offset"]) if "checks" in res else ("fail", "", "")
            self.add("host.clock", h.name, outcome, title=CLOCK_TITLE,
                     expected=f"within {CLOCK_LIMIT:g} s of the control machine's clock", found=found, hint=hint,
                     deps=base, layer="host")
            if "checks" in res:
                self.facts[h.name] = res["facts"]
                got = res["checks"]
            else:  # planned, so that they show as blocked
                got = [dict(c, outcome="fail", expected="", found="", hint="") for c in selftest.plan(self.ctx(h))]
            for c in got:
                deps = list(c["deps"]) + base
                if c["id"] == "service.celery.broker" and broker:
                    deps.append(("service.redis.auth", broker))
                self.checks.append(dict(c, host=h.name, deps=deps))
        # reach.network: seen from the other hosts' probes
        for h in self.inv.hosts:
            seen = {o: f["reach"].get(h.name) for o, f in self.facts.items() if o != h.name and "reach" in f}
            bad = {o: err for o, err in seen.items() if err}
            if not seen:
                self.add("reach.network", h.name, "fail", found="no other host could be asked",
                         deps=[("reach.ssh", o.name) for o in self.inv.hosts if o.name != h.name][:1])
                continue
            port = int(h.vars.get("ansible_port", SSH_PORT))
            hint = f"{h.name}'s cluster interface is down or firewalled: ip addr and ip route on {h.name}"
            if bad and len(bad) < len(seen):  # others reach it: not its interface, something between these hosts
                hint = (f"{len(seen) - len(bad)} other hosts reach {h.name}, {', '.join(bad)} cannot: a firewall "
                        f"rule between them (iptables -S on {h.name} and on {', '.join(bad)}; fab heal removes the "
                        "ones labkit's faults set) or a route on either side")
            self.add("reach.network", h.name, "fail" if bad else "pass",
                     expected=f"every other host connects to {h.address}:{port}",
                     found=("not from " + ", ".join(f"{o} ({e})" for o, e in bad.items())) if bad
                     else f"from {len(seen)} hosts",
                     hint=hint)
        self.fill_labnodes_checks()

    def venv(self, host: str | None = None) -> str | None:
        if host and (self.facts.get(host) or {}).get("venv"):
            return self.facts[host]["venv"]
        return next((f["venv"] for f in self.facts.values() if f.get("venv")), None)

    def fill_labnodes_checks(self):
        """A host with no labnodes program (the client) cannot name its venv: use the cluster's."""
        have = {c["host"] for c in self.checks if c["id"] == "host.labnodes"}
        todo = [n for n in self.facts if n not in have]
        venv = self.venv()

        def one(name):
            if not venv:
                return "fail", "no venv named in labnodes.toml, the inventory, or a running labnodes program"
            v = shlex.quote(venv)
            r = self.ssh(name, f"test -x {v}/bin/labnodes && {v}/bin/python -c "
                               "'import labnodes; print(\"labnodes\", labnodes.__version__)'")
            ok = r.exited == 0 and r.stdout.startswith("labnodes ")
            return ("pass" if ok else "fail"), _first_line(r.stdout if ok else r.stderr or r.stdout)

        with ThreadPoolExecutor(max_workers=max(1, len(todo))) as pool:
            for name, (outcome, found) in zip(todo, pool.map(one, todo)):
                self.add("host.labnodes", name, outcome, title=selftest.HOST_TITLES["host.labnodes"],
                         expected=f"labnodes importable by {venv}/bin/python and {venv}/bin/labnodes executable",
                         found=found,
                         hint="re-run provisioning (fab provision) to reinstall the labnodes venv",
                         deps=["reach.ssh", "host.probe"])  # the venv needs no supervisord
                if name in self.facts:
                    self.facts[name]["venv"] = self.facts[name].get("venv") or venv

    # --- layer 3: application results, all from the client host
    def labnodes(self, host: str, *args: str, timeout: float | None = None):
        cmd = " ".join([f"{shlex.quote(self.venv(host) or '')}/bin/labnodes", "--tethered", *map(shlex.quote, args),
                        "--json"])  # a run that outlasts the timeout stops when its channel closes (labnodes.cli)
        r = self.ssh(host, cmd, timeout=timeout)
        data, failure = labnodes_output(r.stdout, r.stderr)
        if failure is not None:
            failure = dataclasses.replace(failure, message=failure.message[:300])
        return data, failure

    def app_ring(self, client, ring):
        data, err = self.labnodes(client, "ring", "send", "--start", ring[0], "--message", "labkit check",
                                  "--numbers", "48,18", "--timeout", f"{self.timeout:g}", timeout=self.timeout + 10)
        want = [*ring, ring[0]]
        expected = (f"hops {' -> '.join(want)} (each at its inventory address), back at {ring[0]}, "
                    f"gcd=6 lcm=144")
        if data is None:
            if err.code == "wrong-key":  # the client's key: the name server or the start node refused it
                return "fail", client, expected, err.message, \
                    f"{err.address} refused the client's hmac_key: fab provision writes the cluster's key into " \
                    f"every host's labnodes.toml (on {client} too)"
            if err.code.startswith("hop"):  # a hop's failure (labnodes.ring_lap.HOP_FAILURES): where it failed
                host = self.first("nameservers") if err.code == "hop-nameserver" else err.address
                hint = HOP_HINTS.get(err.code, HOP_HINTS["hop"]).format(node=err.address)
                known = host in {h.name for h in self.inv.hosts}  # a ring node is named after its host
                return "fail", host if known else ring[0], expected, err.message, hint
            return "fail", ring[0], expected, err.message, \
                "the ring did not finish: supervisorctl status and /var/log/labnodes/ on the ring hosts"
        self.extra["ring"] = data
        trace = data.get("trace") or []
        for i, hop in enumerate(trace):
            node = ring[i % len(ring)]  # hop i is at the i-th ring host, round and round
            addr = hop.get("address", "").rsplit(":", 1)[0]
            if hop.get("node") != node or hop.get("host") != node or addr != self.inv.host(node).address:
                return "fail", node, expected, (f"hop {i + 1}: node {hop.get('node')} on host {hop.get('host')} "
                                                f"at {hop.get('address')}"), \
                    f"{node}'s ring node must run on {node}, bind its cluster address, and pass to its successor"
        visited = [hop.get("node") for hop in trace]
        g = _math.gcd(48, 18)
        if (visited[:len(ring)] != ring or visited[-1] != ring[0] or data.get("gcd") != g
                or data.get("lcm") != 48 * 18 // g):
            return "fail", ring[0], expected, (f"hops {' -> '.join(map(str, visited))}, gcd={data.get('gcd')} "
                                               f"lcm={data.get('lcm')}"), \
                "each hop does one Euclid step (a, b) -> (b, a mod b); the start node ends the lap at b = 0"
        return "pass", ring[0], expected, f"{len(trace)} hops, {data.get('total_ms', 0):.1f} ms, gcd=6 lcm=144", ""

    def app_celery(self, client, workers):
        expected = f"60 gcd jobs, all right, run on every worker host ({', '.join(workers)})"
        spread = {}
        for _attempt in range(2):  # a short group can by chance land on one worker: try once more
            data, err = self.labnodes(client, "celery", "batch", "--count", "60", "--mode", "group",
                                      "--timeout", f"{self.timeout:g}", timeout=self.timeout + 10)
            if data is None:
                return "fail", self.first("brokers") or client, expected, err.message, \
                    "the client cannot use the broker: redis_host/redis_password in the client's labnodes.toml"
            r = data["modes"]["group"]
            for h, n in r["hosts"].items():
                spread[h] = spread.get(h, 0) + n
            self.extra["celery"] = {"hosts": spread, "tasks": r["tasks"], "ok": r["ok"],
                                    "tasks_per_s": r["tasks_per_s"], "workers": r.get("workers", {})}
            if r["ok"] != r["tasks"] or r["error_count"]:
                return "fail", client, expected, (f"{r['ok']} of {r['tasks']} right, {r['error_count']} errors: "
                                                  f"{(r['errors'] or [''])[0]}"), \
                    "a wrong or missing result: see the workers' logs in /var/log/labnodes/"
            if all(w in spread for w in workers):
                break
        idle = [w for w in workers if w not in spread]
        found = ", ".join(f"{h}: {n}" for h, n in spread.items()) or "no jobs ran"
        if idle:
            return "fail", idle[0], expected, f"ran on {found}; none on {', '.join(idle)}", \
                f"the worker on {idle[0]} takes no jobs: is it connected to the broker? (its log, its settings)"
        return "pass", workers[0] if workers else client, expected, f"ran on {found}", ""

    def unreachable_hint(self, err: Failure, server: str, svc: str) -> str | None:
        """For a run that could not connect to its server: where the client went, and where the server listens
        (its own listens check, which passed: both come from each host's labnodes.toml, which can disagree)."""
        if err.code != "connect" or not err.address:
            return None
        asked = err.address
        listens = next((c["found"] for c in self.checks if c["id"] == f"service.{svc}.listens"
                        and c["host"] == server and c["outcome"] == "pass"), "")
        there = listens.split(" (pid")[0]
        if there and asked not in there.split(", "):
            return (f"the client asks {asked}, but the {svc} server listens on {there}: {svc}_host/{svc}_port "
                    f"differ between the client's and {server}'s labnodes.toml (fab provision writes both)")
        return f"nothing answers at {asked}: is the {svc} server running there? (the service checks of {server})"

    def cut_hint(self, pairs) -> str | None:
        """For a run that failed: the connections it makes that the hosts' own probes saw fail on the cluster
        network (reach.network), which are then the cause to look at first, not the programs."""
        cut = [(a, b) for a, b in dict.fromkeys(pairs)
               if a and b and a != b and ((self.facts.get(a) or {}).get("reach") or {}).get(b)]
        if not cut:
            return None
        return (f"{'; '.join(f'{a} cannot connect to {b} (reach.network@{b})' for a, b in cut)} on the cluster "
                f"network, and this run needs {'that connection' if len(cut) == 1 else 'those connections'}: fix "
                "the network first")

    def app_math(self, client, server):
        data, err = self.labnodes(client, "math", "ask", "--timeout", f"{self.timeout:g}", "48,18", "12,oops",
                                  timeout=self.timeout + 10)
        expected = "48,18 -> OK gcd=6 lcm=144; 12,oops -> ERR <reason>"
        hint = "the math protocol: '48,18' -> 'OK gcd=6 lcm=144', anything else -> 'ERR <reason>'"
        if data is None:
            return "fail", server, expected, err.message, self.unreachable_hint(err, server, "math") or hint
        first, second = (data + [{}, {}])[:2]
        one = first.get("error") or f"gcd={first.get('gcd')} lcm={first.get('lcm')}"
        two = f"ERR {second['error']}" if second.get("error") else json.dumps(second)
        found = f"48,18 -> {one}; 12,oops -> {two}"
        ok = first.get("gcd") == 6 and first.get("lcm") == 144 and bool(second.get("error"))
        return ("pass" if ok else "fail"), server, expected, found, hint

    def app_file(self, client, server):
        name = f"labkit-check-{secrets.token_hex(4)}.bin"
        tmp = f"/tmp/{name}.d"
        expected = "the same sha256 on the client (sent and fetched back) and on the server (stored)"
        hint = "the file server must store under its file_root and send back the same bytes"
        try:
            r = self.ssh(client, f"mkdir -p {tmp}/back && head -c 262144 /dev/urandom > {tmp}/{name} && "
                                 f"sha256sum {tmp}/{name}")
            if r.exited:
                return "fail", client, expected, _first_line(r.stderr), "the client cannot write /tmp"
            sent_sum = r.stdout.split()[0]
            wait = ("--timeout", f"{self.timeout:g}")  # each run says why it failed before its SSH call ends
            sent, err = self.labnodes(client, "file", "send", *wait, f"{tmp}/{name}", "--name", name,
                                      timeout=self.timeout + 10)
            if sent is None:
                return "fail", server, expected, f"send: {err.message}", \
                    self.unreachable_hint(err, server, "file") or hint
            got, err = self.labnodes(client, "file", "get", *wait, name, "--out", f"{tmp}/back",
                                     timeout=self.timeout + 10)
            if got is None:
                return "fail", server, expected, f"get: {err.message}", hint
            back = self.ssh(client, f"sha256sum {tmp}/back/{name}").stdout.split()[:1]
            root = (self.facts.get(server) or {}).get("file_root")
            if not root:
                py = f"{shlex.quote(self.venv(server) or '')}/bin/python"
                root = self.ssh(server, f"{py} -c 'from labnodes import config; print(config.load().file_root)'"
                                ).stdout.strip()
            stored = self.ssh(server, f"sha256sum {shlex.quote(root)}/{name}; rm -f {shlex.quote(root)}/{name}")
            stored_sum = stored.stdout.split()[:1]
            sums = {"client": sent_sum, "server": stored_sum[0] if stored_sum else "missing",
                    "fetched": back[0] if back else "missing"}
            found = ", ".join(f"{k} {v[:12]}" for k, v in sums.items())
            return ("pass" if len(set(sums.values())) == 1 else "fail"), server, expected, found, hint
        finally:
            try:
                self.ssh(client, f"rm -rf {tmp}")
            except Exception:  # noqa: BLE001 -- cleanup only
                pass

    def missing_groups(self) -> set[str]:
        """An application run whose groups the inventory lacks (or leaves empty, or, with a grading file's
        `groups`, gives fewer hosts than it asks) fails, naming them: a cluster without part of the course must
        not pass `fab check`, or score in a class, by leaving that part out. Returns the runs it failed."""
        failed = set()
        for cid, groups in APP_GROUPS.items():
            counts = {g: (len(self.inv.groups.get(g, ())), self.least.get(g, 1)) for g in groups}
            short = {g: (n, least) for g, (n, least) in counts.items() if n < least}
            if not short:
                continue
            host = next((self.first(g) for g in groups if self.first(g)), self.inv.hosts[0].name)
            found = "; ".join(f"no host in group '{g}', so this run cannot be made" if least == 1 else
                              f"{n} host{'' if n == 1 else 's'} in group '{g}', the grading file asks for at least "
                              f"{least}" for g, (n, least) in short.items())
            need = " and ".join(f"'{g}'" for g in short)
            hint = (f"add {need} with a host to the inventory (inventory/netns/hosts.yml has every group of the "
                    "course's cluster), then fab up" if all(least == 1 for _, least in short.values()) else
                    f"add hosts to {need} in the inventory, as many as the grading file asks, then fab up")
            wanted = ", ".join(f"{g} ({self.least[g]} or more)" if self.least.get(g, 1) > 1 else g for g in groups)
            self.add(cid, host, "fail", expected=f"hosts in each group this run needs: {wanted}",
                     found=f"the inventory has {found}", hint=hint)
            failed.add(cid)
        return failed

    def app_layer(self):
        failed = self.missing_groups()
        client = self.first("clients")
        ring, workers = list(self.inv.groups.get("ring", ())), list(self.inv.groups.get("workers", ()))
        broker, ns, sock = self.first("brokers"), self.first("nameservers"), self.first("sockservers")
        base = [("reach.ssh", client), ("host.labnodes", client)]
        plans = {}
        if client and ring and ns:
            plans["app.ring"] = (self.app_ring, (client, ring), base + [("service.nameserver.listens", ns)]
                                 + [(f"service.ring.{w}", r) for r in ring for w in ("listens", "next")])
        if client and workers and broker:
            plans["app.celery"] = (self.app_celery, (client, workers), base + [("service.redis.auth", broker)]
                                   + [(f"service.celery.{x}", w) for w in workers for x in ("running", "broker")])
        if client and sock:
            plans["app.math"] = (self.app_math, (client, sock), base + [("service.math.listens", sock)])
            plans["app.file"] = (self.app_file, (client, sock), base + [("service.file.listens", sock),
                                                                         ("reach.ssh", sock)])
        for cid in failed:
            plans.pop(cid, None)
        outcome = {key(c): c["outcome"] for c in self.checks}
        runnable = {cid: p for cid, p in plans.items()
                    if all(outcome.get(f"{d[0]}@{d[1]}") == "pass" for d in p[2])}

        def go(item):
            cid, (fn, args, _deps) = item
            try:
                return fn(*args)
            except CommandTimedOut:  # its text holds the whole command and its output: not a finding's line
                return "fail", args[0], APP_TITLES[cid], f"the run did not finish within {self.timeout:g} s", \
                    "a slow host, or a run that hangs: fab check --timeout S gives it longer"
            except Exception as exc:  # noqa: BLE001 -- reported as the check's finding
                return "fail", args[0], APP_TITLES[cid], f"{type(exc).__name__}: {exc}".splitlines()[0][:300], \
                    "the run could not finish"

        with ThreadPoolExecutor(max_workers=max(1, len(runnable))) as pool:
            results = dict(zip(runnable, pool.map(go, runnable.items())))
        crossed = {  # (from, to): the connections each run makes between hosts
            "app.ring": [(client, ns), (client, ring[0] if ring else None), *((r, ns) for r in ring),
                         *zip(ring, ring[1:] + ring[:1])],
            "app.celery": [(client, broker), *((w, broker) for w in workers)],
            "app.math": [(client, sock)], "app.file": [(client, sock)]}
        for cid, (_fn, _args, deps) in plans.items():
            # not run: its prerequisites did not pass, so resolve() reports it blocked by them
            blame = self.first(APP_GROUPS[cid][0])  # the check's key: the same host whatever the run found
            out, host, expected, found, hint = results.get(cid, ("fail", blame, "", "", ""))
            if cid in results and out == "fail":
                hint = self.cut_hint(crossed[cid]) or hint
            if host != blame and out == "fail":  # the key stays stable (class columns); the text names it
                found = f"{host}: {found}"
            self.add(cid, blame, out, expected=expected, found=found, hint=hint, deps=deps)

    # --- all
    def resolve(self):
        for c in self.checks:  # local dep ids -> id@host
            c["deps"] = [f"{d[0]}@{d[1]}" if isinstance(d, (tuple, list)) else f"{d}@{c['host']}"
                         for d in c["deps"]]
        # planned checks of an unreachable host have outcome fail until resolved: they are blocked by reach.ssh
        selftest.resolve(self.checks, key=key)
        order = {h.name: i for i, h in enumerate(self.inv.hosts)}
        self.checks.sort(key=lambda c: (LAYERS.index(c["layer"]) if c["layer"] in LAYERS else 9,
                                        order.get(c["host"], 99)))

    def run(self) -> dict:
        start = time.monotonic()
        with Hosts(self.inv) as self.hosts:
            self.host_layers()
            self.resolve()  # the app layer runs only what its prerequisites allow
            self.phases["hosts"] = round(time.monotonic() - start, 2)
            self.app_layer()
            self.phases["app"] = round(time.monotonic() - start - self.phases["hosts"], 2)
        self.resolve()
        return printable(dict(self.report(time.monotonic() - start), phases=self.phases))

    def report(self, seconds: float) -> dict:
        hosts = []
        for h in self.inv.hosts:
            progs = (self.facts.get(h.name) or {}).get("programs") or {}
            svc_state = {}
            for svc in self.services_of(h.name):
                mine = [c for c in self.checks if c["host"] == h.name and c["id"].startswith(f"service.{svc}.")]
                svc_state[svc] = ("pass" if mine and all(c["outcome"] == "pass" for c in mine) else
                                  "fail" if any(c["outcome"] == "fail" for c in mine) else "blocked")
            ssh = next((c["outcome"] for c in self.checks if c["id"] == "reach.ssh" and c["host"] == h.name), "")
            hosts.append({"name": h.name, "address": h.address, "groups": self.groups_of(h.name),
                          "ssh": ssh, "services": svc_state,
                          "programs": {n: p["state"] for n, p in progs.items()}})
        n = {o: sum(c["outcome"] == o for c in self.checks) for o in ("pass", "fail", "blocked")}
        status = ("unreachable" if hosts and all(h["ssh"] != "pass" for h in hosts) else
                  "ok" if n["fail"] == 0 and n["blocked"] == 0 else "failing")
        return {"cluster": self.inv.cluster, "inventory": str(self.inv.path), "backend": self.inv.backend,
                "subnet": str(self.inv.subnet or ""), "status": status, "seconds": round(seconds, 2), "counts": n, "hosts": hosts,
                "groups": {g: list(m) for g, m in self.inv.groups.items()},
                "ring": list(self.inv.groups.get("ring", ())), "checks": self.checks,
                "ring_trace": self.extra["ring"], "celery": self.extra["celery"],
                "faults": sorted((r for f in self.facts.values() for r in f.get("faults") or []),
                                 key=lambda r: (str(r.get("host")), str(r.get("id")))),
                "time": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def check_modes(class_, out, inventory_, junit, html, json_) -> None:
    """`fab check`'s options that do not go together, refused in one line (LabkitError) before anything is checked:
    an option the chosen mode would ignore left the instructor without the file they asked for, silently."""
    if class_:
        if not out:
            raise LabkitError("--class needs --out FOLDER")
        if inventory_:
            raise LabkitError("--class checks the inventories in its folder: give --class or --inventory")
        given = [o for o, v in (("--junit", junit), ("--html", html), ("--json", json_)) if v]
        if given:
            raise LabkitError(f"{' and '.join(given)}: for one cluster; --class writes class.csv, class.xlsx and "
                              f"each student's HTML into --out")
    elif out:
        raise LabkitError("--out FOLDER is for --class DIR; one cluster's reports go to --junit PATH or --html PATH")


def run(inv, timeout: float | None = None, groups: dict[str, int] | None = None) -> dict:
    """Check one cluster; never raises for a broken cluster (that is what the report says). groups: the least
    number of hosts each group must have (a grading file's `groups`; default 1)."""
    return Run(inv, timeout=timeout_for(inv, timeout), groups=groups).run()


def failed_report(path, error: str) -> dict:
    """The report of a cluster whose inventory cannot be read."""
    return printable({"cluster": Path(path).name, "inventory": str(path), "backend": "", "status": "broken inventory",
                  "error": error, "seconds": 0.0, "counts": {"pass": 0, "fail": 0, "blocked": 0}, "hosts": [],
                  "groups": {}, "ring": [], "checks": [], "ring_trace": None, "celery": None, "faults": [],
                  "time": time.strftime("%Y-%m-%d %H:%M:%S %Z")})


__all__ = ["run", "failed_report", "key", "printable", "LabkitError"]
