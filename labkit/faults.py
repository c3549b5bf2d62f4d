"""Faults on purpose: impaired links, partitions and stopped or killed programs, each undone by one command.

Everything runs ON the host over SSH (labkit.remote.Hosts.run, through `sudo -n` where the inventory logs in as a
non-root user with become), so netns hosts, Vagrant VMs and lab machines take the same code. What labkit adds to a
host is tagged and recorded there, so `heal` removes exactly that and nothing else:

- iptables (filter table): two chains of its own, LABKIT-FAULT-IN and LABKIT-FAULT-OUT, jumped to from the top of
  INPUT and OUTPUT by rules commented `labkit-fault`; every rule inside is commented `labkit-fault <id>`. The
  chains first RETURN traffic of the host's own sshd port, so a fault never cuts labkit's way in to heal it.
- tc: a root qdisc with handle 1ab: on the cluster interface (tbf, or netem where delay is asked); incoming traffic
  is redirected (ingress qdisc, u32 filter pref 4917, mirred) to an ifb device `lkf-ifb` shaped by its own tbf.
- a record per fault in /run/labkit-faults/<id>.json (what, where, since, until) beside <id>.undo, the shell
  script that undoes it. /run is emptied on reboot, as are the faults themselves (iptables, qdiscs, stopped
  programs), so a record never outlives its fault.
- `--for S`: a timer started on the host with setsid (stdio closed, its own session: it outlives the SSH session
  and the fab command; netns hosts have supervisord as PID 1 to reap it, VMs systemd) sleeps S seconds and runs
  the undo script. `heal` kills the timer's process group before undoing.

The cluster interface is the one holding the host's inventory address (`ip -o -4 addr`), never a fixed name.
Loss is iptables' `statistic` match on INPUT and OUTPUT (each direction drops PCT % on its own), on every kernel:
it reaches both directions without an ifb device and spares sshd. Rate is tbf both ways. Delay and jitter need the
kernel's netem (sch_netem) and apply to what the host sends; where netem is missing the request is refused before
anything is changed. A failing step rolls back the steps before it (no half-applied fault).

A "host" in `fault stop|start|kill HOST` means every supervised program of labnodes on it (supervisord programs
named `labnodes-*`): the services crash or stop, the host itself stays reachable (sshd, supervisord) so `fault
start` and `heal` can bring them back. A host gone from the network is `impair HOST --loss 100`.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from dataclasses import dataclass

from labkit import LabkitError, options
from labkit.remote import Hosts, RemoteError

STATE_DIR = "/run/labkit-faults"
TAG = "labkit-fault"
CHAIN_IN, CHAIN_OUT = "LABKIT-FAULT-IN", "LABKIT-FAULT-OUT"
QDISC = "1ab:"  # handle of labkit's root qdisc on the cluster interface
IFB = "lkf-ifb"  # ifb device that carries the interface's incoming traffic through a tbf
FILTER_PREF = 4917  # preference of labkit's ingress redirect filter
MAX_FOR = 24 * 3600  # s
HEAL_TIMEOUT = 60.0  # s a host's heal may take (restarting programs, removing rules) before it is reported failed
PROGRAM_PREFIX = "labnodes-"
ACTIONS = ("stop", "start", "kill")


class FaultError(LabkitError):
    """A fault cannot be set or undone as asked; the message says why and what was (not) changed."""


# --- arguments -------------------------------------------------------------------------------------------

_RATE = re.compile(r"^(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit)$", re.IGNORECASE)
_FACTOR = {"bit": 1, "kbit": 1000, "mbit": 1000_000, "gbit": 1000_000_000}


def parse_rate(text) -> int:
    """'1mbit' -> 1000000 bits/s. Units as tc writes them: bit, kbit, mbit, gbit (bits, not bytes)."""
    m = _RATE.match(str(text).strip())
    if not m:
        raise FaultError(f"rate {text!r}: give a number and a unit in bits per second, like 500kbit, 10mbit or 1gbit")
    bps = int(float(m.group(1)) * _FACTOR[m.group(2).lower()])
    if not 8000 <= bps <= 100_000_000_000:
        raise FaultError(f"rate {text!r}: must be between 8kbit and 100gbit")
    return bps


def _number(name: str, value, low: float, high: float, *, low_open: bool = False) -> float | None:
    return options.number(name, value, low, high, low_open=low_open, error=FaultError)


def parse_for(value) -> float | None:
    """--for SECONDS: None (until healed) or 1..86400 seconds."""
    return _number("--for", value, 1, MAX_FOR)


@dataclass(frozen=True)
class Impairment:
    """What `fab impair` asks for: loss in % per direction, rate in bits/s, delay and jitter in ms."""

    loss: float | None = None
    rate: int | None = None
    delay: float | None = None
    jitter: float | None = None

    @classmethod
    def parse(cls, loss=None, rate=None, delay=None, jitter=None) -> Impairment:
        imp = cls(loss=_number("--loss", loss, 0, 100, low_open=True),
                  rate=None if rate in (None, "") else parse_rate(rate),
                  delay=_number("--delay", delay, 0, 60_000, low_open=True),
                  jitter=_number("--jitter", jitter, 0, 60_000, low_open=True))
        if imp.jitter is not None and imp.delay is None:
            raise FaultError("--jitter varies a delay: give --delay too")
        if imp.jitter is not None and imp.jitter > imp.delay:
            raise FaultError(f"--jitter {imp.jitter:g} is larger than --delay {imp.delay:g}: a packet cannot leave early")
        if (imp.loss, imp.rate, imp.delay) == (None, None, None):
            raise FaultError("nothing to impair: give --loss PCT, --rate RATE and/or --delay MS")
        return imp

    @property
    def needs_netem(self) -> bool:
        return self.delay is not None

    def describe(self) -> str:
        parts = []
        if self.loss is not None:
            parts.append(f"loss {self.loss:g}% each way")
        if self.rate is not None:
            parts.append(f"rate {rate_text(self.rate)} each way")
        if self.delay is not None:
            parts.append(f"delay {self.delay:g}ms" + (f" ± {self.jitter:g}ms" if self.jitter else "") + " outgoing")
        return ", ".join(parts)


def rate_text(bps: int) -> str:
    for unit in ("gbit", "mbit", "kbit"):
        if bps % _FACTOR[unit] == 0:
            return f"{bps // _FACTOR[unit]}{unit}"
    return f"{bps}bit"


def parse_target(target: str) -> tuple[str, str | None]:
    """'worker1:labnodes-celery-worker' -> ('worker1', 'labnodes-celery-worker'); 'worker1' -> ('worker1', None)."""
    host, _, program = str(target).partition(":")
    if not host or (":" in target and not program):
        raise FaultError(f"{target!r}: give HOST or HOST:PROGRAM (a supervisord program, see `fab status`)")
    if program and not re.fullmatch(r"[A-Za-z0-9_.-]+", program):
        raise FaultError(f"{target!r}: {program!r} is not a supervisord program name")
    return host, program or None


def new_id(kind: str, host: str) -> str:
    return f"{kind}-{re.sub(r'[^a-z0-9]', '', host.lower())[:16]}-{int(time.time() * 1000) % 10**10:x}"


# --- what runs on a host (pure: shell text) ----------------------------------------------------------------

def interface_for(ip_addr_output: str, address: str) -> str | None:
    """The interface of `ip -o -4 addr` output that holds `address`."""
    for line in ip_addr_output.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "inet" and fields[3].split("/")[0] == address:
            return fields[1].split("@")[0]
    return None


def _ipt(*args: str) -> str:
    return " ".join(["iptables", "-w", *map(shlex.quote, args)])


def _comment(fid: str) -> list[str]:
    return ["-m", "comment", "--comment", f"{TAG} {fid}"]


def chains_setup(ssh_port: int) -> list[str]:
    """Make labkit's chains (idempotent): sshd's own port returns first, then the jumps from INPUT and OUTPUT."""
    lines = []
    for chain, builtin, port_opt in ((CHAIN_IN, "INPUT", "--dport"), (CHAIN_OUT, "OUTPUT", "--sport")):
        keep = ["-p", "tcp", port_opt, str(ssh_port), *_comment("sshd"), "-j", "RETURN"]
        jump = ["-m", "comment", "--comment", TAG, "-j", chain]
        lines += [f"{_ipt('-N', chain)} 2>/dev/null || true",
                  f"{_ipt('-C', chain, *keep)} 2>/dev/null || {_ipt('-I', chain, '1', *keep)}",
                  f"{_ipt('-C', builtin, *jump)} 2>/dev/null || {_ipt('-I', builtin, '1', *jump)}"]
    return lines


def chains_drop_if_unused() -> list[str]:
    """Remove labkit's chains and jumps once no fault rule is left in them."""
    lines = []
    for chain, builtin in ((CHAIN_IN, "INPUT"), (CHAIN_OUT, "OUTPUT")):
        jump = ["-m", "comment", "--comment", TAG, "-j", chain]
        lines.append(f"if ! {_ipt('-S', chain)} 2>/dev/null | grep -v '{TAG} sshd' | grep -q -- '^-A'; then "
                     f"while {_ipt('-D', builtin, *jump)} 2>/dev/null; do :; done; "
                     f"{_ipt('-F', chain)} 2>/dev/null; {_ipt('-X', chain)} 2>/dev/null; fi; true")
    return lines


