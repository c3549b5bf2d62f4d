"""The wheelhouse as a host gets it: build_wheelhouse.py builds a real archive from this repository, and the labnodes
role's install_venv.py installs it with the hosts' interpreter (/usr/bin/python3) into a venv under tmp_path."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from labkit import REPO

BUILDER = REPO / "playbooks" / "files" / "build_wheelhouse.py"
INSTALL = REPO / "roles" / "labnodes" / "files" / "install_venv.py"
HOST_PYTHON = "/usr/bin/python3"  # labnodes_python's default


def build(wheelhouse: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, str(BUILDER), str(REPO), str(wheelhouse)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("wheelhouse")
    first = build(path)
    assert first["changed"] and first["rebuilt"] == ["dependencies", "labnodes"]
    return path


def install(archive: Path, venv: Path, *extras: str, stamp: str = "build-1") -> subprocess.CompletedProcess:
    """Run install_venv.py as the role does: the script on stdin, the extras as one comma-separated argument."""
    return subprocess.run(
        [HOST_PYTHON, "-", str(archive), str(venv), stamp, ",".join(extras)],
        input=INSTALL.read_text(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def distributions(venv: Path) -> set[str]:
    site = next((venv / "lib").glob("python3*/site-packages"))
    return {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}


def manifest(archive: Path) -> dict:
    with tarfile.open(archive) as tar:
        return json.load(tar.extractfile("manifest.json"))


def test_archive_holds_the_wheels_the_manifest_and_installer_but_no_pip(wheelhouse):
    with tarfile.open(wheelhouse / "wheelhouse.tar") as tar:
        names = tar.getnames()
    found = manifest(wheelhouse / "wheelhouse.tar")
    assert "manifest.json" in names and found["installer"] in names
    assert not [n for n in names if n.startswith("pip-")]
    listed = {w for files in found["install"].values() for w in files}
    assert listed <= set(names)
    base, flower = set(found["install"][""]), set(found["install"]["flower"])
    assert any(w.startswith("labnodes-") for w in base) and not any(w.startswith("flower-") for w in base)
    assert {w.split("-")[0] for w in flower - base} >= {"flower", "tornado"}


def test_second_build_changes_nothing_and_repacks_an_archive_that_was_altered(wheelhouse):
    archive = wheelhouse / "wheelhouse.tar"
    before = archive.stat().st_mtime_ns
    again = build(wheelhouse)
    assert not again["changed"] and again["rebuilt"] == [] and archive.stat().st_mtime_ns == before
    good = archive.read_bytes()
    middle = len(good) // 2
    archive.write_bytes(
        good[:middle] + b"damage" + good[middle + 6 :]
    )  # no longer the archive state.json records
    repaired = build(wheelhouse)
    assert repaired["changed"] and repaired["rebuilt"] == [] and archive.read_bytes() == good
    assert (wheelhouse / "wheelhouse.tar.sha256").read_text().strip() == hashlib.sha256(good).hexdigest()


def test_dependencies_rebuilt_alone_keep_the_labnodes_wheel(wheelhouse, tmp_path):
    """A wheelhouse from before installer (it held pip) gets new dependencies and keeps its labnodes wheel."""
    old = tmp_path / "old"
    shutil.copytree(wheelhouse, old)
    good = (old / "wheelhouse.tar").read_bytes()
    installer = next(old.glob("installer-*.whl"))
    shutil.move(installer, old / installer.name.replace("installer", "pip"))
    again = build(old)
    assert again["rebuilt"] == ["dependencies"] and (old / "wheelhouse.tar").read_bytes() == good
    assert not list(old.glob("pip-*.whl")) and len(list(old.glob("labnodes-*.whl"))) == 1


def test_fresh_install_runs_labnodes_from_the_venv_with_scripts_pointing_at_it(wheelhouse, tmp_path):
    venv = tmp_path / "opt" / "venv"
    venv.parent.mkdir()
    done = install(wheelhouse / "wheelhouse.tar", venv)
    assert done.returncode == 0, done.stderr
    assert "labnodes" in distributions(venv) and "flower" not in distributions(venv)
    assert (venv / "bin" / "labnodes").read_text().splitlines()[0] == f"#!{venv}/bin/python"
    version = subprocess.run([str(venv / "bin" / "labnodes"), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and "labnodes" in version.stdout + version.stderr
    assert (venv / ".labkit-installed").read_text() == "build-1\n"
    for path in [venv / "pyvenv.cfg", *(venv / "bin").glob("activate*")]:
        assert f"{venv}.new" not in path.read_text(), path
    assert sorted(p.name for p in venv.parent.iterdir()) == [
        ".labkit-install.lock",
        "venv",
    ]  # no staging or old venv, no unpacked wheels


def test_two_installs_at_once_take_turns_and_the_second_finds_the_build_installed(wheelhouse, tmp_path):
    """Two provisionings at once both built in VENV.new: one failed with FileExistsError inside it, the other with
    FileNotFoundError (seen on all 8 hosts of a netns cluster)."""
    venv = tmp_path / "venv"
    script = INSTALL.read_text()
    procs = [
        subprocess.Popen(
            [HOST_PYTHON, "-", str(wheelhouse / "wheelhouse.tar"), str(venv), "build-1", ""],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(script, timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    said = sorted(out.split()[0] for out, _ in outs)
    assert said == ["already", "installed"], outs
    assert subprocess.run([str(venv / "bin" / "python"), "-c", "import labnodes"]).returncode == 0


def test_reinstall_with_other_extras_leaves_nothing_of_the_old_set(wheelhouse, tmp_path):
    venv = tmp_path / "venv"
    assert install(wheelhouse / "wheelhouse.tar", venv, "flower").returncode == 0
    assert {"flower", "tornado"} <= distributions(venv)
    done = install(wheelhouse / "wheelhouse.tar", venv, stamp="build-2")
    assert done.returncode == 0, done.stderr
    assert not {"flower", "tornado"} & distributions(venv)
    assert (venv / ".labkit-installed").read_text() == "build-2\n"


def _corrupt_copy(archive: Path, dest: Path, victim_prefix: str) -> Path:
    """A copy of the archive whose `victim_prefix` wheel is not a zip file any more."""
    with tarfile.open(archive) as src, tarfile.open(dest, "w") as out:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name.startswith(victim_prefix):
                data = b"not a wheel"
                member.size = len(data)
            out.addfile(member, io.BytesIO(data))
    return dest


def _retagged_copy(archive: Path, dest: Path, victim_prefix: str) -> Path:
    """A copy of the archive whose `victim_prefix` wheel is named as built for CPython 3.99 (its file name, in the
    archive and its manifest, is all that says so)."""
    with tarfile.open(archive) as src, tarfile.open(dest, "w") as out:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name.startswith(victim_prefix):
                member.name = member.name.replace("cp311", "cp399")
            elif member.name == "manifest.json":
                data = data.replace(b"cp311-cp311", b"cp399-cp399")
                member.size = len(data)
            out.addfile(member, io.BytesIO(data))
    return dest


@pytest.mark.parametrize(
    "bad", ["a damaged wheel", "an unknown extra", "a missing archive", "a wheel for another Python"]
)
def test_a_failed_install_leaves_the_installed_venv_as_it_was(wheelhouse, tmp_path, bad):
    venv = tmp_path / "venv"
    assert install(wheelhouse / "wheelhouse.tar", venv).returncode == 0
    before = sorted(str(p.relative_to(venv)) for p in venv.rglob("*"))
    archive, extras = wheelhouse / "wheelhouse.tar", ()
    if bad == "a damaged wheel":
        archive = _corrupt_copy(archive, tmp_path / "bad.tar", "tabulate-")
    elif bad == "an unknown extra":
        extras = ("grafana",)
    elif bad == "a wheel for another Python":
        archive = _retagged_copy(archive, tmp_path / "other.tar", "uvloop-")
    else:
        archive = tmp_path / "nowhere.tar"
    failed = install(archive, venv, *extras, stamp="build-2")
    if bad == "a wheel for another Python":
        assert (
            "uvloop-0" in failed.stderr
            and "does not run on this host (CPython 3.11 on x86_64)" in failed.stderr
        )
    assert failed.returncode == 1 and failed.stderr.startswith("install_venv: "), failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1  # one clear line, no traceback
    assert sorted(str(p.relative_to(venv)) for p in venv.rglob("*")) == before
    assert (venv / ".labkit-installed").read_text() == "build-1\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("venv")) == ["venv"]
    assert subprocess.run([str(venv / "bin" / "python"), "-c", "import labnodes"]).returncode == 0
