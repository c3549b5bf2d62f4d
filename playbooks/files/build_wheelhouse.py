"""Build the wheelhouse the hosts install labnodes from, and pack it as one reproducible tar archive.

Run by the first play of site.yml with the control venv's Python: `build_wheelhouse.py REPO WHEELHOUSE`.
Prints one JSON line: {"changed": bool, "archive": path, "sha256": hex, "rebuilt": [...]}; the sha256 is also
written beside the archive (wheelhouse.tar.sha256), where the labnodes role reads it.

Nothing is rebuilt when nothing changed, so a second provisioning copies and installs nothing:
- dependencies (every wheel but labnodes, plus pip to install them with) are rebuilt only when pyproject.toml
  or the control venv's package versions change; they are pinned to the control venv's versions, so the
  hosts run exactly what was tested here;
- the labnodes wheel is rebuilt only when a file of the package (or pyproject.toml) changes; it is built from a
  clean copy of the source (no stale build/ directory) with SOURCE_DATE_EPOCH fixed;
- the archive (sorted names, zero times and owners) changes only when a wheel does;
- concurrent runs (two provisionings at once) take turns on a lock file in the wheelhouse.
"""

from __future__ import annotations

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
from pathlib import Path

ARCHIVE = "wheelhouse.tar"
STATE = "state.json"
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


def build_labnodes(repo: Path, out: Path) -> None:
    """Build the labnodes wheel from a clean copy of its sources into `out`."""
    with tempfile.TemporaryDirectory(prefix="labnodes-src-") as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(repo / "labnodes", src / "labnodes", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copy2(repo / "pyproject.toml", src / "pyproject.toml")
        env = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH)
        pip("wheel", "--no-deps", "-w", str(out), str(src), env=env)


def build_dependencies(repo: Path, out: Path, pins: str) -> None:
    """Build (or fetch) every dependency wheel of labnodes[EXTRAS], and pip itself, into `out`."""
    with tempfile.TemporaryDirectory(prefix="labnodes-deps-") as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text(pins)
        build_labnodes(repo, Path(tmp) / "self")
        wheel = next((Path(tmp) / "self").glob("labnodes-*.whl"))
        pip("wheel", "-c", str(constraints), "-w", str(out), f"{wheel}[{EXTRAS}]", "pip")
        for w in out.glob("labnodes-*.whl"):
            w.unlink()


def pack(wheelhouse: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for wheel in sorted(wheelhouse.glob("*.whl")):
            info = tarfile.TarInfo(wheel.name)
            info.size, info.mode, info.mtime = wheel.stat().st_size, 0o644, 0
            with wheel.open("rb") as fh:
                tar.addfile(info, fh)
    return buf.getvalue()


def main(argv: list[str]) -> int:
    repo, wheelhouse = Path(argv[0]).resolve(), Path(argv[1]).resolve()
    wheelhouse.mkdir(parents=True, exist_ok=True)
    with open(wheelhouse / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two provisioning runs at once build one after the other
        return build(repo, wheelhouse)


def build(repo: Path, wheelhouse: Path) -> int:
    state_file = wheelhouse / STATE
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    pins = control_pins()
    want = {
        "deps": digest(repo, [repo / "pyproject.toml"], pins),
        "source": digest(repo, source_files(repo)),
    }
    rebuilt = []
    wheels = list(wheelhouse.glob("*.whl"))
    if state.get("deps") != want["deps"] or not any(w.name.startswith("pip-") for w in wheels):
        for w in wheels:
            if not w.name.startswith("labnodes-"):
                w.unlink()
        build_dependencies(repo, wheelhouse, pins)
        rebuilt.append("dependencies")
    if state.get("source") != want["source"] or not list(wheelhouse.glob("labnodes-*.whl")):
        for w in wheelhouse.glob("labnodes-*.whl"):
            w.unlink()
        build_labnodes(repo, wheelhouse)
        rebuilt.append("labnodes")
    state_file.write_text(json.dumps(want, indent=1) + "\n")

    data = pack(wheelhouse)
    archive = wheelhouse / ARCHIVE
    changed = not archive.exists() or archive.read_bytes() != data
    checksum = hashlib.sha256(data).hexdigest()
    sidecar = wheelhouse / (ARCHIVE + ".sha256")  # read by the labnodes role (labnodes_wheelhouse_checksum)
    if changed or not sidecar.exists() or sidecar.read_text().strip() != checksum:
        for path, content in ((archive, data), (sidecar, checksum.encode() + b"\n")):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(content)
            tmp.replace(path)
        changed = True
    print(json.dumps({"changed": changed, "archive": str(archive), "sha256": checksum, "rebuilt": rebuilt}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