def loss_rules(fid: str, iface: str, loss: float) -> list[list[str]]:
    p = f"{loss / 100:.6f}".rstrip("0").rstrip(".")
    stat = ["-m", "statistic", "--mode", "random", "--probability", p]
    return [[CHAIN_IN, "-i", iface, *stat, *_comment(fid), "-j", "DROP"],
            [CHAIN_OUT, "-o", iface, *stat, *_comment(fid), "-j", "DROP"]]


def partition_rules(fid: str, peer: str) -> list[list[str]]:
    return [[CHAIN_IN, "-s", peer, *_comment(fid), "-j", "DROP"],
            [CHAIN_OUT, "-d", peer, *_comment(fid), "-j", "DROP"]]


def _burst(bps: int) -> int:
    """tbf bucket: 10 ms at the rate, at least a few full packets."""
    return max(bps // 8 // 100, 6 * 1514)


def tc_plan(iface: str, imp: Impairment) -> tuple[list[str], list[str]]:
    """(apply, undo) shell lines for the rate and delay parts of an impairment."""
    apply, undo = [], []
    if imp.delay is not None:
        netem = f"netem delay {imp.delay:g}ms" + (f" {imp.jitter:g}ms" if imp.jitter else "")
        if imp.rate is not None:
            netem += f" rate {imp.rate}bit"
        apply.append(f"tc qdisc add dev {iface} root handle {QDISC} {netem}")
    elif imp.rate is not None:
        apply.append(f"tc qdisc add dev {iface} root handle {QDISC} tbf rate {imp.rate}bit "
                     f"burst {_burst(imp.rate)} latency 100ms")
    if imp.delay is not None or imp.rate is not None:
        undo.append(f"tc qdisc del dev {iface} root handle {QDISC} 2>/dev/null")
    if imp.rate is not None:  # incoming: redirect to an ifb device and shape there
        apply += [f"ip link add {IFB} type ifb",
                  f"ip link set {IFB} up",
                  f"tc qdisc add dev {IFB} root handle {QDISC} tbf rate {imp.rate}bit burst {_burst(imp.rate)} "
                  f"latency 100ms",
                  f"tc qdisc add dev {iface} handle ffff: ingress 2>/dev/null || "
                  f"tc qdisc show dev {iface} ingress | grep -q ingress",
                  f"tc filter add dev {iface} parent ffff: protocol all pref {FILTER_PREF} u32 match u32 0 0 "
                  f"action mirred egress redirect dev {IFB}"]
        undo += [f"tc filter del dev {iface} parent ffff: pref {FILTER_PREF} 2>/dev/null",
                 f"tc filter show dev {iface} parent ffff: 2>/dev/null | grep -q . || "
                 f"tc qdisc del dev {iface} ingress 2>/dev/null",
                 f"ip link del {IFB} 2>/dev/null"]
    return apply, undo


def iptables_plan(fid: str, rules: list[list[str]], ssh_port: int) -> tuple[list[str], list[str]]:
    apply = chains_setup(ssh_port) + [_ipt("-A", *r) for r in rules]
    undo = [f"{_ipt('-D', *r)} 2>/dev/null" for r in rules] + chains_drop_if_unused()
    return apply, undo


def record(fid: str, host: str, kind: str, what: str, for_s: float | None, **extra) -> dict:
    now = time.time()
    return {"id": fid, "host": host, "kind": kind, "what": what, "since": now,
            "until": now + for_s if for_s else None, **extra}


ALREADY = "labkit: already in force:"  # what apply_script says when an `exclusive` fault is there


def apply_script(rec: dict, apply: list[str], undo: list[str], for_s: float | None,
                 exclusive: str | None = None) -> str:
    """One shell script: write the undo script, apply step by step (any failure runs the undo and exits non-zero,
    so nothing stays half-applied), write the record, then start the --for timer detached from this session.

    The host's faults are changed one script at a time (flock on STATE_DIR.lock; the timer does not hold it).
    With `exclusive` (a fault id prefix), a fault whose id starts with it already recorded refuses this one,
    exit 3 and ALREADY with its id on stderr: the control side checks that too, but two fabs at once both
    passed that check, and two `fab impair client --loss` stacked their losses."""
    d, fid = STATE_DIR, rec["id"]
    undo_text = "\n".join([*(f"{u} || true" for u in undo),
                           f"rm -f {d}/{fid}.json {d}/{fid}.undo {d}/{fid}.timer", ""])
    lines = ["set -e", f"mkdir -p {d}", f"chmod 700 {d}", f"exec 9>{d}.lock", "flock 9"]
    if exclusive:
        lines.append(f'for f in {d}/{exclusive}*.json; do [ -f "$f" ] || continue; '
                     f'echo "{ALREADY} $(basename "$f" .json)" >&2; exit 3; done')
    lines += [f"cat > {d}/{fid}.undo <<'LABKIT_UNDO'\n{undo_text}LABKIT_UNDO",
             f"trap 'sh {d}/{fid}.undo >/dev/null 2>&1' EXIT",
             *apply,
             f"printf '%s\\n' {shlex.quote(json.dumps(rec, sort_keys=True))} > {d}/{fid}.json",
             "trap - EXIT"]
    if for_s:
        timer = f"echo $$ > {d}/{fid}.timer; sleep {for_s:g}; sh {d}/{fid}.undo"
        lines.append(f"setsid sh -c {shlex.quote(timer)} </dev/null >/dev/null 2>&1 9>&- &")
    return "\n".join(lines) + "\n"


def already_in_force(exc: RemoteError) -> str | None:
    """The id of the fault an `exclusive` apply_script was refused for (its exit 3), else None."""
    if exc.exited != 3:
        return None
    found = [ln[len(ALREADY):].split() for ln in exc.stderr.splitlines() if ln.startswith(ALREADY)]
    return found[-1][0] if found and found[-1] else None


def heal_script(fids: list[str] | None = None) -> str:
    """Undo the given faults (all recorded ones if None): kill each one's timer, run its undo script."""
    d = STATE_DIR
    which = " ".join(f"{d}/{f}.undo" for f in fids) if fids is not None else f"{d}/*.undo"
    return (f"exec 9>{d}.lock; flock 9; "  # not while a fault is being applied (apply_script)
            f"for u in {which}; do [ -f \"$u\" ] || continue; id=$(basename \"$u\" .undo); "
            f"[ -f {d}/$id.timer ] && kill -TERM -- -$(cat {d}/$id.timer) 2>/dev/null; "
            f"echo \"healed $id\"; sh \"$u\" >/dev/null 2>&1; done; true\n")


def sweep_script() -> str:
    """After every record is undone: remove anything labkit-tagged that is still there (a crashed fab, a record
    lost), and say what was found. Touches only labkit's chains, jumps, qdisc handle, filter pref and ifb."""
    return "\n".join([
        f"for t in INPUT OUTPUT; do iptables -w -S $t 2>/dev/null | grep -- '{TAG}' | sed 's/^-A/-D/' | "
        f"while read -r r; do eval iptables -w $r && echo \"swept iptables $r\"; done; done",
        f"for c in {CHAIN_IN} {CHAIN_OUT}; do iptables -w -S $c >/dev/null 2>&1 || continue; "
        f"iptables -w -F $c; iptables -w -X $c; echo \"swept chain $c\"; done",
        "for dev in $(ls /sys/class/net); do "
        f"tc qdisc show dev $dev root 2>/dev/null | grep -q ' {QDISC} root' && "
        f"tc qdisc del dev $dev root handle {QDISC} && echo \"swept qdisc on $dev\"; "
        f"tc filter show dev $dev parent ffff: 2>/dev/null | grep -q 'pref {FILTER_PREF} ' && "
        f"tc filter del dev $dev parent ffff: pref {FILTER_PREF} && echo \"swept ingress filter on $dev\" && "
        f"{{ tc filter show dev $dev parent ffff: | grep -q . || tc qdisc del dev $dev ingress; }}; done",
        f"ip link show {IFB} >/dev/null 2>&1 && ip link del {IFB} && echo 'swept {IFB}'",
        f"rm -f {STATE_DIR}/*.json {STATE_DIR}/*.undo {STATE_DIR}/*.timer 2>/dev/null", "true", ""])


def leftovers_script() -> str:
    """Print one line per labkit trace still on the host (nothing when clean)."""
    return "\n".join([
        f"iptables -w -S 2>/dev/null | grep -E -- '{TAG}|LABKIT-FAULT' || true",
        f"for dev in $(ls /sys/class/net); do tc qdisc show dev $dev 2>/dev/null | grep ' {QDISC} ' | "
        f"sed \"s/^/$dev: /\"; tc filter show dev $dev parent ffff: 2>/dev/null | grep 'pref {FILTER_PREF} ' | "
        f"sed \"s/^/$dev: /\"; done; true",
        f"ip -o link show {IFB} 2>/dev/null || true",
        f"ls {STATE_DIR} 2>/dev/null | sed 's/^/record /' || true", ""])


# --- on the hosts ------------------------------------------------------------------------------------------

def _host(hosts: Hosts, name: str) -> str:
    if name not in {h.name for h in hosts.inv.hosts}:
        raise FaultError(f"{name!r} is not a host of cluster {hosts.inv.cluster} "
                         f"({', '.join(h.name for h in hosts.inv.hosts)})")
    return name


def _ssh_port(hosts: Hosts, name: str) -> int:
    return int(hosts.inv.host(name).vars.get("ansible_port", 22))


def cluster_interface(hosts: Hosts, name: str) -> str:
    address = hosts.address(name)
    out = hosts.run(name, "ip -o -4 addr show").stdout
    iface = interface_for(out, address)
    if not iface:
        raise FaultError(f"{name}: no interface holds its inventory address {address} (`ip -o -4 addr` on the host)")
    return iface


NETEM_PROBE = ("if ip link add lkf-probe type ifb 2>/dev/null; then d=lkf-probe; else d=lo; fi; "
               "if out=$(tc qdisc add dev $d root handle 1ad: netem delay 1ms 2>&1); then "
               "tc qdisc del dev $d root handle 1ad:; echo netem=yes; else echo \"netem=no $out\"; fi; "
               "ip link del lkf-probe 2>/dev/null; true")
IFB_PROBE = ("if out=$(ip link add lkf-probe type ifb 2>&1); then ip link del lkf-probe; echo ifb=yes; "
             "else echo \"ifb=no $out\"; fi")
TOOLS_PROBE = "for t in iptables tc setsid flock; do command -v $t >/dev/null || echo \"missing $t\"; done; true"


def probe(hosts: Hosts, name: str, imp: Impairment | None = None) -> dict:
    """What the host can do: the tools there, and netem when a delay is asked."""
    missing = [ln.split()[1] for ln in hosts.run(name, TOOLS_PROBE).stdout.splitlines() if ln.startswith("missing")]
    caps = {"missing": missing, "netem": None}
    if imp is not None and imp.needs_netem:
        out = hosts.run(name, NETEM_PROBE).stdout.strip()
        caps["netem"] = out.startswith("netem=yes")
        caps["netem_error"] = out.partition(" ")[2].strip()
    if imp is not None and imp.rate is not None:
        out = hosts.run(name, IFB_PROBE).stdout.strip()
        caps["ifb"] = out.startswith("ifb=yes")
        caps["ifb_error"] = out.partition(" ")[2].strip()
    return caps


def impair(hosts: Hosts, name: str, loss=None, rate=None, delay=None, jitter=None, for_=None) -> dict:
    """Impair a host's cluster link both ways; refuses, changing nothing, what the host's kernel cannot do."""
    imp = Impairment.parse(loss, rate, delay, jitter)
    for_s = parse_for(for_)
    _host(hosts, name)
    caps = probe(hosts, name, imp)
    if caps["missing"]:
        raise FaultError(f"{name}: {', '.join(caps['missing'])} missing on the host: install iptables and iproute2 "
                         "there (nothing was changed)")
    if imp.needs_netem and not caps["netem"]:
        raise FaultError(
            f"{name}: cannot add delay or jitter on this kernel ({hosts.run(name, 'uname -r').stdout.strip()}): "
            f"it has no netem queueing discipline (sch_netem; tc says "
            f"{caps.get('netem_error') or 'netem is unknown'!r}). Loss (iptables statistic) and rate (tbf) work "
            "here; delay needs a kernel with sch_netem. Nothing was changed.")
    if imp.rate is not None and not caps["ifb"]:
        raise FaultError(
            f"{name}: cannot limit the rate of incoming traffic on this kernel: it has no ifb device (ip says "
            f"{caps.get('ifb_error') or 'ifb is unknown'!r}), through which labkit shapes what the host receives. "
            "Nothing was changed.")
    for rec in in_force(hosts, [name]):
        if rec["kind"] == "impair":
            raise FaultError(f"{name} is already impaired ({rec['what']}, fault {rec['id']}): `fab heal {name}` first")
    iface = cluster_interface(hosts, name)
    fid = new_id("impair", name)
    apply, undo = tc_plan(iface, imp)
    if imp.loss is not None:
        a, u = iptables_plan(fid, loss_rules(fid, iface, imp.loss), _ssh_port(hosts, name))
        apply, undo = a + apply, undo + u
    rec = record(fid, name, "impair", f"{imp.describe()} on {iface}", for_s, interface=iface)
    try:
        hosts.run(name, apply_script(rec, apply, undo, for_s, exclusive=fid.rsplit("-", 1)[0] + "-"))
    except RemoteError as exc:
        other = already_in_force(exc)
        if other:  # another fab impaired it since the check above
            raise FaultError(f"{name} is already impaired (fault {other}, set by another fab a moment ago): "
                             f"`fab heal {name}` first; nothing was changed") from None
        raise FaultError(f"{name}: could not impair {iface} ({exc}); what had been applied was rolled back") from None
    return {"faults": [rec]}


def partition(hosts: Hosts, a: str, b: str, for_=None) -> dict:
    """Cut the link between two hosts both ways: each drops what comes from and goes to the other."""
    for_s = parse_for(for_)
    _host(hosts, a), _host(hosts, b)
    if a == b:
        raise FaultError(f"partition needs two different hosts, got {a} twice")
    fid = new_id("part", f"{a}{b}")
    recs = []
    for here, there in ((a, b), (b, a)):
        apply, undo = iptables_plan(fid, partition_rules(fid, hosts.address(there)), _ssh_port(hosts, here))
        rec = record(fid, here, "partition", f"cut from {there} ({hosts.address(there)}), both ways", for_s,
                     peer=there)
        try:
            hosts.run(here, apply_script(rec, apply, undo, for_s))
        except RemoteError as exc:
            if recs:
                hosts.run(a, heal_script([fid]), check=False)
            raise FaultError(f"{here}: could not cut the link to {there} ({exc}); nothing is left applied") from None
        recs.append(rec)
    return {"faults": recs}


def _targets(hosts: Hosts, name: str, program: str | None) -> list[str]:
    progs = hosts.programs(name)
    if program is None:
        chosen = sorted(p for p in progs if p.startswith(PROGRAM_PREFIX))
        if not chosen:
            raise FaultError(f"{name} runs no labnodes program (supervisord has: {', '.join(progs) or 'nothing'})")
        return chosen
    if program not in progs:
        raise FaultError(f"{name} has no supervised program {program!r} (it has: {', '.join(sorted(progs)) or 'none'})")
    if not program.startswith(PROGRAM_PREFIX):
        raise FaultError(f"{name}: {program} is not a labnodes program; labkit leaves it alone (sshd is how "
                         "labkit reaches the host)")
    return [program]


def fault(hosts: Hosts, action: str, target: str, for_=None) -> dict:
    """stop, start or kill one supervised program (HOST:PROGRAM) or every labnodes program of a host (HOST)."""
    if action not in ACTIONS:
        raise FaultError(f"fault action {action!r}: one of {', '.join(ACTIONS)}")
    name, program = parse_target(target)
    for_s = parse_for(for_)
    if action == "start" and for_s:
        raise FaultError("--for undoes a stop or a kill; `start` is already the undo")
    _host(hosts, name)
    progs = _targets(hosts, name, program)
    names = " ".join(progs)
    if action == "start":
        healed = [r["id"] for r in in_force(hosts, [name])
                  if r["kind"] in ("stop", "kill") and set(r.get("programs", ())) <= set(progs)]
        if healed:
            hosts.run(name, heal_script(healed))
        hosts.run(name, f"supervisorctl start {names}", check=False)
        now = hosts.programs(name)
        what = ", ".join(f"{p} {now.get(p, '?')}" for p in progs) + (f" (healed {', '.join(healed)})" if healed else "")
        return {"faults": [], "events": [{"host": name, "kind": "start", "what": what, "since": time.time()}],
                "started": progs, "healed": healed}
    fid = new_id(action, name)
    if action == "stop":
        apply = [f"supervisorctl stop {names}"]
        what = f"stopped {names} (supervisorctl stop)"
    else:
        apply = [f"for p in {names}; do pid=$(supervisorctl pid $p); [ \"$pid\" -gt 0 ] 2>/dev/null || "
                 f"{{ echo \"$p is not running\" >&2; exit 1; }}; kill -KILL $pid; echo \"$p $pid\"; done"]
        what = f"SIGKILLed {names}"
        if for_s:  # held down until the time is up; without --for supervisord restarts it as after a crash
            apply.append(f"sleep 0.2; supervisorctl stop {names} >/dev/null 2>&1 || true")
            what += " and kept down"
    undo = [f"supervisorctl start {names} >/dev/null"]
    rec = record(fid, name, action, what, for_s, programs=progs)
    if action == "kill" and not for_s:
        try:
            out = hosts.run(name, "\n".join(apply)).stdout
        except RemoteError as exc:
            raise FaultError(f"{name}: could not kill {names}: {exc}") from None
        pids = dict(ln.split() for ln in out.splitlines() if len(ln.split()) == 2)
        killed = ", ".join(f"{p} (pid {pid})" for p, pid in pids.items())
        return {"faults": [], "killed": pids,
                "events": [{"host": name, "kind": "kill", "since": time.time(),
                            "what": f"SIGKILLed {killed}; supervisord restarts it as after a crash "
                                    "(--for S keeps it down)"}]}
    try:
        hosts.run(name, apply_script(rec, apply, undo, for_s))
    except RemoteError as exc:
        raise FaultError(f"{name}: could not {action} {names}: {exc}") from None
    return {"faults": [rec]}


# --- what is in force, and healing -------------------------------------------------------------------------

def in_force(hosts: Hosts, names=None) -> list[dict]:
    """Every fault recorded on the hosts (all hosts of the inventory if names is None), oldest first.

    Unreachable hosts are left out (fab status shows them as such)."""
    names = [h.name for h in hosts.inv.hosts] if names is None else list(names)
    cmd = f"cat {STATE_DIR}/*.json 2>/dev/null; true"
    found = hosts.on_all(names, lambda n: hosts.run(n, cmd).stdout)
    recs = []
    for name, out in found.items():
        if isinstance(out, Exception):
            continue
        for line in out.splitlines():
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                recs.append({"id": "?", "host": name, "kind": "?", "what": f"unreadable record: {line[:60]}",
                             "since": None, "until": None})
    return sorted(recs, key=lambda r: (r.get("since") or 0, r["host"]))


def heal(hosts: Hosts, name: str | None = None) -> dict:
    """Undo every fault on one host (and the other half of its partitions), or on every host of the cluster."""
    everyone = [h.name for h in hosts.inv.hosts]
    names = [_host(hosts, name)] if name else everyone
    partner = {}
    if name:
        for rec in in_force(hosts, [name]):
            if rec["kind"] == "partition" and rec.get("peer"):
                partner.setdefault(rec["peer"], []).append(rec["id"])

    def one(n):  # bounded: a heal after Ctrl-C must end, and say which host it could not finish
        out = hosts.run(n, heal_script() + sweep_script(), timeout=HEAL_TIMEOUT).stdout
        for peer, ids in partner.items():
            if n == name:
                out += hosts.run(peer, heal_script(ids), timeout=HEAL_TIMEOUT).stdout
        return out
    done = hosts.on_all(names, one)
    rows, failed = [], []
    for n, out in done.items():
        if isinstance(out, Exception):
            failed.append(f"{n}: {out}")
            continue
        lines = [ln for ln in out.splitlines() if ln.strip()]
        rows.append({"host": n, "undone": lines})
    return {"hosts": rows, "failed": failed}


def leftovers(hosts: Hosts, names=None) -> dict[str, list[str]]:
    """Every labkit fault trace on each host (rules, qdiscs, ifb, records); empty lists when clean."""
    names = [h.name for h in hosts.inv.hosts] if names is None else list(names)
    got = hosts.on_all(names, lambda n: hosts.run(n, leftovers_script()).stdout)
    return {n: ([f"unreachable: {v}"] if isinstance(v, Exception) else [ln for ln in v.splitlines() if ln.strip()])
            for n, v in got.items()}


# --- printing ----------------------------------------------------------------------------------------------

def _when(t) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) if t else "-"


