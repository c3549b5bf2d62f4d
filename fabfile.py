"""labkit tasks: bring a cluster up, run each technology across its hosts, show it, take it down.

Every task acts on the inventory given with -i/--inventory, else on the active one ($LABKIT_INVENTORY, else the last
`fab up -i ...`, else inventory/netns).
Run tasks print a table, or JSON with --json. The work is done in labkit.runs, labkit.provision and the inventory's
backend (labkit.backends: netns, vagrant or lab), behind the same calls: this file never asks which backend it is.
"""

from __future__ import annotations

import sys
import time

from labkit import LabkitError, backends, inventory, options, printable, provision, runs
from labkit.options import task
from labkit.remote import Hosts, RemoteError, parse_timeout
from labnodes import config, output


AGAIN = "run it again: it keeps what is done and finishes the rest"  # after a Ctrl-C (options.Task)
HEAL = "fab heal undoes every fault labkit set"
INVENTORY = "the cluster's inventory (default: the active one)"  # each task's --inventory: without one, `-i X`
# after the task's name is Fabric's --identity, and the task ran on the active cluster instead of X


def _fail(exc: Exception):
    print(f"fab: error: {printable(str(exc))}", file=sys.stderr)
    sys.exit(1)


def _inventory(path=None):
    """The inventory a task acts on (default: the active one), once its backend says this user may act on it."""
    inv = inventory.load(path)
    backends.preflight(inv)  # netns: root only, said at once (as anyone else, every host looked broken)
    return inv


def _run(fn, headers, rows, json_, *args, inventory_=None, **kwargs) -> dict:
    try:
        with Hosts(_inventory(inventory_)) as hosts:
            try:
                result = fn(hosts, *args, **kwargs)
            except RemoteError as exc:
                if exc.unreachable:  # say so in one line if the cluster is not up at all
                    _fail(LabkitError(runs.not_up(hosts) or str(exc)))
                raise
    except LabkitError as exc:
        _fail(exc)
    if json_:
        output.as_json(result)
    else:
        output.table(rows(result), headers)
    return result


@task(help={"inventory": "inventory to bring up and make active (default: the active one)",
            "quiet": "hide Ansible's task output"}, interrupted=AGAIN)
def up(c, inventory_=None, quiet=False):
    """Bring the inventory's hosts up (its backend: netns, vagrant or lab) and provision them with site.yml."""
    try:
        inv = _inventory(inventory_)
        start = time.monotonic()
        backends.for_inventory(inv).up(inv)
        hosts_s = time.monotonic() - start
        report = provision.provision(inv.path, quiet=quiet, hosts=len(inv.hosts), cluster=inv.cluster)
    except LabkitError as exc:
        _fail(exc)
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in report["timing"].get("roles", {}).items())
    changed = sum(r["changed"] for r in report["hosts"].values())
    print(f"\nup: hosts {hosts_s:.1f}s, provisioning {report['seconds']:.1f}s ({changed} changes)\n"
          f"up: per role: {timing}\n")
    status(c)


@task(name="provision", help={"inventory": "inventory to provision (default: the active one)",
                              "quiet": "hide Ansible's task output"}, interrupted=AGAIN)
def provision_(c, inventory_=None, quiet=False):
    """Run playbooks/site.yml against the hosts again (a second run changes nothing)."""
    try:
        inv = _inventory(inventory_)
        report = provision.provision(inv.path, quiet=quiet, hosts=len(inv.hosts), cluster=inv.cluster)
    except LabkitError as exc:
        _fail(exc)
    print(f"provision: {report['seconds']:.1f}s, "
          f"{sum(r['changed'] for r in report['hosts'].values())} changes")


@task(help={"inventory": "inventory whose hosts to remove (default: the active one)",
            "forget": "then also delete what this machine keeps of the cluster, .labkit/<cluster>/ (SSH key, "
                      "secrets, logs): the next fab up makes new ones"}, interrupted=AGAIN)
def down(c, inventory_=None, forget=False):
    """Take the cluster down: netns hosts removed, Vagrant VMs destroyed, labkit removed from lab machines; with
    --forget, also what this machine keeps of it (key, secrets, logs)."""
    try:
        inv = _inventory(inventory_)
        backends.for_inventory(inv).down(inv)
        if forget:
            backends.forget(inv)
    except LabkitError as exc:
        _fail(exc)


@task(positional=["directory"], help={
    "directory": "new inventory directory to write", "cluster": "cluster name, 1-6 of [a-z0-9]",
    "subnet": "the cluster's /24, apart from every other cluster's", "ring": "ring hosts (0: no ring)",
    "workers": "Celery workers"})
