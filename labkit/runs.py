"""The cross-host runs behind the Fabric tasks: each runs its client side on a cluster host over SSH.

Every run returns a JSON-able dict (what `fab run-... --json` prints) and has a `*_rows` function for the table.
Hosts are taken from the inventory's groups, never named here: the client side runs on `groups.clients[0]`, the
ring starts at `groups.ring[0]`; where labnodes lives and what a server's settings are (its file root, Flower's
port) is asked of the host (its labnodes.toml), never read from a role's files.
"""

from __future__ import annotations

import shlex
from labkit import STATE, LabkitError, backends, one_at_a_time, printable
from labkit.remote import Hosts, RemoteError
from labnodes import LabnodesError, celery_cli
from labnodes.selftest import ended_note, recovering

OUTBOX = "/var/lib/labnodes/outbox"  # where send-file makes its file on the client host
INBOX = "/var/lib/labnodes/inbox"  # where send-file fetches it back to


def _first(hosts: Hosts, group: str) -> str:
    names = hosts.inv.groups.get(group) or ()
    if not names:
        raise LabkitError(f"{hosts.inv.path}: group {group!r} has no host")
    return names[0]


def _where(hosts: Hosts, name: str) -> dict:
    return {"host": name, "address": hosts.address(name)}


# --- Pyro4 ring -------------------------------------------------------------------------------------------

def ring(hosts: Hosts, message: str = "hello", numbers: str = "48,18") -> dict:
    """Send a message and two numbers round the ring, from the client host, starting at the first ring host."""
    client, start = _first(hosts, "clients"), _first(hosts, "ring")
    # --flag=VALUE: a value may start with "-" (a message "-x", numbers "-4,2" that the ring must refuse itself)
    result = hosts.labnodes(client, "ring", "send", f"--start={start}", f"--message={message}", f"--numbers={numbers}")
    return {"client": _where(hosts, client), "ring": list(hosts.inv.groups["ring"]), **result}


def ring_rows(result: dict):
    t0 = result["trace"][0]["received"] if result["trace"] else 0.0
    for i, hop in enumerate(result["trace"], 1):
        yield [i, hop["lap"], hop["node"], hop["host"], hop["address"], f'{(hop["received"] - t0) * 1000:.2f}',
               ",".join(map(str, hop["numbers"]))]


RING_HEADERS = ["hop", "lap", "node", "host", "address", "+ms", "numbers after step"]


def ring_clock_note(result: dict) -> str | None:
    """A line when the hops' times (+ms), each read on its own host's clock, cannot all be right: a hop before the
    one that passed it the message, or after the run's end by the start node's clock; None when they can."""
    trace = result.get("trace") or []
    total = result.get("total_ms", 0.0) / 1000
    for prev, hop in zip(trace, trace[1:]):
        if hop["received"] < prev["received"] or hop["received"] - trace[0]["received"] > total:
            return (f"the hops' times are read on each host's own clock, and these disagree: {hop['host']}'s reads "
                    f"{(hop['received'] - prev['received']) * 1000:+.2f} ms after {prev['host']}'s, in a run of "
                    f"{total * 1000:.1f} ms by {trace[0]['host']}'s (fab check's host.clock compares the clocks)")
    return None


# --- Celery -----------------------------------------------------------------------------------------------

def celery(hosts: Hosts, count: int = 200, mode: str = "all") -> dict:
    """Submit `count` GCD jobs from the client host in each mode; report results and who ran them. A count or
    mode that `labnodes celery batch` would refuse is refused here first, before the single job runs."""
    try:
        celery_cli.check_batch(count, celery_cli.batch_modes(mode))
    except LabnodesError as exc:
        raise LabkitError(str(exc)) from None
    client = _first(hosts, "clients")
    single = hosts.labnodes(client, "celery", "submit", "lcm", "48", "18")
    report = hosts.labnodes(client, "celery", "batch", f"--count={count}", f"--mode={mode}")
    return {"client": _where(hosts, client), "workers": list(hosts.inv.groups.get("workers", ())),
            "submit": single, **report}


