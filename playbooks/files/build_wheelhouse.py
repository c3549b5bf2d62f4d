"""Build the wheelhouse the hosts install labnodes from, and pack it as one reproducible tar archive.

Run by the first play of site.yml, inside Ansible's worker (playbooks/action_plugins/labkit_wheelhouse.py calls
main()), or by hand with the control venv's Python: `build_wheelhouse.py REPO WHEELHOUSE`, which prints main()'s
result as one JSON line: {"changed": bool, "archive": path, "sha256": hex, "rebuilt": [...]}. The sha256 is also
written beside the archive (wheelhouse.tar.sha256), where the labnodes role reads it.

The archive holds the wheels and manifest.json, which says what a host installs (the labnodes role's
install_venv.py reads it): {"installer": the wheel of PyPA's installer, "install": {"": the wheels of labnodes and
its dependencies, EXTRA: the same for labnodes[EXTRA]}}. The dependency graph is resolved here, once, by pip (the
wheels are pinned) and walked from the wheels' own metadata; a host only unpacks wheels, with no resolver and no
pip.

Nothing is rebuilt when nothing changed, so a second provisioning copies and installs nothing:
- dependencies (every wheel but labnodes, plus installer to install them with) are rebuilt only when
  pyproject.toml or the control venv's package versions change; they are pinned to the control venv's versions,
  so the hosts run exactly what was tested here;
- the labnodes wheel is rebuilt only when a file of the package (or pyproject.toml) changes; it is built from a
  clean copy of the source (no stale build/ directory) with SOURCE_DATE_EPOCH fixed;
- the labnodes wheel is built once per run, also when the dependencies need it;
- the archive (sorted names, zero times and owners) changes only when a wheel does, and is not packed again while
  it is the one state.json records;
- concurrent runs (two provisionings at once) take turns on a lock file in the wheelhouse.
"""

from __future__ import annotations

import email.parser
import fcntl
import hashlib
import importlib.metadata
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

ARCHIVE = "wheelhouse.tar"
MANIFEST = "manifest.json"
STATE = "state.json"
INSTALLER = "installer"  # PyPA's wheel installer: what the hosts install with
EXTRAS = "flower"  # the wheelhouse holds every extra; each host installs only the ones it needs
SOURCE_DATE_EPOCH = "315532800"  # 1980-01-01, the earliest time a zip file can hold