def new_inventory(c, directory, cluster=None, subnet=None, ring=3, workers=2):
    """Write a netns inventory of any size (a ring of 50, 47 workers: 100 hosts); bring it up with `fab up -i`."""
    missing = [need for need, value in (("--cluster NAME (1-6 of [a-z0-9])", cluster),
                                        ("--subnet A.B.C.0/24 (a /24 no other cluster uses)", subnet)) if not value]
    if missing:  # invoke makes them options, and gives None for one left out (a traceback before)
        _fail(LabkitError(f"new-inventory needs {' and '.join(missing)}, e.g. `fab new-inventory big --cluster big "
                          "--subnet 10.77.50.0/24`"))
    try:
        path = inventory.new_sized(directory, cluster, subnet, int(ring), int(workers))
    except (LabkitError, ValueError) as exc:
        _fail(exc)
    print(f"new-inventory: {path}/hosts.yml: {int(ring) + int(workers) + 3} hosts "
          f"({inventory.sized_shape(int(ring), int(workers))}); bring it up with `fab up -i {path}`")


@task(help={"json": "print JSON instead of a table", "inventory": INVENTORY})
def status(c, json_=False, inventory_=None):
    """Hosts, groups, addresses, and the supervised programs on each host with their state."""
    result = _run(runs.status, runs.STATUS_HEADERS, runs.status_rows, json_, inventory_=inventory_)
    if not json_:
        print(f"\ncluster {result['cluster']} ({result['backend']}, {result['inventory']})")
        for h in result["hosts"]:  # a program that ended by itself: how it is doing, and why, from its log
            for prog in sorted({*h.get("log_ends", {}), *h.get("ended", {})}):
                ended = h.get("ended", {}).get(prog, {})
                why = h.get("log_ends", {}).get(prog)
                said = "log's last error" if ended.get("recovering") else "log ends"
                print(f"{h['host']}: {prog} {h['programs'][prog]}" + (f": {ended['note']}" if ended else "")
                      + ("" if why is None else f"{'. Its' if ended else ': its'} {said}: {why or '(empty)'}"))
        if not result["up"]:
            print(f"the cluster is not {'fully ' if any(h['state'] == 'up' for h in result['hosts']) else ''}up: "
                  f"bring it up with `{result['up_hint']}`")
        if result.get("faults"):
            from labkit import faults
            print("\nfaults in force (`fab heal` undoes them all):\n")
            output.table(faults.fault_rows(result["faults"]), faults.FAULT_HEADERS)
        if result["flower"]:
            print(f"Flower (Celery monitor): {result['flower']}  user 'admin', password in "
                  f".labkit/{result['cluster']}/secrets/flower_password")
    if not result["up"]:
        sys.exit(1)


@task(help={"message": "text to send round the ring", "numbers": "two numbers A,B: one Euclid step per hop",
            "json": "print JSON instead of a table", "inventory": INVENTORY})
def run_ring(c, message="hello", numbers="48,18", json_=False, inventory_=None):
    """Send a message and numbers from the client round the Pyro4 ring: pyro1 -> pyro2 -> pyro3 -> pyro1."""
    result = _run(runs.ring, runs.RING_HEADERS, runs.ring_rows, json_, message=message, numbers=numbers,
                  inventory_=inventory_)
    if not json_:
        print(f"\n{result['message']!r} from {result['client']['host']} went round {result['laps']} lap(s) "
              f"in {result['total_ms']:.1f} ms: gcd{tuple(result['input'])} = {result['gcd']}, "
              f"lcm = {result['lcm']}")
        note = runs.ring_clock_note(result)
        if note:
            print(note)


@task(help={"count": "GCD jobs per mode, 1..10000 (labnodes celery batch's bound)",
            "mode": "one, group, chunks or all", "json": "print JSON instead", "inventory": INVENTORY})
def run_celery(c, count=200, mode="all", json_=False, inventory_=None):
    """Submit GCD/LCM jobs from the client through the Redis broker; show results and which workers ran them."""
    result = _run(runs.celery, runs.CELERY_HEADERS, runs.celery_rows, json_, count=int(count), mode=mode,
                  inventory_=inventory_)
    if not json_:
        s = result["submit"]
        print(f"\nlcm(48, 18) = {s['result']}, run by {s['worker']} on {s['host']}; "
              f"workers group: {', '.join(result['workers'])}")
        for r in result["modes"].values():
            for line in r["errors"]:
                print(f"error: {printable(line)}", file=sys.stderr)
    if any(r["error_count"] for r in result["modes"].values()):  # as `labnodes celery batch`: wrong or missing
        sys.exit(1)


