"""The one host list: load an Ansible inventory into a small object, and find the active one.

`load(path)` runs `ansible-inventory -i PATH --list` (the same parser Ansible uses, so group_vars, ranges and
every inventory format work; its listing is kept in .labkit/inventories/ while nothing it read changes) and
returns an `Inventory`:

- `cluster`  (`labkit_cluster`): names the bridge, namespaces and `.labkit/<cluster>/`; 1-6 characters of
  [a-z0-9], because Linux interface names are at most 15 characters.
- `subnet`   (`labkit_subnet`, e.g. `10.77.1.0/24`): every `ansible_host` lies inside it, is unique, and is neither
  the network address, the broadcast address nor the first address (the control box takes that one).
- `backend`  (`labkit_backend`, from the backend's group_vars): `netns`, `vagrant`, `lab`, ...
- `hosts`    in file order, each with its name, address (`ansible_host`) and all its variables.
- `groups`   group name -> host names in file order (`ungrouped` and `all` left out).

A bad inventory raises `InventoryError` with one line saying what to fix.

`active_inventory()` is the inventory Fabric and pytest act on: `$LABKIT_INVENTORY` if set, else the path that
the last `up` recorded in `.labkit/active`, else `inventory/netns`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import ipaddress
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from labkit import REPO, STATE, LabkitError, write_atomic

DEFAULT_INVENTORY = REPO / "inventory" / "netns"
ACTIVE_FILE = STATE / "active"
CLUSTER_RE = re.compile(r"[a-z0-9]{1,6}")
HOST_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")  # also a valid hostname and namespace name part
PORT_RE = re.compile(r"[0-9]{1,5}")


class InventoryError(LabkitError):
    """The inventory cannot be read or breaks a rule above."""


PRIVATE_NETWORKS = tuple(map(ipaddress.IPv4Network, ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")))


def check_box_subnet(subnet: ipaddress.IPv4Network, name: str = "subnet") -> None:
    """The rule for a subnet labkit makes on this box (a netns cluster's, `fab new-inventory`'s): private address
    space (RFC 1918). The box routes the subnet to the cluster's bridge, so a public one takes those addresses
    from the box's view of the internet: 8.8.8.0/24 would hide Google's DNS servers behind the cluster."""
    if not any(subnet.subnet_of(private) for private in PRIVATE_NETWORKS):
        raise InventoryError(f"{name} {subnet} is not private address space: a cluster on this box takes a subnet "
                             "of 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16 (RFC 1918), so that it hides no "
                             "address of the internet from the box")


@dataclass(frozen=True)
class Host:
    name: str
    address: str  # ansible_host
    vars: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def user(self) -> str | None:
        return self.vars.get("ansible_user")

    @property
    def sudo(self) -> bool:
        """Whether labkit's commands on this host go through sudo: a non-root login with ansible_become."""
        become = str(self.vars.get("ansible_become", False)).lower() in ("1", "true", "yes")
        return become and (self.user or "root") != "root"

    @property
    def python(self) -> str:
        """The host's python, as Ansible runs it: what runs labnodes/selftest.py there (fab check, fab status)."""
        return self.vars.get("ansible_python_interpreter") or "python3"


@dataclass(frozen=True)
class Inventory:
    path: Path
    cluster: str
    subnet: ipaddress.IPv4Network | None
    backend: str
    hosts: tuple[Host, ...]
    groups: dict[str, tuple[str, ...]]

    @property
    def gateway(self) -> str:
        """The subnet's first address: the control box's address on the cluster network."""
        if self.subnet is None:
            raise InventoryError(f"{self.path}: labkit_subnet is not set")
        return str(self.subnet.network_address + 1)

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise InventoryError(f"{self.path}: no host named {name!r}")

    def group(self, name: str) -> list[Host]:
        if name == "all":
            return list(self.hosts)
        if name not in self.groups:
            raise InventoryError(f"{self.path}: no group named {name!r}")
        return [self.host(h) for h in self.groups[name]]


def _ansible_inventory() -> str:
    local = REPO / ".venv" / "bin" / "ansible-inventory"
    if local.exists():
        return str(local)
    found = shutil.which("ansible-inventory")
    if not found:
        raise InventoryError("ansible-inventory not found: run `make setup` (it installs ansible-core in .venv)")
    return found


