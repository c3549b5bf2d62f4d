"""Nothing secret is committed: keys and passwords are generated per cluster into the git-ignored .labkit/."""

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----")
# a literal secret where the roles and settings take one (templates and variables are fine: {{ ... }}, "")
LITERAL = re.compile(rb"^\s*(requirepass|redis_password|hmac_key|flower_password)(?:\s*[:=]\s*|\s+)['\"]?[A-Za-z0-9]{8,}",
                     re.M)


def tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    return [REPO / name for name in out.decode().split("\0") if name]


def test_generated_state_is_ignored_by_git():
    for path in (".labkit/lab/secrets/redis_password", ".labkit/lab/ssh/id_ed25519", "wheelhouse/x.whl"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO).returncode == 0, path


def test_no_tracked_file_holds_a_private_key_or_a_literal_password():
    offenders = []
    for path in tracked():
        if not path.is_file() or path.stat().st_size > 2_000_000 or path == Path(__file__).resolve():
            continue
        data = path.read_bytes()
        if PRIVATE_KEY.search(data) or LITERAL.search(data):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def test_the_check_finds_what_it_looks_for():
    assert PRIVATE_KEY.search(b"-----BEGIN OPENSSH PRIVATE KEY-----\n")
    assert LITERAL.search(b"requirepass hunter2hunter2\n") and not LITERAL.search(b"requirepass {{ pw }}\n")
