"""`make vm-test`: the whole cluster on Vagrant VMs (libvirt), end to end, then the lab-machine path on the same VMs.

1. builds the offline box if it is missing (scripts/vm-box.sh);
2. `vagrant up` of every host of a copy of inventory/vagrant (cluster `vmt`, 192.168.57.0/24, its own .vagrant
   directory, so a cluster you brought up yourself is left alone): the Vagrantfile's trigger provisions once;
3. with no inventory flag (vagrant up made the copy active): fab status, run-ring, run-celery, run-math,
   send-file, check; a Ctrl-C in `fab run-celery`, which must also stop the batch on the client VM (through
   sudo); the fault tools on real Debian kernels (partition, fault stop, impair with netem's delay, rate and
   loss, status showing them, heal, a name-server restart the ring must not notice; FAULTS below); worker1's
   clock set 5 minutes ahead, which `fab check` must fail as host.clock and which makes worker1 drop the
   client's Celery jobs as expired (`fab run-celery`), then set back; then `fab provision`, which must change
   nothing;
4. the lab path on the same VMs: the Vagrant cluster's generated SSH files are put away, a lab-style inventory
   (inventory/vagrant's settings with labkit_backend: lab: the non-root `vagrant` user with sudo and become) is
   written to a temporary directory, and the VMs are reached as a lab user reaches machines: through
   ~/.ssh/config (a marked block per VM address, removed at the end) with a key and known_hosts of the test's own.
   `fab up -i LAB` provisions them (the same cluster and settings: it must change nothing), then every fab task
   again, then `fab down -i LAB` (playbooks/remove.yml) must leave no labkit program, file, user or /etc/hosts
   block behind on any VM, and supervisord running;
5. `fab down` of the Vagrant cluster; a Ctrl-C in `fab up` while vagrant makes a VM must leave no VM; a VM vagrant
   lost (as a vagrant killed mid-`up` leaves it) must be removed by the next `fab down`;
6. `vagrant destroy -f` (a no-op after 5, unless a step failed), and the active inventory as it was.

Timings go to the console and to build/vm-test.json. Exits non-zero at the first failure (the VMs are destroyed
unless LABKIT_VM_TEST_KEEP=1).

VMs kept after a failure (LABKIT_VM_TEST_KEEP=1: the run prints their directory) can take the rest of the run
without another half hour of `vagrant up`, from the same checkout: `scripts/vm-test.py --from-kept DIR --phase
PHASE` (PHASES: the vagrant runs, the faults, the clock, the second provisioning, the lab path, the downs). Before a
phase on the Vagrant cluster it provisions the kept VMs with this checkout (`fab provision`), so that a fix made
since is what the phases see; the lab phase provisions them itself.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # a script run from scripts/: labkit is the repository's package

import yaml  # noqa: E402

from labkit import LabkitError, backends, inventory, ssh  # noqa: E402
from labkit.backends.vagrant import virsh  # noqa: E402

BOX = os.environ.get("LABKIT_VAGRANT_BOX", "labkit/bookworm64")
CLUSTER = "vmt"
SUBNET = "192.168.57"
FAB = str(REPO / ".venv" / "bin" / "fab")
TIMINGS: dict[str, float] = {}
RUNS = ["run-ring", "status", "run-celery --count 100", "run-math", "send-file --size 8", "check"]
PHASES = ("runs", "faults", "clock", "reprovision", "lab", "down")  # --phase: where a run on kept VMs starts
# Faults on real Debian kernels (issue 9), as the vagrant user through sudo: (fab command, exits 0?, words its
# output must hold). The VMs' kernel has sch_netem, which the netns box lacks, so a delay is tried here too.
FAULTS = [
    ("partition pyro1 pyro2", True, "pyro1"),
    ("run-ring", False, "ring hop pyro1 -> pyro2 failed"),
    ("heal", True, ""),
    ("run-ring", True, "gcd(48, 18) = 6"),
    ("fault stop pyro3:labnodes-ring", True, "pyro3"),
    ("run-ring", False, "pyro3"),
    ("heal", True, ""),
    ("run-ring", True, "gcd(48, 18) = 6"),
    ("impair pyro2 --delay 200", True, "delay 200ms"),
    ("run-ring", True, "gcd(48, 18) = 6"),
    ("impair sockserver --rate 20mbit --loss 2", True, "sockserver"),
    ("send-file --size 4", True, "matches on both hosts"),
    ("status", True, "faults in force"),
    ("heal", True, ""),
    # The name server keeps its names (ns_storage, written as the service user): back at once after a restart.
    ("fault stop broker:labnodes-nameserver", True, "broker"),
    ("run-ring", False, "name server"),
    ("fault start broker:labnodes-nameserver", True, "broker"),
    ("run-ring", True, "gcd(48, 18) = 6"),
    ("check", True, ""),
]


def step(name: str, cmd: list[str], env: dict[str, str], *, capture: bool = False, expect_ok: bool = True) -> str:
    print(f"\n=== vm-test: {name}: {' '.join(cmd)}", flush=True)
    t0 = time.monotonic()
    lines = []
    with subprocess.Popen(cmd, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE if capture else None,
                          stderr=subprocess.STDOUT if capture else None) as proc:
        for line in proc.stdout or ():  # shown as it comes, and kept for the caller
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line)
    TIMINGS[name] = round(time.monotonic() - t0, 1)
    out = "".join(lines)
    print(f"=== vm-test: {name}: {TIMINGS[name]:.1f}s, exit {proc.returncode}", flush=True)
    if (proc.returncode == 0) != expect_ok:
        raise SystemExit(f"vm-test: {name} exited {proc.returncode}, expected {'0' if expect_ok else 'non-zero'}")
    return out


def changes(output: str) -> int:
    return sum(int(m) for m in re.findall(r"\bchanged=(\d+)", output))


def vagrant_inventory(tmp: Path) -> Path:
    dest = tmp / "vagrant"
    shutil.copytree(REPO / "inventory" / "vagrant", dest)
    hosts = dest / "hosts.yml"
    text = re.sub(r"labkit_cluster: \w+", f"labkit_cluster: {CLUSTER}", hosts.read_text())
    hosts.write_text(text.replace("192.168.56.", f"{SUBNET}."))
    return dest


def lab_inventory(tmp: Path, vagrant_inv: Path) -> Path:
    """The same hosts as a lab inventory: the settings of inventory/vagrant (the sudo user `vagrant`, become,
    systemd, the slow-host timeouts) with the lab backend, so the VMs are reached as machines through ~/.ssh."""
    dest = tmp / "lab"
    (dest / "group_vars").mkdir(parents=True, exist_ok=True)  # exists when a run on kept VMs does this again
    shutil.copy(vagrant_inv / "hosts.yml", dest / "hosts.yml")
    settings = yaml.safe_load((vagrant_inv / "group_vars" / "all.yml").read_text())
    settings["labkit_backend"] = "lab"
    (dest / "group_vars" / "all.yml").write_text(
        "# written by scripts/vm-test.py: inventory/vagrant's settings (the reasons are there), backend lab\n"
        + yaml.safe_dump(settings, sort_keys=False))
    return dest


MARK = "# labkit vm-test: the test's VMs, as a lab user's ~/.ssh/config lists machines"


def ssh_user_config() -> Path:
    """The ~/.ssh/config ssh itself reads (from the password database, not $HOME)."""
    return Path(pwd.getpwuid(os.getuid()).pw_dir) / ".ssh" / "config"


def lab_ssh(tmp: Path, inv) -> None:
    """Reach the VMs as a lab user reaches machines: a block in ~/.ssh/config per address (a key and known_hosts
    of its own, in the test's directory), between markers, removed by forget_lab_ssh()."""
    dot = tmp / "lab-ssh"
    shutil.rmtree(dot, ignore_errors=True)  # a run on kept VMs (--from-kept) may do this again
    dot.mkdir(mode=0o700)
    shutil.copy(ssh.key_path(inv.cluster), dot / "id_ed25519")
    os.chmod(dot / "id_ed25519", 0o600)
    shutil.copy(ssh.known_hosts_path(inv.cluster), dot / "known_hosts")
    block = "".join(
        f"Host {h.address}\n  User vagrant\n  IdentityFile {dot / 'id_ed25519'}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {dot / 'known_hosts'}\n  StrictHostKeyChecking yes\n" for h in inv.hosts)
    config = ssh_user_config()
    config.parent.mkdir(mode=0o700, exist_ok=True)
    old = config.read_text() if config.exists() else ""
    config.write_text(f"{old}{MARK} (begin)\n{block}{MARK} (end)\n")
    os.chmod(config, 0o600)


def forget_lab_ssh() -> None:
    config = ssh_user_config()
    if config.exists():
        text = re.sub(rf"{re.escape(MARK)} \(begin\)\n.*?{re.escape(MARK)} \(end\)\n", "", config.read_text(),
                      flags=re.S)
        if text.strip():
            config.write_text(text)
        else:
            config.unlink()


def vagrant_down_and_left_behind(tmp: Path, vinv_path: Path, env: dict[str, str]) -> None:
    """`fab down` of the Vagrant cluster, then the two ways a VM can be left behind, on real vagrant and libvirt:

    - a Ctrl-C in `fab up` while vagrant makes a VM (the cluster's client alone): fab gives vagrant one SIGINT and
      waits for its clean-up, so no domain may be left (before, vagrant was killed mid clean-up and one was);
    - a domain vagrant lost, as a vagrant killed half-way through `vagrant up` leaves it (here: the client's
      domain defined again from its own XML after `fab down`): the next `fab down` must remove it."""
    domain = f"labkit-{CLUSTER}-client"
    xml = virsh("dumpxml", domain).stdout
    step("vagrant: fab down", [FAB, "down", "-i", str(vinv_path)], env, capture=True)

    name = "vagrant: Ctrl-C in fab up while vagrant makes a VM"
    one = tmp / "client-alone"
    shutil.copytree(vinv_path / "group_vars", one / "group_vars")
    (one / "hosts.yml").write_text(
        f"all:\n  vars:\n    labkit_cluster: {CLUSTER}\n    labkit_subnet: {SUBNET}.0/24\n  children:\n"
        f"    clients:\n      hosts:\n        client: {{ansible_host: {SUBNET}.40}}\n")
    print(f"\n=== vm-test: {name}", flush=True)
    t0 = time.monotonic()
    proc = subprocess.Popen([FAB, "up", "-i", str(one), "--quiet"], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    lines = []
    for line in proc.stdout:
        sys.stdout.write(line)
        lines.append(line)
        if "-- Command line" in line:  # the domain's definition is listed; libvirt is about to make it
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: fab's whole group
            break
    for line in proc.stdout:
        sys.stdout.write(line)
        lines.append(line)
    proc.wait()
    TIMINGS[name] = round(time.monotonic() - t0, 1)
    out = "".join(lines)
    print(f"=== vm-test: {name}: {TIMINGS[name]:.1f}s, exit {proc.returncode}", flush=True)
    if proc.returncode != 130 or "fab up: interrupted" not in out:
        raise SystemExit(f"vm-test: {name}: exit {proc.returncode}, want 130 and fab's line")
    if virsh("dominfo", domain).returncode == 0:
        raise SystemExit(f"vm-test: {name}: {domain} was left behind")

    defined = virsh("define", "/dev/stdin", text_in=xml)
    if defined.returncode != 0:
        raise SystemExit(f"vm-test: could not define {domain} again: {defined.stderr.strip()}")
    out = step("vagrant: fab down with a VM vagrant lost", [FAB, "down", "-i", str(vinv_path)], env, capture=True)
    if f"also removed {domain}" not in out or virsh("dominfo", domain).returncode == 0:
        raise SystemExit(f"vm-test: fab down did not remove {domain}, which vagrant had lost")


def every_program_shows(env: dict[str, str], label: str) -> None:
    """`fab status --json` lists RUNNING programs on every host of a group that runs any (every group but clients):
    a look at supervisord that gave up after 3 s on these VMs showed none, and the status step still passed."""
    out = step(f"{label}: fab status --json", [FAB, "status", "--json"], env, capture=True)
    start = re.search(r"^\{", out, re.MULTILINE)  # the capture merges stderr: the report is the line-led object
    if start is None:
        raise SystemExit(f"vm-test: {label}: fab status --json printed no JSON")
    for h in json.JSONDecoder().raw_decode(out, start.start())[0]["hosts"]:
        progs = {p: s for p, s in h["programs"].items() if p.startswith("labnodes-")}
        if set(h["groups"]) - {"clients"} and (not progs or set(progs.values()) != {"RUNNING"}):
            raise SystemExit(f"vm-test: fab status shows {h['host']} ({', '.join(h['groups'])}) with programs "
                             f"{progs or 'none'}: {h.get('error') or 'no error said'}")


def interrupted_run_stops_on_the_host(env: dict[str, str]) -> None:
    """A Ctrl-C in `fab run-celery` ends fab at once, and the batch on the client VM with it, through sudo:
    `labnodes --tethered` stops when its stdin ends with fab's SSH session."""
    name = "vagrant: Ctrl-C in fab run-celery"
    batch = ["ssh", "-F", str(ssh.config_path(CLUSTER)), "client", "pgrep -f 'bin/labnodes .*celery batch'"]

    def running() -> bool:
        return subprocess.run(batch, stdin=subprocess.DEVNULL, capture_output=True).returncode == 0

    print(f"\n=== vm-test: {name}", flush=True)
    proc = subprocess.Popen([FAB, "run-celery", "--count", "10000"], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while not running():
        if proc.poll() is not None or time.monotonic() > deadline:
            out = proc.communicate()[0] if proc.poll() is not None else ""
            raise SystemExit(f"vm-test: {name}: the batch never ran on the client ({proc.poll()=}):\n{out[-2000:]}")
        time.sleep(0.5)
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: fab's whole group
    out = proc.communicate(timeout=120)[0]
    TIMINGS[f"{name}: fab exits"] = round(time.monotonic() - t0, 1)
    if proc.returncode != 130 or "fab run-celery: interrupted" not in out:
        raise SystemExit(f"vm-test: {name}: exit {proc.returncode}, want 130 and fab's line:\n{out[-2000:]}")
    while running():
        if time.monotonic() > t0 + 60:
            raise SystemExit(f"vm-test: {name}: the batch still runs on the client a minute later")
        time.sleep(0.5)
    TIMINGS[f"{name}: the batch gone from the client"] = round(time.monotonic() - t0, 1)
    print(f"=== vm-test: {name}: fab exited 130 in {TIMINGS[f'{name}: fab exits']:.1f}s, the batch gone in "
          f"{TIMINGS[f'{name}: the batch gone from the client']:.1f}s", flush=True)


def a_clock_set_ahead(env: dict[str, str]) -> None:
    """worker1's real clock set 5 minutes ahead (date -s, through sudo): `fab check` fails host.clock on worker1,
    and `fab run-celery` shows what it breaks: worker1 drops the client's jobs as expired. Then set back."""
    def shift(seconds: int) -> None:
        cmd = f"sudo date -s @$(( $(date +%s) + ({seconds}) ))"
        subprocess.run(["ssh", "-F", str(ssh.config_path(CLUSTER)), "worker1", cmd], stdin=subprocess.DEVNULL,
                       capture_output=True, check=True)

    shift(300)
    try:
        out = step("vagrant: fab check, worker1's clock 5 minutes ahead", [FAB, "check"], env, capture=True,
                   expect_ok=False)
        failing = set(re.findall(r"^\s*FAIL\s+(\S+ on \S+):", out, re.M))
        if failing != {"host.clock on worker1"} or "s ahead of the control machine's clock" not in out:
            raise SystemExit(f"vm-test: with worker1's clock ahead, fab check failed {failing or 'nothing'}")
        out = step("vagrant: fab run-celery, worker1's clock 5 minutes ahead", [FAB, "run-celery", "--count", "20"],
                   env, capture=True, expect_ok=False)
        if "the worker found the job past its expiry" not in out:
            raise SystemExit("vm-test: worker1 ahead: fab run-celery did not say its jobs were found expired")
    finally:
        shift(-300)


def main() -> int:
    # The parser also makes --help (or a typo) say what this does rather than start half an hour of VMs.
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from-kept", metavar="DIR", type=Path,
                        help="go on with the VMs a failed run kept (LABKIT_VM_TEST_KEEP=1) in DIR, which it printed")
    parser.add_argument("--phase", choices=PHASES, default=PHASES[0],
                        help=f"with --from-kept: the phase to start at (default: {PHASES[0]})")
    args = parser.parse_args()
    if args.phase != PHASES[0] and args.from_kept is None:
        parser.error("--phase goes with --from-kept (a whole run starts at the beginning)")
    start = PHASES.index(args.phase)
    t_all = time.monotonic()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABKIT_")}
    env.update(VAGRANT_CHECKPOINT_DISABLE="1", LABKIT_VAGRANT_BOX=BOX, LABKIT_VAGRANT_MGMT_MODE="none")
    previous_active = inventory.ACTIVE_FILE.read_text() if inventory.ACTIVE_FILE.exists() else None
    if args.from_kept is None:
        boxes = subprocess.run(["vagrant", "box", "list"], capture_output=True, text=True).stdout
        if not re.search(rf"^{re.escape(BOX)}\s.*libvirt", boxes, re.M):
            step("box build", ["bash", "scripts/vm-box.sh"], env)
        tmp = Path(tempfile.mkdtemp(prefix="labkit-vm-test-"))
        vinv_path = vagrant_inventory(tmp)
    else:
        tmp = args.from_kept.resolve()
        vinv_path = tmp / "vagrant"
        if not (vinv_path / "hosts.yml").is_file() or not (tmp / "dot-vagrant").is_dir():
            parser.error(f"{tmp} is not the directory of a run that kept its VMs (no vagrant/hosts.yml, dot-vagrant)")
    env.update(LABKIT_VAGRANT_INVENTORY=str(vinv_path), VAGRANT_DOTFILE_PATH=str(tmp / "dot-vagrant"))
    vinv = inventory.load(vinv_path)
    failed = True
    try:
        if args.from_kept is None:
            vagrant_up(vinv_path, env)
        # The runs name the inventory, so that another labkit run in this checkout (the cluster tests restore
        # .labkit/active when they end) cannot point them elsewhere half-way.
        env["LABKIT_INVENTORY"] = str(vinv_path)
        if args.from_kept is not None and start < PHASES.index("lab"):
            step("kept VMs: fab provision (this checkout's build)", [FAB, "provision", "--quiet"], env)
        if start <= PHASES.index("runs"):
            vagrant_runs(env)
        if start <= PHASES.index("faults"):
            faults(env)
        if start <= PHASES.index("clock"):
            a_clock_set_ahead(env)
        if start <= PHASES.index("reprovision"):
            again = step("vagrant: fab provision (second time)", [FAB, "provision"], env, capture=True)
            if changes(again):
                raise SystemExit(f"vm-test: the second provisioning changed {changes(again)} things (want 0)")
        if start <= PHASES.index("lab"):
            lab_path(tmp, vinv, vinv_path, env)
        vagrant_down_and_left_behind(tmp, vinv_path, env)
        failed = False
    finally:
        forget_lab_ssh()
        if failed and os.environ.get("LABKIT_VM_TEST_KEEP"):
            print(f"vm-test: VMs kept (LABKIT_VM_TEST_KEEP) in {tmp}\n"
                  f"  go on from a phase ({', '.join(PHASES)}), in this checkout: "
                  f"LABKIT_VM_TEST_KEEP=1 {sys.executable} {Path(__file__).relative_to(REPO)} --from-kept {tmp} "
                  f"--phase PHASE\n  or destroy them: env "
                  + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items() if k.startswith(("LABKIT_", "VAGRANT_")))
                  + " vagrant destroy -f")  # the variables vagrant ran with, as main() set them
        else:
            step("vagrant destroy -f", ["vagrant", "destroy", "-f"], env)
            shutil.rmtree(tmp, ignore_errors=True)
            try:  # its key, secrets and locks in .labkit/vmt/ go with the VMs (they were left there after each run)
                backends.forget(SimpleNamespace(cluster=CLUSTER), echo=lambda line: print(f"vm-test: {line}"))
            except LabkitError as exc:  # a lock still held: say so, and let the run's own outcome stand
                print(f"vm-test: {exc}")
        if previous_active is None:
            inventory.ACTIVE_FILE.unlink(missing_ok=True)
        else:
            inventory.ACTIVE_FILE.write_text(previous_active)
        TIMINGS["total"] = round(time.monotonic() - t_all, 1)
        report = REPO / "build" / "vm-test.json"
        report.parent.mkdir(exist_ok=True)
        report.write_text(json.dumps({"ok": not failed, "seconds": TIMINGS}, indent=2) + "\n")
        print("\nvm-test timings (s):")
        for name, secs in TIMINGS.items():
            print(f"  {secs:8.1f}  {name}")
        print(f"vm-test: {'FAILED' if failed else 'passed'}; timings in {report}")
    return 0


def vagrant_up(vinv_path: Path, env: dict[str, str]) -> None:
    out = step("vagrant up (boot + provisioning)", ["vagrant", "up"], env, capture=True)
    p = re.search(r"provisioned in (\d+)s", out)
    if p:
        TIMINGS["of which: provisioning (site.yml)"] = float(p.group(1))
        TIMINGS["of which: VMs made, booted, accepting SSH"] = round(
            TIMINGS["vagrant up (boot + provisioning)"] - float(p.group(1)), 1)
    # `vagrant up` made the copy the active inventory (what lets `fab run-ring` go without a flag)
    active = inventory.ACTIVE_FILE.read_text().strip()
    if Path(active) != vinv_path:
        raise SystemExit(f"vm-test: after vagrant up the active inventory is {active}, not {vinv_path}")


def vagrant_runs(env: dict[str, str]) -> None:
    for run in RUNS:
        step(f"vagrant: fab {run}", [FAB, *run.split()], env, capture=run != "check")
        if run == "run-ring" and "vagrant up (boot + provisioning)" in TIMINGS:
            TIMINGS["vagrant up to the first ring lap"] = round(
                TIMINGS["vagrant up (boot + provisioning)"] + TIMINGS["vagrant: fab run-ring"], 1)
    every_program_shows(env, "vagrant")
    interrupted_run_stops_on_the_host(env)


def faults(env: dict[str, str]) -> None:
    for i, (run, ok, words) in enumerate(FAULTS, 1):
        out = step(f"vagrant faults {i:2d}: fab {run}", [FAB, *run.split()], env, capture=True, expect_ok=ok)
        if words not in out:
            raise SystemExit(f"vm-test: `fab {run}` did not say {words!r}")
        if run.startswith("impair pyro2 --delay"):
            lap = json.loads(step("vagrant faults: fab run-ring --json", [FAB, "run-ring", "--json"], env,
                                  capture=True))["lap_ms"][0]
            TIMINGS["ring lap with pyro2 delayed 200 ms (ms)"] = round(lap, 1)
            if lap < 200:
                raise SystemExit(f"vm-test: a lap through a host delayed 200 ms took {lap:.1f} ms")


def lab_path(tmp: Path, vinv, vinv_path: Path, env: dict[str, str]) -> None:
    """The lab path: forget the Vagrant cluster's SSH files; reach the VMs as a lab user's ~/.ssh would."""
    lab_ssh(tmp, vinv)
    ssh.close_connections([vinv.subnet], [ssh.control_dir(vinv.cluster), *ssh.ansible_control_dirs()])
    ssh.remove_client_config(vinv.cluster)
    lab = lab_inventory(tmp, vinv_path)
    lab_env = {k: v for k, v in env.items() if k != "LABKIT_INVENTORY"}  # `fab up -i LAB` makes it active
    up = step("lab: fab up -i LAB (provisioning again)", [FAB, "up", "-i", str(lab), "--quiet"], lab_env,
              capture=True)
    m = re.search(r"provisioning [\d.]+s \((\d+) changes\)", up)
    if m and int(m.group(1)):
        raise SystemExit(f"vm-test: provisioning through the lab inventory changed {m.group(1)} things (want 0)")
    for run in RUNS:
        step(f"lab: fab {run}", [FAB, *run.split()], lab_env, capture=run != "check")
    every_program_shows(lab_env, "lab")
    step("lab: fab down -i LAB (remove.yml)", [FAB, "down", "-i", str(lab)], lab_env, capture=True)
    for host in vinv.hosts:  # every machine: each had a different set of programs
        left = subprocess.run(
            ["ssh", "-o", "BatchMode=yes", host.address,
             "ls -d /opt/labnodes /etc/labnodes /var/log/labnodes /var/lib/labnodes /usr/local/bin/labnodes "
             "2>/dev/null; "
             "ls /etc/supervisor/conf.d/ | grep labnodes; getent passwd labnodes; "
             "grep 'labkit cluster hosts' /etc/hosts; "
             "systemctl is-active supervisor >/dev/null || echo supervisor not running; true"],
            capture_output=True, text=True, env=lab_env)
        if left.returncode != 0 or left.stdout.strip():
            raise SystemExit(f"vm-test: after fab down, {host.name} is not as it was: "
                             f"{left.stdout.strip() or left.stderr.strip()}")
    print(f"vm-test: nothing of labkit left on the {len(vinv.hosts)} machines, supervisord still running there")


if __name__ == "__main__":
    sys.exit(main())
