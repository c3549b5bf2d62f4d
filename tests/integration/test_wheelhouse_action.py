"""site.yml's first task, the labkit_wheelhouse action (playbooks/action_plugins/): what it says when it cannot
build. (Every provisioning in the cluster tests runs its success path.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from labkit import REPO

BIN = Path(sys.executable).parent


def action(args: str) -> dict:
    """Run the action once on localhost, as site.yml's first play does; its result."""
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "NO_COLOR": "1",
        "ANSIBLE_ACTION_PLUGINS": str(REPO / "playbooks" / "action_plugins"),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    proc = subprocess.run(
        [str(BIN / "ansible"), "localhost", "-c", "local", "-m", "labkit_wheelhouse", "-a", args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # the default callback's last lines: "localhost | FAILED! => {...}" (or SUCCESS, CHANGED)
    head, _, result = proc.stdout.rpartition(" => ")
    return {"status": head.rpartition("| ")[2], **json.loads(result)}


def test_a_repository_that_is_not_there_fails_naming_the_missing_file(tmp_path):
    got = action(f"repo={tmp_path / 'nowhere'} wheelhouse={tmp_path / 'wheelhouse'}")
    assert got["status"] == "FAILED!"
    assert "labkit_wheelhouse:" in got["msg"] and "nowhere" in got["msg"]


def test_a_missing_argument_fails_naming_it(tmp_path):
    got = action(f"wheelhouse={tmp_path / 'wheelhouse'}")
    assert got["status"] == "FAILED!"
    assert got["msg"] == "labkit_wheelhouse needs repo"
