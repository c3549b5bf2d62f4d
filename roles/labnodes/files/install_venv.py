"""Install labnodes into a fresh virtual environment from the wheelhouse archive, then put it in place.

Run on the host by the labnodes role with the interpreter the venv is made from (labnodes_python):

    python3 install_venv.py ARCHIVE VENV STAMP [EXTRA,...]      (or: python3 - ... < install_venv.py)

ARCHIVE is the tar that playbooks/files/build_wheelhouse.py builds on the control machine: the wheels, the wheel of
PyPA's `installer`, and manifest.json, which names the wheels to install for labnodes and for each extra (the
builder resolved them; nothing is resolved here). Every install builds a new venv beside the old one
(VENV.new), installs the wheels into it with `installer` (scripts point at VENV/bin/python; no bytecode: programs
compile what they import on first start), writes STAMP to VENV/.labkit-installed, and only then swaps it in. So a
failure at any step leaves the installed venv as it was, and the next run starts again from nothing. A changed
dependency set needs no uninstall step either. Installs of one venv take turns (a lock file beside it, LOCK): two
provisionings at once, from one control machine or two, both built in VENV.new and both failed; the second now
waits, and finds the build the first installed (its STAMP) already there. Prints one line naming what it
installed; errors go to stderr with exit status 1.

Before anything is made, every wheel's tags (its file name: PYTHON-ABI-PLATFORM) are checked against this
interpreter and machine, because `installer` does not check them: the archive's compiled wheels (uvloop,
tornado) are built on the control machine for its own CPython and machine, so on a host with another Python
(Ubuntu 24.04's 3.12) or another machine (a Raspberry Pi's aarch64) they would install, and every program
importing them would fail to start.
"""

from __future__ import annotations

import fcntl
import json
import platform
import shutil
import sys
import sysconfig
import tarfile
import tempfile
import venv
from pathlib import Path

STAMP = ".labkit-installed"
LOCK = ".labkit-install.lock"  # beside the venv: one install at a time (two provisionings at once clashed in VENV.new)
IMPLEMENTATIONS = {"cpython": "CPython", "pypy": "PyPy"}  # sys.implementation.name as people write it


class InstallError(Exception):
    pass


def wheels_for(manifest: dict, extras: list[str]) -> list[str]:
    """The wheel files to install for labnodes with these extras: the base set and each extra's, once each."""
    sets = manifest["install"]
    unknown = sorted(set(extras) - set(sets) - {""})
    if unknown:
        raise InstallError(
            f"unknown labnodes extra {', '.join(unknown)}; the wheelhouse has: "
            f"{', '.join(sorted(k for k in sets if k)) or 'none'}"
        )
    return sorted({w for key in ("", *extras) for w in sets[key]})


def _runs_here(python: str, abi: str, plat: str, version: tuple[int, int], impl: str, machine: str) -> bool:
    """Whether one tag triple (PEP 425) suits this interpreter and machine. Simplified to what wheelhouses hold:
    pyX / pyXY (pure Python, this major version, XY or later), cpXY with abi3 (CPython XY or later), cpXY with
    another ABI (CPython XY exactly); platform `any` or a Linux tag ending in this machine's name."""
    if plat != "any" and not plat.endswith("_" + machine):
        return False
    kind, digits = python[:2], python[2:]
    if kind not in ("py", "cp") or not digits.isdigit() or int(digits[0]) != version[0]:
        return False
    wanted = (int(digits[0]), int(digits[1:] or 0))
    if kind == "py":
        return version >= wanted
    if impl != "cpython":
        return False
    return version >= wanted if abi == "abi3" else version == wanted