def fault_rows(recs: list[dict], now: float | None = None):
    now = time.time() if now is None else now
    for r in recs:
        until = r.get("until")
        left = f"{_when(until)} ({max(0, until - now):.0f}s left)" if until else "until healed"
        yield [r["host"], r["kind"], r["what"], _when(r.get("since")), left, r["id"]]


FAULT_HEADERS = ["host", "fault", "what", "since", "until", "id"]


def result_rows(result: dict):
    yield from fault_rows(result.get("faults", []))
    for e in result.get("events", []):
        yield [e["host"], e["kind"], e["what"], _when(e["since"]), "-", "-"]


def heal_rows(result: dict):
    for h in result["hosts"]:
        yield [h["host"], "; ".join(h["undone"]) or "nothing to undo"]


HEAL_HEADERS = ["host", "undone"]



# --- measuring what a fault does (tests, bench, an instructor's demo) ---------------------------------------
# Bounded in count and time, between two cluster hosts, with the hosts' own python3 (Ansible needs it there).

_UDP_ECHO = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], int(sys.argv[2]))); s.settimeout(1)
n, last = 0, time.monotonic(); end = last + float(sys.argv[3])
while time.monotonic() < end and time.monotonic() - last < 10:
    try:
        data, peer = s.recvfrom(2048)
    except socket.timeout:
        continue
    last = time.monotonic()
    if data == b"bye":
        break
    n += data != b"stat"
    try:  # a reply dropped by an OUTPUT rule fails with EPERM: that is the loss being measured
        s.sendto(b"stat %d" % n if data == b"stat" else data, peer)
    except OSError:
        pass