def _host_order(data: dict) -> tuple[list[str], dict[str, tuple[str, ...]]]:
    """Host names in file order and the groups, from `--list` JSON (groups keep file order in `children`)."""
    order: list[str] = []
    groups: dict[str, tuple[str, ...]] = {}
    seen_groups: set[str] = set()

    def walk(group: str) -> None:
        if group in seen_groups:
            return
        seen_groups.add(group)
        entry = data.get(group, {})
        hosts = tuple(entry.get("hosts", ()))
        if group not in ("all", "ungrouped"):
            groups[group] = hosts
        for h in hosts:
            if h not in order:
                order.append(h)
        for child in entry.get("children", ()):
            walk(child)

    walk("all")
    for h in data.get("_meta", {}).get("hostvars", {}):  # hosts no group reached (should not happen)
        if h not in order:
            order.append(h)
    return order, groups


def _check_port(path: Path, host: str, var: str, value) -> None:
    """A *_port variable (ansible_port, labnodes_math_port, ...) is a port the hosts can listen on: 1-65535.

    Checked here, before anything runs: a role would write 99999 into every host's settings and each program
    would refuse to start, and the control side's own int() of a bad ansible_port ended in a traceback. A Jinja
    template is left to Ansible, which renders it."""
    if isinstance(value, str) and "{{" in value:
        return
    text = str(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else ""
    if not PORT_RE.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise InventoryError(f"{path}: host {host}: {var} {value!r} is not a port (a whole number 1-65535)")


MAX_WHY = 300  # characters of Ansible's reason kept in the one line


def _yaml_error_at(path: str) -> str:
    """Where PyYAML stops in the file, as " (line L, column C)"; "" if it reads the file, or cannot."""
    import yaml

    from labkit import options

    try:
        yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        return f" ({options.yaml_place(exc)})" if options.yaml_place(exc) else ""
    except (OSError, UnicodeDecodeError):
        pass
    return ""


def _why_unparsed(stderr: str) -> str | None:
    """Why ansible-inventory could not read a file, from its warnings (its error says only "No inventory was
    parsed"): the file, the reason of the plugin meant for it (the YAML plugins for .yml and .yaml, ini for the
    rest; each plugin tries every file) and where in the file, when Ansible says."""
    files = re.findall(r"Unable to parse (\S+) as an inventory source", stderr)
    failures = re.findall(r"Failed to parse inventory with '(\w+)' plugin: (.+)", stderr)
    if not files or not failures:
        return None
    yaml_file = files[0].endswith((".yml", ".yaml"))
    _, why = next(((p, w) for p, w in failures if (p != "ini") == yaml_file), failures[0])
    at = re.search(r"^Origin: (\S+?):(\d+)(?::(\d+))?\s*$", stderr, re.M)
    where = ""
    if at:
        where = f" (line {at[2]}" + (f", column {at[3]}" if at[3] else "") + ")"
        where = where if at[1] == files[0] else f" (at {at[0][len('Origin: '):].strip()})"
    elif yaml_file:  # Ansible's yaml plugin does not say where (its `auto` plugin did; ansible.cfg leaves it off)
        where = _yaml_error_at(files[0])
    why = why.strip()
    why = why if len(why) <= MAX_WHY else why[:MAX_WHY] + "..."  # it can quote a whole line of a binary file
    return f"{files[0]} is not a valid inventory: {why}{where}"


def parse(path: Path, data: dict) -> Inventory:
    """Build and validate an Inventory from `ansible-inventory --list` JSON."""
    order, groups = _host_order(data)
    hostvars = data.get("_meta", {}).get("hostvars", {})
    if not order:
        raise InventoryError(f"{path}: the inventory lists no hosts")

    def common(var: str) -> object:
        values = {json.dumps(hostvars.get(h, {}).get(var)) for h in order}
        if len(values) > 1:
            raise InventoryError(f"{path}: {var} differs between hosts; set it once, under all: vars")
        return hostvars.get(order[0], {}).get(var)

    cluster = common("labkit_cluster")
    if cluster is None:
        raise InventoryError(f"{path}: labkit_cluster is not set (put it under all: vars)")
    if not isinstance(cluster, str) or not CLUSTER_RE.fullmatch(cluster):
        raise InventoryError(
            f"{path}: labkit_cluster {cluster!r} must be 1-6 characters of [a-z0-9] "
            "(it becomes part of interface names, which Linux limits to 15 characters)"
        )
    backend = common("labkit_backend")
    if not backend:
        raise InventoryError(f"{path}: labkit_backend is not set (put it in the inventory's group_vars/all.yml)")
    raw_subnet = common("labkit_subnet")
    subnet = None
    if raw_subnet is not None:
        try:
            subnet = ipaddress.IPv4Network(str(raw_subnet))
        except ValueError as exc:
            raise InventoryError(f"{path}: labkit_subnet {raw_subnet!r} is not an IPv4 network ({exc})") from None
        if subnet.prefixlen > 30:
            raise InventoryError(f"{path}: labkit_subnet {subnet} is too small (at most /30)")

    hosts = []
    owner: dict[str, str] = {}
    for name in order:
        hv = hostvars.get(name, {})
        if not HOST_RE.fullmatch(name):
            raise InventoryError(
                f"{path}: host name {name!r} must be letters, digits, '-' or '_' (it becomes the hostname)"
            )
        address = str(hv.get("ansible_host", name))
        if subnet is not None:
            try:
                ip = ipaddress.IPv4Address(address)
            except ValueError:
                raise InventoryError(f"{path}: host {name}: ansible_host {address!r} is not an IPv4 address") from None
            if ip not in subnet:
                raise InventoryError(f"{path}: host {name}: address {ip} is outside labkit_subnet {subnet}")
            if ip == subnet.network_address + 1:
                raise InventoryError(
                    f"{path}: host {name}: address {ip} is the subnet's first address, which the control box takes"
                )
            if ip in (subnet.network_address, subnet.broadcast_address):
                raise InventoryError(f"{path}: host {name}: address {ip} is the network or broadcast address")
        for var, value in hv.items():
            if var.endswith("_port"):
                _check_port(path, name, var, value)
        if address in owner:
            raise InventoryError(f"{path}: hosts {owner[address]} and {name} have the same address {address}")
        owner[address] = name
        hosts.append(Host(name=name, address=address, vars=dict(hv)))
    return Inventory(
        path=path, cluster=cluster, subnet=subnet, backend=str(backend), hosts=tuple(hosts), groups=groups
    )


def load(path: str | os.PathLike | None = None) -> Inventory:
    """Load and validate the inventory at `path` (a file or a directory); default: the active inventory."""
    given = path is not None
    path = Path(path) if given else active_inventory()
    path = path.absolute()
    if not path.exists():
        raise InventoryError(f"inventory {path} does not exist" + ("" if given else _whence_active()))
    if path.is_dir() and not any(p.is_file() and not p.name.startswith(".") for p in path.iterdir()):
        raise InventoryError(f"{path}: no inventory file in this folder (labkit's inventories list their hosts "
                             "in hosts.yml)")  # ansible-inventory says only "No inventory was parsed"
    return parse(path, _listed(path))


# ansible-inventory takes 0.7 s of CPU (it imports Ansible), on every fab command. With only the yaml and ini plugins
# (ansible.cfg) what it prints depends on nothing but the files it reads, ansible.cfg, ANSIBLE_* and Ansible's
# version, so a listing is kept per inventory (.labkit/inventories/) and used again while all of those are the same.
CACHE = STATE / "inventories"
CACHE_MAX_BYTES = 4 << 20  # an inventory folder holding more (a mistaken -i ~) is listed every time


def _watched(path: Path) -> list[Path] | None:
    """The files ansible-inventory reads for `path`: a folder's every file, or a file and the group_vars and
    host_vars beside it; None when they hold more than CACHE_MAX_BYTES (too much to read on every command)."""
    roots = [path] if path.is_dir() else [path.parent / "group_vars", path.parent / "host_vars"]
    files = [] if path.is_dir() else [path]
    size = path.stat().st_size if path.is_file() else 0
    for root in roots:
        for folder, _, names in os.walk(root):
            for name in names:
                files.append(Path(folder, name))
                size += files[-1].stat().st_size
                if size > CACHE_MAX_BYTES:
                    return None
    return sorted(files)


def _cache_key(path: Path) -> str | None:
    """What ansible-inventory's listing of `path` depends on, as a digest (of the files' contents: an edit within
    the file system's timestamp resolution changes it too); None when it cannot be known."""
    try:
        files = _watched(path)
        if files is None:
            return None
        digest = hashlib.sha256()
        for part in [_ansible_version(), _ansible_inventory(), (REPO / "ansible.cfg").read_text(),
                     *sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith("ANSIBLE_"))]:
            digest.update(f"{part}\0".encode())
        for f in files:
            digest.update(f"{f}\0".encode() + f.read_bytes() + b"\0")
    except (OSError, LabkitError):
        return None
    return digest.hexdigest()