@task(iterable=["pair"], help={"pair": "a request like 48,18 (repeat for more)", "json": "print JSON instead",
                               "inventory": INVENTORY})
def run_math(c, pair=None, json_=False, inventory_=None):
    """Ask the socket math server on the sockserver host from the client host (default: 48,18)."""
    result = _run(runs.math, runs.MATH_HEADERS, runs.math_rows, json_, pairs=tuple(pair or ["48,18"]),
                  inventory_=inventory_)
    if any("error" in a for a in result["answers"]):  # as `labnodes math ask`: a refused request fails the run
        sys.exit(1)


@task(help={"size": "file size in MB", "json": "print JSON instead of a table", "inventory": INVENTORY,
            "timeout": "seconds the client waits to connect and for each step of a transfer (default: the "
                       "client's file_idle_timeout, 60)"})
def send_file(c, size=32, json_=False, inventory_=None, timeout=None):
    """Send a random binary file from the client to the sockserver host and back; compare sha256 on both."""
    try:
        timeout = options.number("--timeout", timeout, 0, config.MAX_SECONDS, low_open=True)
    except LabkitError as exc:
        _fail(exc)
    result = _run(runs.send_file, runs.SEND_FILE_HEADERS, runs.send_file_rows, json_, size_mb=int(size),
                  timeout=timeout, inventory_=inventory_)
    if not json_:
        print()
        output.table(([f["where"], f["path"], f["sha256"]] for f in result["files"]), ["copy", "path", "sha256"])
        print(f"\nsha256 {'matches on both hosts, both ways' if result['match'] else 'DIFFERS'}")
    if not result["match"]:
        sys.exit(1)


@task(help={"junit": "also write JUnit XML here (one test case per check and host)",
            "html": "also write one self-contained HTML report here",
            "grading": "YAML grading file: which checks count, their weights, the least hosts per group "
                       "(default: every check, 1 each)",
            "class": "check every student inventory in this folder (one subfolder each), in parallel",
            "out": "class mode: folder for class.csv, class.xlsx and each student's HTML",
            "timeout": "seconds per host for SSH and each remote command (default: the inventory's "
                       "labkit_check_timeout, else 20)",
            "json": "print the report as JSON instead of the summary", "inventory": INVENTORY})
def check(c, junit=None, html=None, grading=None, class_=None, out=None, timeout=None, json_=False, inventory_=None):
    """Check the cluster in layers (reach, host, service, app); outcomes pass / fail / blocked-by."""
    from labkit import checks
    from labkit.checks import classmode, grading as grading_, report
    try:
        timeout = parse_timeout(timeout)
        checks.check_modes(class_, out, inventory_, junit, html, json_)
        if class_:
            try:
                results = classmode.run_class(class_, out, grading, timeout=timeout)
            except KeyboardInterrupt:
                print(f"\nclass: interrupted; {out}/class.csv and class.xlsx list who was checked", file=sys.stderr)
                sys.exit(130)
            print(f"\nclass: {len(results)} students; {out}/class.csv, {out}/class.xlsx, {out}/<student>.html")
            sys.exit(0 if all(r["status"] == "ok" for r in results.values()) else 1)
        g = grading_.load(grading)
        for option, path in (("--junit", junit), ("--html", html)):
            if path:
                report.check_output(option, path)
        result = checks.run(_inventory(inventory_), timeout=timeout, groups=g["groups"])
        score = grading_.score(result, g) if grading else None
        if junit:
            report.save("--junit", junit, report.junit(result))
        if html:
            report.save("--html", html, report.html_page(result, score))
    except LabkitError as exc:
        _fail(exc)
    if json_:
        output.as_json(dict(result, score=score))
    else:
        print(report.console(result, score))
    sys.exit(0 if result["status"] == "ok" else 1)


@task(help={"inventory": INVENTORY})
def demo(c, inventory_=None):
    """All the runs, one after another: ring, Celery, math server, file transfer (each its inventory has hosts for)."""
    from labkit.checks import APP_GROUPS  # the groups each run needs: an inventory may leave the ring out
    try:
        groups = inventory.load(inventory_).groups
    except LabkitError as exc:
        _fail(exc)
    for title, t, cid in [("Pyro4 ring", run_ring, "app.ring"), ("Celery through the Redis broker", run_celery,
                          "app.celery"), ("Socket math server", run_math, "app.math"),
                          ("File transfer", send_file, "app.file")]:
        print(f"\n=== {title} ===\n")
        empty = [g for g in APP_GROUPS[cid] if not groups.get(g)]
        if empty:
            print(f"skipped: the inventory has no host in group {', '.join(repr(g) for g in empty)}")
            continue
        t(c, inventory_=inventory_)