"""

_UDP_CLIENT = r"""
import json, socket, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.2)
def send(data):
    try:  # dropped by a local OUTPUT rule: EPERM
        s.sendto(data, (host, port))
    except OSError:
        pass
def ask():
    for _ in range(50):
        send(b"stat")
        try:
            data = s.recv(2048)
        except (socket.timeout, ConnectionRefusedError):
            continue
        if data.startswith(b"stat"):
            return int(data.split()[1])
    return None
before = ask()
s.setblocking(False)
got = set()
for i in range(count):
    send(b"%d" % i)
    time.sleep(0.001)
    try:
        while True:
            got.add(s.recv(2048))
    except (BlockingIOError, ConnectionRefusedError):
        pass
end = time.monotonic() + 2
while time.monotonic() < end:
    try:
        got.add(s.recv(2048))
    except (BlockingIOError, ConnectionRefusedError):
        time.sleep(0.01)
s.setblocking(True); s.settimeout(0.2)
after = ask()
for _ in range(3):
    send(b"bye")
arrived = None if before is None or after is None else after - before
print(json.dumps({"sent": count, "arrived": arrived, "echoed": len(got)}))
"""

_TCP_SINK = r"""
import socket, sys, time
srv = socket.create_server((sys.argv[1], int(sys.argv[2]))); srv.settimeout(float(sys.argv[3]))
conn, _ = srv.accept(); conn.settimeout(30)
n, t0 = 0, time.monotonic()
while True:
    b = conn.recv(1 << 16)
    if not b:
        break
    n += len(b)
