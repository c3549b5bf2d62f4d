"""The common role's labkit_supervise module against a real supervisord (Debian's), on a private unix socket.

apply() runs under /usr/bin/python3, the interpreter that has supervisor (as on every cluster host); each test
writes program files into the supervisord's conf.d and checks what apply() reports and what supervisord then runs.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from labkit import REPO

LIBRARY = REPO / "roles" / "common" / "library"
HOST_PYTHON = "/usr/bin/python3"
APPLY = """
import json, sys
sys.path.insert(0, sys.argv[1])
from labkit_supervise import SuperviseError, apply, server_proxy
prune, keep = (sys.argv[4], [k for k in sys.argv[5].split(",") if k]) if len(sys.argv) > 4 else ("", [])
listening = json.loads(sys.argv[6]) if len(sys.argv) > 6 else {}
try:
    print(json.dumps(apply(server_proxy(sys.argv[2]), float(sys.argv[3]), prune=prune, keep=keep,
                           listening=listening)))
except SuperviseError as exc:
    print(exc, file=sys.stderr)
    sys.exit(1)
"""

GOOD = """[program:{name}]
command=/bin/sleep {seconds}
startsecs=1
stdout_logfile={log}
redirect_stderr=true
"""

BROKEN = """[program:{name}]
command=/bin/sh -c 'echo "cannot bind: address in use"; exit 3'
startsecs=1
startretries=1
stdout_logfile={log}
redirect_stderr=true
"""


class Supervisord:
    def __init__(self, root: Path):
        self.root = root
        self.confd = root / "conf.d"
        self.confd.mkdir()
        self.conf = root / "supervisord.conf"
        sock = root / "s.sock"
        self.conf.write_text(
            f"[unix_http_server]\nfile={sock}\nchmod=0700\n"
            f"[supervisord]\nlogfile={root}/supervisord.log\npidfile={root}/supervisord.pid\nchildlogdir={root}\n"
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
            f"[supervisorctl]\nserverurl=unix://{sock}\n"
            f"[include]\nfiles = {self.confd}/*.conf\n"
        )
        self.process = subprocess.Popen(["/usr/bin/supervisord", "-n", "-c", str(self.conf)])
        deadline = time.monotonic() + 10
        while self.ctl("pid").returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("supervisord did not answer in 10 s")
            time.sleep(0.1)

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["/usr/bin/supervisorctl", "-c", str(self.conf), *args], capture_output=True, text=True, timeout=30
        )

    def program(self, name: str, template: str = GOOD, seconds: int = 600) -> None:
        text = template.format(name=name, seconds=seconds, log=self.root / f"{name}.log")
        (self.confd / f"{name}.conf").write_text(text)

    def apply(self, timeout: float = 15, prune: str = "", keep: tuple[str, ...] = (),
              listening: dict | None = None) -> subprocess.CompletedProcess:
        extra = [prune, ",".join(keep)] if prune or listening else []
        if listening:
            extra.append(json.dumps(listening))
        return subprocess.run(
            [HOST_PYTHON, "-c", APPLY, str(LIBRARY), str(self.conf), str(timeout), *extra],
            capture_output=True,
            text=True,
            timeout=timeout + 30,
        )

    def pid(self, name: str) -> str:
        return self.ctl("pid", name).stdout.strip()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def supervisord(tmp_path):
    if not Path("/usr/bin/supervisord").exists():
        pytest.fail("supervisord is missing: scripts/setup.sh installs Debian's supervisor package")
    server = Supervisord(tmp_path)
    yield server
    server.stop()


def report(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_new_program_is_added_and_runs_and_a_second_apply_changes_nothing(supervisord):
    supervisord.program("alpha")
    first = report(supervisord.apply())
    assert first["changed"] and first["added"] == ["alpha"]
    assert first["programs"] == {"alpha": "RUNNING"}
    pid = supervisord.pid("alpha")
    second = report(supervisord.apply())
    assert not second["changed"] and second["programs"] == {"alpha": "RUNNING"}
    assert supervisord.pid("alpha") == pid


def test_a_changed_program_file_restarts_only_that_program(supervisord):
    supervisord.program("alpha")
    supervisord.program("beta")
    report(supervisord.apply())
    alpha, beta = supervisord.pid("alpha"), supervisord.pid("beta")
    supervisord.program("beta", seconds=700)
    result = report(supervisord.apply())
    assert result["changed"] and result["updated"] == ["beta"] and result["added"] == []
    assert supervisord.pid("alpha") == alpha and supervisord.pid("beta") != beta


def test_a_program_stopped_by_hand_is_started_again(supervisord):
    supervisord.program("alpha")
    report(supervisord.apply())
    assert supervisord.ctl("stop", "alpha").returncode == 0
    result = report(supervisord.apply())
    assert result["changed"] and result["started"] == ["alpha"] and result["programs"] == {"alpha": "RUNNING"}


def test_a_program_whose_file_is_gone_is_removed(supervisord):
    supervisord.program("alpha")
    supervisord.program("beta")
    report(supervisord.apply())
    (supervisord.confd / "beta.conf").unlink()
    result = report(supervisord.apply())
    assert result["removed"] == ["beta"] and result["programs"] == {"alpha": "RUNNING"}


def test_managed_files_not_kept_are_deleted_and_their_programs_stopped_and_other_files_left_alone(supervisord):
    supervisord.program("labnodes-ring")
    supervisord.program("labnodes-worker")
    supervisord.program("admins-own")  # an administrator's program, outside the managed glob
    report(supervisord.apply())
    pattern = str(supervisord.confd / "labnodes-*.conf")
    result = report(supervisord.apply(prune=pattern, keep=("labnodes-ring.conf",)))  # the host left the workers
    assert result["changed"] and result["pruned"] == [str(supervisord.confd / "labnodes-worker.conf")]
    assert result["removed"] == ["labnodes-worker"]
    assert result["programs"] == {"admins-own": "RUNNING", "labnodes-ring": "RUNNING"}
    assert sorted(p.name for p in supervisord.confd.iterdir()) == ["admins-own.conf", "labnodes-ring.conf"]
    assert not report(supervisord.apply(prune=pattern, keep=("labnodes-ring.conf",)))["changed"]


def test_a_program_that_cannot_start_fails_naming_it_its_log_and_the_logs_last_lines(supervisord):
    supervisord.program("alpha")
    supervisord.program("broken", BROKEN)
    result = supervisord.apply()
    assert result.returncode == 1
    assert "broken is FATAL" in result.stderr
    assert str(supervisord.root / "broken.log") in result.stderr
    assert "cannot bind: address in use" in result.stderr
    assert "alpha" not in result.stderr  # the healthy program is not blamed


LISTENS_LATE = """[program:{name}]
command=/usr/bin/python3 -c "import socket, sys, time; time.sleep({seconds}); print('listening', flush=True); \
s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(600)"
startsecs=1
stdout_logfile={log}
redirect_stderr=true
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_provisioning_waits_until_a_server_answers_not_only_until_supervisord_calls_it_running(supervisord):
    port = _free_port()
    supervisord.program("late", LISTENS_LATE.replace("{port}", str(port)), seconds=3)  # RUNNING at 1 s, serves at 3 s
    result = report(supervisord.apply(listening={"late": f"127.0.0.1:{port}", "not-on-this-host": "127.0.0.1:1"}))
    assert result["programs"] == {"late": "RUNNING"}
    socket.create_connection(("127.0.0.1", port), timeout=2).close()  # it answers now that apply() returned


def test_a_running_program_that_never_answers_fails_naming_it_and_its_address(supervisord):
    port = _free_port()
    supervisord.program("mute", LISTENS_LATE.replace("{port}", str(port)), seconds=600)
    supervisord.program("alpha")
    result = supervisord.apply(timeout=4, listening={"mute": f"127.0.0.1:{port}"})
    assert result.returncode == 1
    assert f"mute is RUNNING but nothing answers at 127.0.0.1:{port}" in result.stderr
    assert "alpha" not in result.stderr


def test_a_program_file_supervisord_cannot_read_is_a_clear_error(supervisord):
    (supervisord.confd / "bad.conf").write_text("[program:bad]\n")  # no command
    result = supervisord.apply()
    assert result.returncode == 1
    assert "supervisord refused" in result.stderr and "command" in result.stderr


def test_no_supervisord_to_talk_to_is_a_clear_error(tmp_path):
    conf = tmp_path / "supervisord.conf"
    conf.write_text(f"[supervisorctl]\nserverurl=unix://{tmp_path}/nobody.sock\n")
    result = subprocess.run(
        [HOST_PYTHON, "-c", APPLY, str(LIBRARY), str(conf), "5"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "cannot reach supervisord" in result.stderr