def _ansible_version() -> str:
    try:
        return importlib.metadata.version("ansible-core")
    except importlib.metadata.PackageNotFoundError:  # another venv's ansible-inventory: its own file's identity
        st = Path(_ansible_inventory()).stat()
        return f"{st.st_size} {st.st_mtime_ns}"


def _listed(path: Path) -> dict:
    """`ansible-inventory -i PATH --list` as JSON: the kept listing when nothing it depends on changed."""
    key = _cache_key(path)
    entry = CACHE / f"{hashlib.sha256(str(path).encode()).hexdigest()[:24]}.json"
    if key:
        try:
            kept = json.loads(entry.read_text())
            if kept["key"] == key:
                return kept["list"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
    proc = subprocess.run(
        [_ansible_inventory(), "-i", str(path), "--list"],
        stdin=subprocess.DEVNULL,  # not fab's: Ansible refuses to start on a non-blocking one (an ssh beside it)
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "ANSIBLE_INVENTORY_UNPARSED_FAILED": "true", "ANSIBLE_NOCOLOR": "1",
             "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")},  # its inventory plugins (no scripts), whatever the user's
    )
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "ERROR" in ln), lines[-1] if lines else "no output")
        raise InventoryError(_why_unparsed(proc.stderr) or f"{path}: ansible-inventory failed: {detail}")
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise InventoryError(f"{path}: ansible-inventory printed no JSON ({exc})") from None
    if key:
        _keep(entry, {"path": str(path), "key": key, "list": data})
    return data


