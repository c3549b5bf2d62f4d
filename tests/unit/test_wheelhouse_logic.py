"""Pure logic of the wheelhouse: which distributions labnodes[extras] needs (control side, build_wheelhouse.py), and
which wheel files a host installs from the manifest (node side, the labnodes role's install_venv.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from labkit import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_wheelhouse = _load("build_wheelhouse", REPO / "playbooks" / "files" / "build_wheelhouse.py")
install_venv = _load("install_venv", REPO / "roles" / "labnodes" / "files" / "install_venv.py")


def graph(**deps: list[str]) -> dict[str, list[Requirement]]:
    """name -> its requirements, keyed by canonical name as build_wheelhouse.manifest keys them."""
    return {canonicalize_name(name): [Requirement(r) for r in reqs] for name, reqs in deps.items()}


GRAPH = graph(
    labnodes=["celery[redis]>=5", "Pyro4==4.82", 'flower>=2; extra == "flower"'],
    celery=["kombu", 'redis>=4; extra == "redis"', 'backports_zoneinfo; python_version < "3.9"'],
    kombu=["vine", "amqp"],
    vine=[],
    amqp=["vine"],
    redis=['async-timeout; python_version < "3.0"'],
    Pyro4=["serpent"],
    serpent=[],
    flower=["celery", "tornado", "labnodes"],  # a cycle back to the root must end
    tornado=[],
)


def test_closure_follows_requirements_and_the_extras_they_ask_for():
    assert build_wheelhouse.closure(GRAPH, "labnodes") == {
        "labnodes",
        "celery",
        "kombu",
        "vine",
        "amqp",
        "redis",
        "pyro4",
        "serpent",
    }


def test_closure_with_an_extra_adds_only_what_the_extra_needs():
    base = build_wheelhouse.closure(GRAPH, "labnodes")
    assert build_wheelhouse.closure(GRAPH, "labnodes", frozenset({"flower"})) - base == {"flower", "tornado"}


def test_requirements_whose_marker_is_false_here_are_left_out():
    needed = build_wheelhouse.closure(GRAPH, "celery", frozenset({"redis"}))
    assert "backports-zoneinfo" not in needed and "async-timeout" not in needed and "redis" in needed


def test_a_requirement_the_wheelhouse_lacks_is_an_error_naming_it():
    broken = dict(GRAPH, kombu=[Requirement("vine"), Requirement("missing-thing>=1")])
    with pytest.raises(SystemExit, match="no wheel for missing-thing"):
        build_wheelhouse.closure(broken, "labnodes")


MANIFEST = {
    "installer": "installer-1.1.0-py3-none-any.whl",
    "install": {
        "": ["a-1-py3-none-any.whl", "labnodes-0.1.0-py3-none-any.whl"],
        "flower": ["a-1-py3-none-any.whl", "flower-2-py3-none-any.whl", "labnodes-0.1.0-py3-none-any.whl"],
    },
}


def test_a_host_without_extras_installs_the_base_set():
    assert install_venv.wheels_for(MANIFEST, []) == [
        "a-1-py3-none-any.whl",
        "labnodes-0.1.0-py3-none-any.whl",
    ]


def test_a_host_with_an_extra_installs_the_union_once_each():
    assert install_venv.wheels_for(MANIFEST, ["flower"]) == [
        "a-1-py3-none-any.whl",
        "flower-2-py3-none-any.whl",
        "labnodes-0.1.0-py3-none-any.whl",
    ]


def test_an_unknown_extra_is_refused_naming_the_ones_there_are():
    with pytest.raises(
        install_venv.InstallError, match="unknown labnodes extra grafana; the wheelhouse has: flower"
    ):
        install_venv.wheels_for(MANIFEST, ["flower", "grafana"])


WHEELS = [
    "celery-5.7.0-py3-none-any.whl",
    "six-1.17.0-py2.py3-none-any.whl",
    "tornado-6.6.1-cp311-abi3-manylinux1_x86_64.manylinux_2_28_x86_64.manylinux_2_5_x86_64.whl",
    "uvloop-0.23.0-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl",
]


@pytest.mark.parametrize(
    "version, impl, machine, refused",
    [
        ((3, 11), "cpython", "x86_64", None),  # Debian 12 on a PC, as the control machine
        ((3, 12), "cpython", "x86_64", "uvloop-"),  # Ubuntu 24.04: abi3 tornado runs, cp311 uvloop does not
        ((3, 10), "cpython", "x86_64", "tornado-"),  # Ubuntu 22.04: not even the abi3 wheel (3.11 or later)
        ((3, 11), "cpython", "aarch64", "tornado-"),  # a Raspberry Pi with Debian 12
        ((3, 11), "pypy", "x86_64", "tornado-"),
    ],
)
def test_a_wheel_built_for_another_python_or_machine_is_refused_before_anything_is_made(
    version, impl, machine, refused
):
    """PyPA's installer does not check tags: a host with Python 3.12 or an ARM CPU got the control machine's
    compiled wheels installed, and every program importing them failed to start."""
    if refused is None:
        install_venv.check_compatible(WHEELS, version, impl, machine)
        return
    with pytest.raises(install_venv.InstallError) as err:
        install_venv.check_compatible(WHEELS, version, impl, machine)
    assert str(err.value).startswith(refused) and f"{version[0]}.{version[1]} on {machine}" in str(err.value)