def celery_rows(result: dict):
    order = ["one", "group", "chunks"]
    for mode, r in sorted(result["modes"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 9):
        spread = ", ".join(f"{h}: {n}" for h, n in r["hosts"].items()) or "-"
        yield [mode, r["tasks"], r["ok"], f'{r["tasks_per_s"]}', spread, r["error_count"]]


CELERY_HEADERS = ["mode", "tasks", "correct", "tasks/s", "ran on (host: tasks)", "errors"]


# --- Socket math server -----------------------------------------------------------------------------------

def math(hosts: Hosts, pairs: tuple[str, ...] = ("48,18",)) -> dict:
    """Ask the math server on the sockserver host, from the client host."""
    client = _first(hosts, "clients")
    answers = hosts.labnodes(client, "math", "ask", "--", *pairs)  # "-1,2" is a pair for the server to refuse
    return {"client": _where(hosts, client), "server": _where(hosts, _first(hosts, "sockservers")),
            "answers": answers}


def math_rows(result: dict):
    for a in result["answers"]:
        yield [a["pair"], a.get("gcd", ""), a.get("lcm", ""), a.get("error", ""), a["server"]]


MATH_HEADERS = ["request", "gcd", "lcm", "error", "answered by"]


# --- File transfer ----------------------------------------------------------------------------------------

def _sha256(hosts: Hosts, name: str, path: str) -> str:
    return hosts.run(name, f"sha256sum {shlex.quote(path)}").stdout.split()[0]


def send_file(hosts: Hosts, size_mb: int = 32, timeout: float | None = None) -> dict:
    """Make a random file on the client host, send it to the sockserver host, fetch it back; sha256 everywhere.

    One run at a time per cluster from this machine: the copies have fixed names (one per size, so runs do not
    pile files up on the hosts and the table's paths stay there to look at), and two runs at once (`fab
    send-file` in two terminals, or beside a scenario's file runs) replaced each other's files mid-way: one
    failed in `mv`, or compared another run's copies. timeout: the client's --timeout (default its
    file_idle_timeout)."""
    if not 1 <= size_mb <= 4096:
        raise LabkitError(f"size must be 1..4096 MB, got {size_mb}")
    lock = STATE / hosts.inv.cluster / "send-file.lock"
    with one_at_a_time(lock, f"send-file: waiting for another send-file on cluster {hosts.inv.cluster} ({lock})"):
        return _send_file(hosts, size_mb, () if timeout is None else ("--timeout", f"{timeout:g}"))


def _send_file(hosts: Hosts, size_mb: int, timeout: tuple[str, ...]) -> dict:
    client, server = _first(hosts, "clients"), _first(hosts, "sockservers")
    name = f"labkit-demo-{size_mb}M.bin"
    src, back = f"{OUTBOX}/{name}", f"{INBOX}/{name}"
    hosts.run(client, f"mkdir -p {OUTBOX} {INBOX} && rm -f {back}")
    hosts.labnodes(client, "file", "make", src, "--size", str(size_mb))  # tethered: stops when fab does
    stored = f"{hosts.setting(server, 'file_root')}/{name}"
    sent = hosts.labnodes(client, "file", "send", *timeout, src)
    fetched = hosts.labnodes(client, "file", "get", *timeout, name, "--out", INBOX)
    sums = {f"{client} (original)": _sha256(hosts, client, src), f"{server} (stored)": _sha256(hosts, server, stored),
            f"{client} (fetched back)": _sha256(hosts, client, back)}
    return {
        "client": _where(hosts, client), "server": _where(hosts, server), "name": name,
        "size": sent["size"], "send": sent, "get": fetched,
        "files": [{"where": w, "path": p, "sha256": s}
                  for (w, s), p in zip(sums.items(), [src, stored, back], strict=True)],
        "match": len(set(sums.values())) == 1,
    }


def send_file_rows(result: dict):
    """The two directions, by the hosts' inventory names (the client and sockserver groups' first hosts)."""
    client, server = result["client"]["host"], result["server"]["host"]
    yield [f"{client} -> {server}", result["size"], result["send"]["mb_per_s"], result["send"]["sha256"][:16]]
    yield [f"{server} -> {client}", result["size"], result["get"].get("mb_per_s", ""), result["get"]["sha256"][:16]]


SEND_FILE_HEADERS = ["direction", "bytes", "MB/s", "sha256 (sent)"]


# --- Status -----------------------------------------------------------------------------------------------

def status(hosts: Hosts) -> dict:
    """Every host: groups, address, its state as the backend sees it (up, down, broken), and, for hosts that are
    up, whether SSH answers and its supervised programs with their state. `up` is true when every host is up."""
    inv = hosts.inv
    backend = backends.for_inventory(inv)
    machines = {row["host"]: row for row in backend.status(inv)}

    def seen(name):  # the programs, how each that ended by itself is doing, and the last line of its log: why
        try:
            progs = hosts.supervised(name)
        except RemoteError as exc:  # logged in, but the host's python could not look
            return {}, {}, {}, str(exc)
        return ({prog: p["state"] for prog, p in progs.items()},
                {prog: printable(p["log_ends"]) for prog, p in progs.items() if "log_ends" in p},
                {prog: dict(p["ended"], last=printable(p["ended"]["last"]), uptime=p.get("uptime"),
                            recovering=recovering(p), note=printable(ended_note(p)))
                 for prog, p in progs.items() if p.get("ended")}, None)

    reachable = [h.name for h in inv.hosts if machines.get(h.name, {}).get("state") == "up"]
    states = hosts.on_all(reachable, seen)
    rows = []
    for h in inv.hosts:
        machine = machines.get(h.name, {"state": "down", "problem": ""})
        got = states.get(h.name)
        ssh_ok = got is not None and not isinstance(got, Exception)
        rows.append({
            "host": h.name, "address": h.address,
            "groups": [g for g, members in inv.groups.items() if h.name in members],
            "state": machine["state"], "ssh": ssh_ok,
            "programs": got[0] if ssh_ok else {}, "log_ends": got[1] if ssh_ok else {},
            "ended": got[2] if ssh_ok else {},
            "error": str(got) if isinstance(got, Exception) else ((ssh_ok and got[3]) or machine.get("problem") or None),
        })
    broker = (inv.groups.get("brokers") or [None])[0]
    flower = None
    if broker and broker in reachable and not isinstance(states.get(broker), Exception):
        try:
            flower = f"http://{hosts.address(broker)}:{hosts.setting(broker, 'flower_port')}/"
        except LabkitError:
            flower = None
    from labkit import faults  # every fault labkit set that is still in force, as recorded on each host
    in_force = faults.in_force(hosts, [r["host"] for r in rows if r["ssh"]])
    return {"cluster": inv.cluster, "inventory": str(inv.path), "backend": inv.backend, "hosts": rows,
            "flower": flower, "faults": in_force, "up": all(r["state"] == "up" for r in rows),
            "up_hint": backends.up_hint(inv)}


def status_rows(result: dict):
    for h in result["hosts"]:
        ended = h.get("ended", {})
        progs = ", ".join(f"{p} {s}" + (f" (ended by itself {ended[p]['times']}{'+' if ended[p]['cut'] else ''}x)"
                                        if p in ended else "")
                          for p, s in sorted(h["programs"].items())) if h["ssh"] else h["error"]
        progs = progs or (h["error"] if h.get("error") else "")
        ssh = "yes" if h["ssh"] else "no"
        yield [h["host"], h["address"], ",".join(h["groups"]), h["state"], ssh, progs or "-"]


STATUS_HEADERS = ["host", "address", "groups", "state", "ssh", "programs (supervisord)"]


def not_up(hosts: Hosts) -> str | None:
    """If the cluster is not up as its backend sees it, one line saying so and how to bring it up; else None."""
    inv = hosts.inv
    rows = backends.for_inventory(inv).status(inv)
    down = [r["host"] for r in rows if r["state"] != "up"]
    if not down:
        return None
    what = "is not up" if len(down) == len(rows) else f"is not fully up ({', '.join(down)} {'is' if len(down) == 1 else 'are'} not)"
    return (f"cluster {inv.cluster} ({inv.backend}, {backends.shown(inv.path)}) {what}: "
            f"bring it up with `{backends.up_hint(inv)}`")