def _keep(entry: Path, kept: dict) -> None:
    """Write a listing (0600: inventories may hold passwords), and drop those of inventories that are gone."""
    try:
        CACHE.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(entry, json.dumps(kept), mode=0o600)
        for other in CACHE.glob("*.json"):
            try:
                if not Path(json.loads(other.read_text())["path"]).exists():
                    other.unlink()
            except (OSError, ValueError, KeyError, TypeError):
                other.unlink(missing_ok=True)
    except OSError:
        pass  # a listing not kept is listed again next time


def active_inventory() -> Path:
    """$LABKIT_INVENTORY, else the path recorded by the last `up`, else inventory/netns."""
    env = os.environ.get("LABKIT_INVENTORY")
    if env:
        return Path(env).absolute()
    try:
        recorded = ACTIVE_FILE.read_text().strip()
    except FileNotFoundError:
        recorded = ""
    return Path(recorded) if recorded else DEFAULT_INVENTORY


def _whence_active() -> str:
    """Why the active inventory is the one it is, for an error about it (it may be an inventory since deleted)."""
    if os.environ.get("LABKIT_INVENTORY"):
        return " ($LABKIT_INVENTORY names it)"
    if ACTIVE_FILE.exists():
        return (f" (the active inventory, recorded by the last `fab up` in {ACTIVE_FILE}: give -i INVENTORY, or "
                "make another one active with `fab up -i INVENTORY`)")
    return ""


def record_active(path: str | os.PathLike) -> None:
    """Remember `path` as the active inventory (called by whatever brought a cluster up)."""
    STATE.mkdir(exist_ok=True)
    write_atomic(ACTIVE_FILE, f"{Path(path).absolute()}\n")


def relocate(src: str | os.PathLike, dest: str | os.PathLike, cluster: str, third_octet: int) -> Path:
    """Copy a netns inventory (hosts.yml + group_vars) to `dest` as another cluster: same hosts and groups, the
    cluster renamed and every 10.77.N. address moved to 10.77.<third_octet>. (tests and benchmarks use this
    so they never touch an instructor's own cluster)."""
    dest = Path(dest)
    shutil.copytree(src, dest)
    hosts = dest / "hosts.yml"
    text = re.sub(r"labkit_cluster: \w+", f"labkit_cluster: {cluster}", hosts.read_text())
    hosts.write_text(re.sub(r"\b10\.77\.\d+\.", f"10.77.{third_octet}.", text))
    return dest