def source_files(repo: Path) -> list[Path]:
    pkg = repo / "labnodes"
    files = [p for p in pkg.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    return sorted([repo / "pyproject.toml", *files])


def digest(repo: Path, paths: list[Path], extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for p in paths:
        h.update(str(p.relative_to(repo)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def control_pins() -> str:
    """`name==version` for every distribution in this venv but labnodes: constraints for the dependencies."""
    pins = {
        d.metadata["Name"].lower(): d.version
        for d in importlib.metadata.distributions()
        if d.metadata["Name"] and d.metadata["Name"].lower() != "labnodes"
    }
    return "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))


def pip(*args: str, env: dict | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"build_wheelhouse: {' '.join(cmd[3:6])} ... failed (exit {proc.returncode})")


def build_labnodes(repo: Path, out: Path) -> Path:
    """Build the labnodes wheel from a clean copy of its sources into `out`; returns its path."""
    with tempfile.TemporaryDirectory(prefix="labnodes-src-") as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(repo / "labnodes", src / "labnodes", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copy2(repo / "pyproject.toml", src / "pyproject.toml")
        env = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH)
        # with this venv's setuptools (requirements.txt), not a fresh copy per build: 1 s less
        pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(src), env=env)
    return next(out.glob("labnodes-*.whl"))


def build_dependencies(wheel: Path, out: Path, pins: str) -> None:
    """Build (or fetch) every dependency wheel of labnodes[EXTRAS] (from its wheel), and installer, into `out`."""
    with tempfile.TemporaryDirectory(prefix="labnodes-deps-") as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text(pins)
        built = Path(tmp) / "wheels"
        pip("wheel", "-c", str(constraints), "-w", str(built), f"{wheel}[{EXTRAS}]", INSTALLER)
        for w in built.glob("*.whl"):
            if not w.name.startswith("labnodes-"):  # the labnodes wheel is the source step's
                shutil.move(w, out / w.name)


def requires(wheel: Path) -> list[Requirement]:
    """The Requires-Dist lines of a wheel's METADATA (in its top-level *.dist-info directory)."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        msg = email.parser.Parser().parsestr(zf.read(meta).decode())
    return [Requirement(r) for r in msg.get_all("Requires-Dist") or []]


def closure(graph: dict[str, list[Requirement]], root: str, extras: frozenset[str] = frozenset()) -> set[str]:
    """Every distribution `root[extras]` needs, itself included: a walk of `graph` (name -> its requirements),
    markers evaluated in this interpreter's environment with each active extra. A requirement the graph lacks is
    an error: the wheelhouse would be incomplete."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(canonicalize_name(root), extras)]
    while todo:
        name, active = todo.pop()
        if (name, active) in seen:
            continue
        seen.add((name, active))
        if name not in graph:
            raise SystemExit(f"build_wheelhouse: no wheel for {name}, which labnodes needs")
        for req in graph[name]:
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *active)):
                todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return {name for name, _ in seen}


def manifest(wheelhouse: Path) -> dict:
    """What a host installs: the wheel files of labnodes and of labnodes[EXTRA] for each extra (see the docstring)."""
    files = {canonicalize_name(parse_wheel_filename(w.name)[0]): w.name for w in wheelhouse.glob("*.whl")}
    graph = {name: requires(wheelhouse / f) for name, f in files.items()}
    sets = {"": closure(graph, "labnodes")}
    sets |= {extra: closure(graph, "labnodes", frozenset([extra])) for extra in EXTRAS.split(",")}
    install = {key: sorted(files[name] for name in names) for key, names in sets.items()}
    return {"installer": files[INSTALLER], "install": install}


def pack(wheelhouse: Path) -> bytes:
    """The archive: every wheel and the manifest, in a fixed order with zero times and owners."""
    members = [(w.name, w.read_bytes()) for w in sorted(wheelhouse.glob("*.whl"))]
    members.append((MANIFEST, json.dumps(manifest(wheelhouse), indent=1, sort_keys=True).encode() + b"\n"))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def main(argv: list[str]) -> dict:
    """Build what changed (see the docstring) under the wheelhouse's lock; the result the docstring names."""
    repo, wheelhouse = Path(argv[0]).resolve(), Path(argv[1]).resolve()
    wheelhouse.mkdir(parents=True, exist_ok=True)
    with open(wheelhouse / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two provisioning runs at once build one after the other
        return build(repo, wheelhouse)


def build(repo: Path, wheelhouse: Path) -> dict:
    state_file = wheelhouse / STATE
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    pins = control_pins()
    want = {
        "deps": digest(repo, [repo / "pyproject.toml"], pins),
        "source": digest(repo, source_files(repo)),
    }
    rebuilt = []
    wheels = list(wheelhouse.glob("*.whl"))
    deps = state.get("deps") != want["deps"] or not any(w.name.startswith(f"{INSTALLER}-") for w in wheels)
    source = state.get("source") != want["source"] or not list(wheelhouse.glob("labnodes-*.whl"))
    if deps or source:
        with tempfile.TemporaryDirectory(prefix="labnodes-wheel-") as tmp:
            wheel = build_labnodes(repo, Path(tmp))  # once, for either step
            if deps:
                for w in wheels:
                    if not w.name.startswith("labnodes-"):
                        w.unlink()
                build_dependencies(wheel, wheelhouse, pins)
                rebuilt.append("dependencies")
            if source:
                for w in wheelhouse.glob("labnodes-*.whl"):
                    w.unlink()
                shutil.copy2(wheel, wheelhouse / wheel.name)
                rebuilt.append("labnodes")
    archive = wheelhouse / ARCHIVE
    sidecar = wheelhouse / (ARCHIVE + ".sha256")  # read by the labnodes role (labnodes_wheelhouse_checksum)
    packed = state.get("archive", "")
    if not rebuilt and packed and sidecar.exists() and sidecar.read_text().strip() == packed \
            and archive.exists() and hashlib.sha256(archive.read_bytes()).hexdigest() == packed:
        changed, checksum = False, packed  # the usual run: nothing to pack again
    else:
        data = pack(wheelhouse)
        changed = not archive.exists() or archive.read_bytes() != data
        checksum = hashlib.sha256(data).hexdigest()
        if changed or not sidecar.exists() or sidecar.read_text().strip() != checksum:
            for path, content in ((archive, data), (sidecar, checksum.encode() + b"\n")):
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_bytes(content)
                tmp.replace(path)
            changed = True
    if state != want | {"archive": checksum}:
        state_file.write_text(json.dumps(want | {"archive": checksum}, indent=1) + "\n")
    return {"changed": changed, "archive": str(archive), "sha256": checksum, "rebuilt": rebuilt}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