# --- Faults and impairments (labkit.faults, labkit.scenario) ---------------------------------------------------

def _faults_run(fn, *args, json_=False, headers=None, rows=None, **kwargs) -> dict:
    from labkit import faults
    return _run(fn, headers or faults.FAULT_HEADERS, rows or faults.result_rows, json_, *args, **kwargs)


@task(help={"host": "the host whose cluster link to impair", "loss": "percent of packets dropped, each way",
            "rate": "rate limit each way, like 500kbit or 10mbit", "delay": "ms added to what the host sends (netem)",
            "jitter": "ms of random variation of the delay (netem)", "for": "undo by itself after SECONDS",
            "json": "print JSON instead of a table", "inventory": INVENTORY}, interrupted=HEAL)
def impair(c, host, loss=None, rate=None, delay=None, jitter=None, for_=None, json_=False, inventory_=None):
    """Impair a host's cluster link both ways: packet loss, a rate limit, delay; refused where the kernel can't."""
    from labkit import faults
    _faults_run(faults.impair, host, loss=loss, rate=rate, delay=delay, jitter=jitter, for_=for_, json_=json_,
                inventory_=inventory_)


@task(help={"host": "only this host and its partition peers (default: every host of the cluster)",
            "json": "print JSON instead", "inventory": INVENTORY}, interrupted=AGAIN)
def heal(c, host=None, json_=False, inventory_=None):
    """Undo every fault labkit set, on every host (or on one: --host HOST)."""
    from labkit import faults
    result = _faults_run(faults.heal, host, json_=json_, headers=faults.HEAL_HEADERS, rows=faults.heal_rows,
                         inventory_=inventory_)
    if result["failed"]:
        _fail(LabkitError("could not heal " + "; ".join(result["failed"])))


@task(help={"host_a": "one host", "host_b": "the other host", "for": "undo by itself after SECONDS",
            "json": "print JSON instead", "inventory": INVENTORY}, interrupted=HEAL)
def partition(c, host_a, host_b, for_=None, json_=False, inventory_=None):
    """Cut the link between two hosts, both ways, on both hosts (`fab heal` restores it)."""
    from labkit import faults
    _faults_run(faults.partition, host_a, host_b, for_=for_, json_=json_, inventory_=inventory_)


@task(help={"action": "stop, start or kill", "target": "HOST:PROGRAM, or HOST for all its labnodes programs",
            "for": "undo (start again) by itself after SECONDS", "json": "print JSON instead",
            "inventory": INVENTORY}, interrupted=HEAL)
def fault(c, action, target, for_=None, json_=False, inventory_=None):
    """Stop, start or SIGKILL a supervised program (HOST:PROGRAM) or every labnodes program of a host (HOST)."""
    from labkit import faults
    _faults_run(faults.fault, action, target, for_=for_, json_=json_, inventory_=inventory_)


@task(positional=["file"], help={"file": "the scenario (YAML timeline; see scenarios/)",
                                 "run": "ring, celery, math or file (default: the file's `run:`, else ring)",
                                 "json": "print JSON at the end instead of the summary line",
                                 "inventory": INVENTORY})
def scenario(c, file, run=None, json_=False, inventory_=None):
    """Play a scenario's faults on time while a run repeats; everything is healed at the end, also on Ctrl-C."""
    import signal

    from labkit import scenario as scenarios
    # Ctrl-C (SIGINT) stops the scenario and heals, also when fab was started where SIGINT is ignored (a
    # background job of a script, `nohup`): Python then leaves it ignored, and `kill -INT` would do nothing.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        inv = _inventory(inventory_)
        plan = scenarios.load(file)
        result = scenarios.play(inv, plan, run or plan.run or "ring", echo=(lambda s: None) if json_ else print)
    except KeyboardInterrupt:
        print("\nscenario: interrupted; healed every host it could reach (the heal line above says what)",
              file=sys.stderr)
        sys.exit(130)
    except LabkitError as exc:
        _fail(exc)
    if json_:
        output.as_json(result)
    else:
        print(f"\n{result['attempts']} {result['run']} run(s), {result['failed_attempts']} failed during the faults; "
              f"after healing: {'works' if result['ok_after_heal'] else 'STILL FAILING'}")
    if not result["ok_after_heal"]:
        sys.exit(1)