conn.sendall(b"%d %.6f" % (n, time.monotonic() - t0)); conn.close()
"""

_TCP_SOURCE = r"""
import json, socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
for _ in range(50):
    try:
        c = socket.create_connection((host, port), timeout=5); break
    except OSError:
        time.sleep(0.1)
c.settimeout(30)
buf, end = b"x" * 65536, time.monotonic() + seconds
while time.monotonic() < end:
    c.sendall(buf)
c.shutdown(socket.SHUT_WR)
n, secs = c.recv(100).split()
print(json.dumps({"bytes": int(n), "seconds": float(secs), "mbit_s": int(n) * 8 / float(secs) / 1e6}))
"""

MEASURE_PORT = 47111


def _py(script: str, *args) -> str:
    return f"python3 -c {shlex.quote(script)} {' '.join(shlex.quote(str(a)) for a in args)}"


def measure_loss(hosts: Hosts, src: str, dst: str, count: int = 2000) -> dict:
    """Send `count` UDP datagrams (1 ms apart) from src to an echo on dst: how many arrived, how many came back."""
    address = hosts.address(dst)
    hosts.run(dst, f"setsid {_py(_UDP_ECHO, address, MEASURE_PORT, 120)} </dev/null >/dev/null 2>&1 &")
    out = hosts.run(src, f"timeout 120 {_py(_UDP_CLIENT, address, MEASURE_PORT, count)}").stdout
    result = json.loads(out)
    result["echo_loss_pct"] = 100 * (1 - result["echoed"] / count)
    if result["arrived"] is not None:
        result["one_way_loss_pct"] = 100 * (1 - result["arrived"] / count)
    return result


def measure_rate(hosts: Hosts, src: str, dst: str, seconds: float = 3) -> dict:
    """Send as fast as TCP allows from src to dst for `seconds`; bytes the receiver got and its Mbit/s."""
    address = hosts.address(dst)
    hosts.run(dst, f"setsid timeout 120 {_py(_TCP_SINK, address, MEASURE_PORT, 60)} </dev/null >/dev/null 2>&1 &")
    return json.loads(hosts.run(src, f"timeout 120 {_py(_TCP_SOURCE, address, MEASURE_PORT, seconds)}").stdout)