def check_compatible(files: list[str], version=None, impl=None, machine=None) -> None:
    """Refuse wheels built for another Python or machine, naming the first and what this host is."""
    version = version or sys.version_info[:2]
    impl = impl or sys.implementation.name
    machine = machine or platform.machine()
    for name in files:
        python, abi, plat = name[: -len(".whl")].split("-")[-3:]
        if not any(
            _runs_here(p, a, pl, version, impl, machine)
            for p in python.split(".")
            for a in abi.split(".")
            for pl in plat.split(".")
        ):
            here = f"{IMPLEMENTATIONS.get(impl, impl)} {version[0]}.{version[1]} on {machine}"
            raise InstallError(
                f"{name} does not run on this host ({here}): the wheelhouse holds builds for the control "
                "machine's Python and machine, and every host needs the same (Debian 12 on x86_64, as labkit's "
                "control machine; or set labnodes_python to such an interpreter on the host)"
            )


def _retarget(stage: Path, final: Path) -> None:
    """The venv module writes its own path into pyvenv.cfg and the activate scripts: make that the final path."""
    for path in [stage / "pyvenv.cfg", *(stage / "bin").glob("activate*")]:
        text = path.read_text()
        if str(stage) in text:
            path.write_text(text.replace(str(stage), str(final)))


def build(wheels: Path, installer_wheel: str, stage: Path, final: Path, files: list[str]) -> None:
    """Make a venv at `stage` holding the wheels `files`, its scripts pointing at the venv at `final`."""
    sys.path.insert(0, str(wheels / installer_wheel))  # installer runs from its wheel: a zip on sys.path
    from installer import install
    from installer.destinations import SchemeDictionaryDestination
    from installer.sources import WheelFile

    venv.EnvBuilder(symlinks=True, with_pip=False).create(stage)
    base = {
        "base": str(stage),
        "platbase": str(stage),
        "installed_base": str(stage),
        "installed_platbase": str(stage),
    }
    paths = sysconfig.get_paths(scheme="venv", vars=base)
    scheme = {key: paths[key] for key in ("purelib", "platlib", "scripts", "data")} | {
        "headers": paths["include"]
    }
    destination = SchemeDictionaryDestination(
        scheme,
        interpreter=str(final / "bin" / "python"),
        script_kind="posix",
        bytecode_optimization_levels=[],
    )
    for name in files:
        with WheelFile.open(wheels / name) as source:
            install(source, destination, {"INSTALLER": b"labkit\n"})
    _retarget(stage, final)


def swap(stage: Path, final: Path) -> None:
    """Put the venv at `stage` where `final` is, keeping the old one until the new one is in place."""
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    stage.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str]) -> int:
    if not 3 <= len(argv) <= 4:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    archive, final, stamp = Path(argv[0]), Path(argv[1]), argv[2]
    extras = [e for e in (argv[3] if len(argv) > 3 else "").split(",") if e]
    stage = final.with_name(final.name + ".new")
    try:
        lock = open(final.with_name(LOCK), "a")  # noqa: SIM115 -- held until the process ends
        fcntl.flock(lock, fcntl.LOCK_EX)  # another install of this venv (a second provisioning) goes first
        if (final / STAMP).is_file() and (final / STAMP).read_text().strip() == stamp:
            print(f"already installed in {final} (by a provisioning that ran at the same time)")
            return 0
        with tempfile.TemporaryDirectory(prefix="labnodes-wheels-", dir=final.parent) as tmp:
            wheels = Path(tmp)
            with tarfile.open(archive) as tar:  # PEP 706's filter where this Python has it (3.11.4 and later)
                tar.extractall(wheels, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
            manifest = json.loads((wheels / "manifest.json").read_text())
            files = wheels_for(manifest, extras)
            check_compatible([*files, manifest["installer"]])
            shutil.rmtree(stage, ignore_errors=True)
            build(wheels, manifest["installer"], stage, final, files)
            (stage / STAMP).write_text(stamp + "\n")
        swap(stage, final)
    except Exception as exc:  # noqa: BLE001 -- any failure: one line for the playbook's output, nothing half-done
        shutil.rmtree(stage, ignore_errors=True)
        print(f"install_venv: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"installed {len(files)} wheels into {final}: {', '.join(f.split('-')[0] for f in files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
