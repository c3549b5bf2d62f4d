"""Every playbook passes Ansible's syntax check, and the playbooks and roles pass ansible-lint (offline)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from labkit import REPO

BIN = Path(sys.executable).parent
PLAYBOOKS = sorted(p.name for p in (REPO / "playbooks").glob("*.yml"))


def run(*cmd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "NO_COLOR": "1",
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_passes_syntax_check(playbook):
    proc = run(str(BIN / "ansible-playbook"), "-i", "inventory/netns", "--syntax-check", f"playbooks/{playbook}")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_playbooks_and_roles_pass_ansible_lint():
    proc = run(str(BIN / "ansible-lint"), "--offline", "--nocolor", "playbooks", "roles")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