def sized_shape(ring: int, workers: int) -> str:
    """How `fab new-inventory` names a sized cluster's shape: "a ring of 3, 2 workers", "no ring, 1 worker"."""
    return f"{f'a ring of {ring}' if ring else 'no ring'}, {workers} worker{'' if workers == 1 else 's'}"


def sized_hosts_yml(cluster: str, subnet: str, ring: int = 3, workers: int = 2) -> str:
    """hosts.yml of a netns cluster shaped like inventory/netns, with `ring` ring hosts and `workers` workers.

    Addresses in the /24 `subnet`: broker .10, sockserver .30, client .40, workers from .100, the ring from .200
    (a ring of more than 55 starts lower, so that it ends at .254). A ring of 0 leaves the `ring` group out, for a
    course on Celery or sockets alone (the name server stays on the broker: every host's settings name one).
    Pure: checked, not written.
    """
    if not CLUSTER_RE.fullmatch(cluster):
        raise InventoryError(f"cluster name {cluster!r}: use 1-6 characters of [a-z0-9]")
    try:
        net = ipaddress.IPv4Network(subnet)
    except ValueError as exc:
        raise InventoryError(f"subnet {subnet!r}: {exc}") from None
    if net.prefixlen != 24:
        raise InventoryError(f"subnet {subnet}: use a /24 (a sized inventory numbers hosts .10 to .254)")
    check_box_subnet(net)
    first_ring = min(200, 255 - ring)
    if ring < 0 or workers < 1 or 100 + workers > first_ring:
        raise InventoryError(f"--ring {ring} --workers {workers}: at least one worker, a ring of 0 (none) or "
                             "more, and at most 155 between them (the workers take .100 up, the ring ends at .254 "
                             "of one /24)")
    base = str(net.network_address).rsplit(".", 1)[0]

    def block(names_octets) -> str:
        return "".join(f"        {name}: {{ansible_host: {base}.{octet}}}\n" for name, octet in names_octets)

    order = " -> ".join(f"pyro{i}" for i in range(1, min(ring, 3) + 1)) + (" -> ..." if ring > 3 else "")
    ring_group = (f"    ring:            # in this order: {order} -> pyro1\n      hosts:\n" +
                  block((f"pyro{i}", first_ring - 1 + i) for i in range(1, ring + 1))) if ring else ""
    total = ring + workers + 3
    return (
        f"# A netns cluster made by `fab new-inventory`: {sized_shape(ring, workers)}.\n"
        "all:\n  vars:\n"
        f"    labkit_cluster: {cluster}\n    labkit_subnet: {net}\n"
        # The last step of provisioning starts the programs of every host at once, all on this box's cores:
        # 100 hosts are some 250 Python programs, and Flower then answered after more than the default 30 s.
        f"    common_supervise_timeout: {max(30, 2 * total)}  # seconds: 2 per host, as all start at once\n"
        "  children:\n"
        "    brokers:\n      hosts:\n" + block([("broker", 10)]) +
        "    nameservers:\n      hosts:\n        broker:\n"
        "    workers:\n      hosts:\n" + block((f"worker{i}", 99 + i) for i in range(1, workers + 1)) +
        ring_group +
        "    sockservers:\n      hosts:\n" + block([("sockserver", 30)]) +
        "    clients:\n      hosts:\n" + block([("client", 40)])
    )


def new_sized(dest: str | os.PathLike, cluster: str, subnet: str, ring: int = 3, workers: int = 2) -> Path:
    """Write a netns inventory (sized_hosts_yml + inventory/netns's group_vars) to the new directory `dest`."""
    text = sized_hosts_yml(cluster, subnet, ring, workers)
    dest = Path(dest)
    if dest.exists():
        raise InventoryError(f"{dest} already exists: choose a new directory")
    above = next((a for a in dest.absolute().parents if a.exists()), None)
    if above is not None and not above.is_dir():
        raise InventoryError(f"{dest}: {above} is a file, not a folder")
    tmp = None
    try:  # made beside it, then renamed: a failure half-way (or a Ctrl-C) leaves no half inventory to bring up
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        shutil.copytree(DEFAULT_INVENTORY / "group_vars", tmp / "group_vars")
        (tmp / "hosts.yml").write_text(text)
        tmp.chmod(0o755)
        tmp.rename(dest)
    except BaseException as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise InventoryError(f"{dest}: cannot write the inventory there: {exc.strerror}") from None
        raise
    return dest
