"""Checks one host can run on itself: its settings, its supervised services, its reach to the hosts it talks to.

`labnodes selftest [--json]` on any cluster host runs them with no control machine. The control side
(`fab check`, labkit/checks/) sends this same file to every host and runs it with the host's own python3 and a
context (`--context JSON`: the host's inventory name, address, the services its groups call for, the peers to
probe, its ring successor, inventory variables), so the messages and hints are the same both ways.

Stdlib only: it must run before (and without) the labnodes virtualenv, under /usr/bin/python3.

Every check is a dict: `id` (e.g. `service.math.listens`), `layer` (`reach`, `host`, `service`, `app`), `title`,
`outcome` (`pass`, `fail`, `blocked`), `expected`, `found`, `hint`, `deps` (ids it needs to pass first) and, when
blocked, `blocked_by`. A check whose dependency did not pass is blocked by the first failed check underneath it,
never run and never counted as one more failure (`resolve`).

What each service check looks at, on the host itself:
- running:  the program is one of supervisord's programs (found by name, else by command line) and RUNNING, and
            not started again less than RECENT (60) s ago after it ran and ended by itself (supervisord's own
            log says so: ends(); its state says RUNNING);
- listens:  the program's own pid (or a child) holds a listening socket on the host's cluster address and the
            configured port (`ss -ltnpH`), and no listener of it is on a wildcard or loopback address. Another
            program on the same address (sshd) does not count;
- auth:     Redis answers an unauthenticated PING with NOAUTH and the configured password with PONG; Flower
            answers 401 without credentials; a Celery host's password is accepted by the broker.
Ports and addresses come from /etc/labnodes/labnodes.toml, then the context's inventory variables; a port found
in neither is whichever port the program itself listens on.

The settings file is judged by labnodes' own rules (labnodes.config: every setting known, of its type, ports
0-65535), run by the venv's python in the same call that checks labnodes imports: valid TOML with a wrong value
(`ring_port = "abc"`, which stops the program from starting) fails host.settings with labnodes' own message,
and the file's values are then not used, as when it is not TOML at all. Where the venv cannot run, only the TOML
and the file's owner and mode are judged, and a value the checks cannot use is a finding of the check that
needed it, never a crash of the probe (a crash showed as host.probe failing, "install python3").
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import re
import socket
import stat
import subprocess
import sys
import time

SETTINGS = "/etc/labnodes/labnodes.toml"  # labnodes.config.DEFAULT_CONFIG (not imported: stdlib only)
# Run by the venv's python (argv[1]: the settings file): labnodes' version, then its verdict on the settings.
VENV_CHECK = """import sys, labnodes
print("labnodes", labnodes.__version__, flush=True)
from labnodes import config
try:
    config.load(sys.argv[1], env={})
    print("settings: ok")
except config.ConfigError as exc:
    print("settings:", exc)
"""

# service -> (supervisord program-name fragment, command-line fragment, *_host key, *_port key, title)
SERVICES = {
    "redis": ("redis", "redis-server", "redis_host", "redis_port", "Redis"),
    "flower": ("flower", " flower", None, "flower_port", "Flower"),
    "nameserver": ("nameserver", "labnodes nameserver", "ns_host", "ns_port", "Pyro4 name server"),
    "celery": ("worker", "celery worker", None, None, "Celery worker"),
    "ring": ("ring", "ring serve", "ring_host", "ring_port", "ring node"),
    "math": ("math", "math serve", "math_host", "math_port", "math server"),
    "file": ("file", "file serve", "file_host", "file_port", "file server"),
}
# Services a host uses as a client, by the service it runs (standalone reach checks; the control side knows groups).
CLIENT_OF = {"celery": ["redis"], "flower": ["redis"], "ring": ["nameserver"]}
TIMEOUT = 3.0  # s for each connection, request and supervisord call; the control side's context may set it
HOST_TITLES = {
    "host.hostname": "hostname is the inventory name",
    "host.settings": "labnodes settings file is valid and readable by root (and the service group) only",
    "host.supervisord": "supervisord answers",
    "host.labnodes": "labnodes is installed in its venv",
}
SERVICE_TITLES = {
    "running": "{t} is supervised and running",
    "listens": "{t} itself listens on the cluster address",
    "next": "ring node passes to its successor in group order",
    "broker": "the broker accepts this host's Redis password",
    "auth": "{t} refuses clients without credentials",
}


def title_of(cid: str) -> str:
    if cid in HOST_TITLES:
        return HOST_TITLES[cid]
    _, svc, what = cid.split(".")
    return SERVICE_TITLES[what].format(t=SERVICES[svc][4])


def plan(ctx: dict) -> list[dict]:
    """The checks a probe with this context makes on a host, as (id, title, layer, deps) dicts without outcome:
    what the control side reports as blocked when it cannot reach the host."""
    out = [dict(id=i, title=t, layer="host", deps=[]) for i, t in HOST_TITLES.items()]
    for svc in ctx.get("services") or []:
        b = f"service.{svc}"
        whats = ["running"] + (["broker"] if svc == "celery" else ["listens"])
        whats += ["next"] if svc == "ring" and ctx.get("ring_next") else []
        whats += ["auth"] if svc in ("redis", "flower") else []
        for w in whats:
            dep = {"running": "host.supervisord", "listens": f"{b}.running", "auth": f"{b}.listens",
                   "broker": "host.settings"}.get(w, f"{b}.running")
            out.append(dict(id=f"{b}.{w}", title=title_of(f"{b}.{w}"), layer="service", deps=[dep]))
    return out


def check(cid, title, layer, outcome, expected="", found="", hint="", deps=()):
    return {"id": cid, "title": title_of(cid) if cid in HOST_TITLES or cid.startswith("service.") else title, "layer": layer, "outcome": outcome, "expected": str(expected),
            "found": str(found), "hint": hint if outcome != "pass" else "", "deps": list(deps)}


def resolve(checks: list[dict], key=lambda c: c["id"]) -> list[dict]:
    """Mark every check whose dependency did not pass as blocked by the root failure beneath it."""
    by = {key(c): c for c in checks}

    def root(c, seen=()):
        for d in c.get("deps", ()):
            dep = by.get(d)
            if dep is None or d in seen:
                continue
            if dep["outcome"] == "fail":
                return d
            if dep["outcome"] == "blocked":
                return dep.get("blocked_by") or root(dep, (*seen, d)) or d
            r = root(dep, (*seen, d))
            if r:
                return r
        return None

    for c in checks:
        r = root(c)
        if r:
            c.update(outcome="blocked", blocked_by=r, hint="")
    return checks


# --- facts -------------------------------------------------------------------------------------------------------

def read_settings(path=None):
    """(settings dict or None, stat result or None, error text)."""
    path = path or SETTINGS
    try:
        st = os.stat(path)
    except OSError as exc:
        return None, None, f"{path}: {exc.strerror}"
    try:
        import tomllib
        with open(path, "rb") as fh:
            return tomllib.load(fh), st, ""
    except Exception as exc:  # noqa: BLE001 (reported as the check's finding)
        return None, st, f"{path}: {exc}"


def sh(args, timeout=None, stderr=False):
    """(exit status, stdout; with stderr=True stdout and stderr together) of a command; -1 if it cannot run."""
    try:
        p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT if stderr else subprocess.PIPE,
                           text=True, timeout=timeout or max(10.0, 3 * TIMEOUT))
        return p.returncode, p.stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return -1, str(exc)


def supervisor_socket(conf="/etc/supervisor/supervisord.conf") -> str | None:
    """The path of supervisord's XML-RPC socket as its configuration file names it, read as supervisor reads it
    (inline comments after ";" or "#" dropped: Debian's own file has `file=/var/run/supervisor.sock   ; (the path
    ...)`, and with the comment kept the look fell back to supervisorctl, 4-5 s a call on an emulated VM); None
    where there is none, or one this look does not handle (a password, a %(here)s expansion)."""
    import configparser

    cp = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"), strict=False)
    try:
        cp.read(conf)
        path = cp.get("unix_http_server", "file")
    except (configparser.Error, OSError):
        return None
    return None if cp.has_option("unix_http_server", "username") or "%" in path else path


def programs_rpc(conf="/etc/supervisor/supervisord.conf"):
    """supervisord's programs over its own XML-RPC socket (a third of supervisorctl's cost); None if that fails."""
    import http.client
    import xmlrpc.client

    path = supervisor_socket(conf)
    if path is None:
        return None

    class Unix(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(TIMEOUT)
            self.sock.connect(path)

    class Transport(xmlrpc.client.Transport):
        def make_connection(self, host):
            return Unix("localhost")

    supervisor = xmlrpc.client.ServerProxy("http://localhost", transport=Transport()).supervisor
    try:
        infos = supervisor.getAllProcessInfo()
    except (OSError, xmlrpc.client.Error, http.client.HTTPException):
        return None
    try:
        main_log = supervisor.readLog(-MAIN_LOG_TAIL, 0)
        startsecs = {c["name"]: float(c["startsecs"]) for c in supervisor.getAllConfigInfo()}
    except (OSError, xmlrpc.client.Error, http.client.HTTPException, KeyError, TypeError, ValueError):
        main_log, startsecs = "", {}  # no main log file (logfile=syslog), or a supervisord without them
    progs = {}
    for i in infos:
        name = i["name"] if i["group"] == i["name"] else f"{i['group']}:{i['name']}"
        pid = i["pid"] or None
        up = i["now"] - i["start"] if i["statename"] in ("STARTING", "RUNNING") and i["start"] else None
        progs[name] = {"state": i["statename"], "pid": pid, "cmdline": cmdline(pid) if pid else "",
                       "log": i.get("stdout_logfile") or "", "uptime": up, "process": i["name"]}
    return with_ends(progs, main_log, startsecs)


CRASHED = ("BACKOFF", "FATAL", "EXITED")  # states of a program that ended by itself: its log says why
# A program that ran past its startsecs and then ended by itself is started again by supervisord (autorestart) and
# shows RUNNING: only supervisord's own log tells. Less than RECENT seconds into the run after such an end, it has
# not shown it recovered (a ring node that cannot reach its name server ends every 30 s).
RECENT = 60.0
MAIN_LOG_TAIL = 65536  # bytes of supervisord's own log read for that: days of a quiet host, ~200 restarts
_EVENT = re.compile(r"(\S+ \S+) [A-Z]+ (spawned|success|exited|stopped|gave up): '?([^'\s]+)'?(?: \((.*)\))?")


def _when(stamp: str) -> float | None:
    """Seconds (for differences only) of a supervisord log line's time stamp, "2026-12-02 03:08:52,201"."""
    try:
        return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
    except ValueError:
        return None


def ends(main_log: str, startsecs: dict[str, float] | None = None) -> dict[str, list[str]]:
    """{process name: how each of its runs ended by itself, oldest first} from supervisord's own log (its last
    lines): the runs that ended ("exited: ...") after supervisord counted them started (a "success: ..." line, or
    a life of at least the program's startsecs, 1 s unless given: supervisord's own rule, which it also applies
    without a "success" line to a run that ends before its next look), since the program was last stopped by
    hand ("stopped: ..."), gave up ("gave up: ...": FATAL says so), or supervisord started. A run that ended within
    its startsecs is not counted: BACKOFF and FATAL show those."""
    out: dict[str, list[str]] = {}
    began: dict[str, tuple[float | None, bool]] = {}  # name -> (when its run was spawned, logged as started)
    for line in main_log.splitlines():
        if " supervisord started with pid " in line:
            out, began = {}, {}
            continue
        m = _EVENT.match(line)
        if not m:
            continue
        stamp, what, name, how = m.groups()
        if what == "spawned":
            began[name] = (_when(stamp), False)
        elif what == "success":
            began[name] = (began.get(name, (None, False))[0], True)
        elif what == "exited":
            spawned, started = began.pop(name, (None, False))
            t = _when(stamp)
            if started or (spawned is not None and t is not None
                           and t - spawned >= (startsecs or {}).get(name, 1.0)):
                out.setdefault(name, []).append(re.sub(r"; (not )?expected$", "", how or "?"))
        else:
            out.pop(name, None)
            began.pop(name, None)
    return out


def with_ends(progs: dict, main_log: str, startsecs: dict[str, float] | None = None) -> dict:
    """progs, each with "ended": {"times", "last", "cut"} when it ended by itself since it was last started (ends),
    else None; "cut" when the log read starts after that start, so the count is a lower bound."""
    found = ends(main_log, startsecs)
    cut = len(main_log.encode(errors="replace")) >= MAIN_LOG_TAIL
    for name, p in progs.items():
        how = found.get(p.pop("process", name.rpartition(":")[2]))
        p["ended"] = {"times": len(how), "last": how[-1], "cut": cut} if how else None
    return progs


def recovering(p: dict) -> bool:
    """True for a program that ended by itself and has been running again for less than RECENT seconds (or is
    starting again): running, but not to be counted on yet."""
    return bool(p.get("ended")) and p["state"] in ("STARTING", "RUNNING") and (p.get("uptime") or 0) < RECENT


def ended_note(p: dict) -> str:
    """How a program that ended by itself since it was started is doing, in words ("" for one that did not)."""
    e = p.get("ended")
    if not e:
        return ""
    times = f"{'at least ' if e['cut'] else ''}{e['times']} time{'s' if e['times'] != 1 else ''}"
    note = f"it ended by itself {times} since it was started (last: {e['last']}) and supervisord started it again"
    up = p.get("uptime")
    if up is None or p["state"] not in ("STARTING", "RUNNING"):
        return note
    return note + "; this run is " + (f"{up:.0f} s" if up < 120 else f"{up / 60:.0f} min" if up < 7200
                                      else f"{up / 3600:.0f} h") + " old"


# a line that names an error: "labnodes: error: ...", "ValueError: ..." (no word boundary before its "Error")
ERROR_LINE = re.compile(r"error\b|exception\b|traceback|\bfatal\b|\bcritical\b", re.I)


def last_line(text: str, error: bool = False) -> str:
    """The last non-empty line of a log's tail; with error=True the last one that names an error, if any: the line
    a program that supervisord already started again wrote as it ended (the new run's lines come after it)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if error:
        lines = [ln for ln in lines if ERROR_LINE.search(ln)] or lines
    return lines[-1][:300] if lines else ""


def log_ends(path, limit=4096, error: bool = False) -> str:
    """last_line() of a program's log ("" if there is none): why a crashed program ended."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - limit * (4 if error else 1)))
            return last_line(fh.read().decode(errors="replace"), error)
    except (OSError, ValueError):
        return ""


def programs():
    """supervisord's programs: {name: {"state", "pid", "cmdline", "uptime" (s, or None when not running), "ended"
    (with_ends), and "log" (its log file) where supervisord says}}; None if supervisord does not answer."""
    fast = programs_rpc()
    if fast is not None:
        return fast
    rc, out = sh(["supervisorctl", "status"])
    if rc < 0 or (rc != 0 and not re.search(r"^\S+\s+[A-Z]+", out, re.M)) or "refused" in out or "no such" in out:
        return None
    progs = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) < 2 or not f[1].isupper():
            continue
        m = re.search(r"pid (\d+)", line)
        pid = int(m.group(1)) if m else None
        up = re.search(r"uptime (?:(\d+) days?, )?(\d+):(\d+):(\d+)", line)
        up = (int(up[1] or 0) * 86400 + int(up[2]) * 3600 + int(up[3]) * 60 + int(up[4])) if up else None
        progs[f[0]] = {"state": f[1], "pid": pid, "cmdline": cmdline(pid) if pid else "", "uptime": up}
    rc, main_log = sh(["supervisorctl", "maintail", f"-{MAIN_LOG_TAIL}"])
    return with_ends(progs, main_log if rc == 0 else "")


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def family(pid):
    """pid and all its descendants."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p not in out:
            out.add(p)
            todo += children.get(p, [])
    return out


def listeners():
    """[(address, port, {pid: process name})] from `ss -ltnpH`."""
    rc, out = sh(["ss", "-ltnpH"])
    found = []
    for line in out.splitlines() if rc == 0 else []:
        f = line.split()
        if len(f) < 4:
            continue
        addr, _, port = f[3].rpartition(":")
        pids = {int(p): n for n, p in re.findall(r'\("([^"]*)",pid=(\d+)', line)}
        found.append((addr.strip("[]"), int(port) if port.isdigit() else 0, pids))
    return found


def connect(address, port, timeout=None):
    try:
        with socket.create_connection((address, int(port)), timeout=timeout or TIMEOUT):
            return ""
    except OSError as exc:
        return exc.strerror or str(exc)
    except (TypeError, ValueError):
        return f"not an address and port: {address!r}, {port!r}"


def talk(address, port, payload: bytes, timeout=None) -> str:
    """Send payload, return the first reply line (or an error text in angle brackets)."""
    try:
        with socket.create_connection((address, int(port)), timeout=timeout or TIMEOUT) as s:
            s.sendall(payload)
            data = b""
            while b"\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            return data.decode(errors="replace").strip().splitlines()[0] if data.strip() else "<no reply>"
    except OSError as exc:
        return f"<{exc.strerror or exc}>"
    except (TypeError, ValueError):
        return f"<not an address and port: {address!r}, {port!r}>"


def resp(*words: str) -> bytes:
    out = f"*{len(words)}\r\n"
    for w in words:
        out += f"${len(w.encode())}\r\n{w}\r\n"
    return out.encode()


# --- checks ------------------------------------------------------------------------------------------------------

class Probe:
    def __init__(self, ctx: dict):
        self.ctx = ctx
        self.settings, self.st, self.settings_error = read_settings()
        self.s = self.settings or {}
        self.vars = ctx.get("vars", {})
        self.progs = programs()
        self.listen = listeners()
        self.checks: list[dict] = []
        self.venv = self.find_venv()
        self.facts: dict = {"programs": self.progs or {}, "venv": self.venv}
        self.installed = self.run_venv() if self.venv else None  # (exit status, output) of VENV_CHECK
        judged = next((ln for ln in (self.installed or (0, ""))[1].splitlines() if ln.startswith("settings: ")), "")
        if self.settings is not None and judged and judged != "settings: ok":
            self.settings_error = judged.removeprefix("settings: ")  # labnodes' own rules refuse a value
            self.settings, self.s = None, {}  # as when the file is not TOML: its values are not used

    def add(self, *a, **kw):
        self.checks.append(check(*a, **kw))

    def setting(self, key):
        if key is None:
            return None
        if key in self.s:
            return self.s[key]
        return self.vars.get(key)

    def address(self):
        return self.ctx.get("address") or self.s.get("ring_host")

    def find_venv(self):
        venv = self.s.get("venv") or self.vars.get("labnodes_venv")
        venv = venv if isinstance(venv, str) else None  # a wrong value: labnodes' rules judge it below
        if not venv and not self.ctx.get("host") and sys.prefix != sys.base_prefix:
            venv = sys.prefix  # `labnodes selftest` itself runs from the venv
        if not venv:
            for p in (self.progs or {}).values():
                exe = p["cmdline"].split(" ")[0]
                if exe.endswith("/bin/python") or exe.endswith("/bin/python3"):
                    if "labnodes" in p["cmdline"] or "celery" in p["cmdline"]:
                        return os.path.dirname(os.path.dirname(exe))
        return venv

    def run_venv(self):
        # the package imports in the venv (running `labnodes --version` imports every program module, Celery
        # included: 3x the cost; the services and app runs run the CLI itself), and its rules judge the settings
        return sh([f"{self.venv}/bin/python", "-c", VENV_CHECK, SETTINGS], stderr=True)

    # host layer
    def host_checks(self):
        name = self.ctx.get("host")
        if name:
            got = socket.gethostname()
            self.add("host.hostname", "hostname is the inventory name", "host", "pass" if got == name else "fail",
                     name, got, "set the hostname to the host's inventory name (hostnamectl set-hostname)")
        # 0600 where the programs run as root (netns); 0640 with the service user's group on VMs and lab machines
        mode = stat.S_IMODE(self.st.st_mode) if self.st else None
        ok = self.settings is not None and self.st is not None and self.st.st_uid == 0 \
            and (mode == 0o600 or (mode == 0o640 and self.st.st_gid != 0))
        found = self.settings_error or (f"owner uid {self.st.st_uid}, gid {self.st.st_gid}, mode {mode:04o}"
                                        if self.st else "")
        self.add("host.settings", "labnodes settings file is valid and readable by root (and the service group) only",
                 "host", "pass" if ok else "fail",
                 f"{SETTINGS}: TOML that labnodes accepts, owner root, mode 0600 (or 0640 with the service user's "
                 "group)", found,
                 "re-run provisioning (fab provision); never chmod the settings file wider: it holds secrets")
        if self.progs is None:
            self.add("host.supervisord", "supervisord answers", "host", "fail", "supervisorctl status answers",
                     "no answer from supervisord", "start supervisord (its log: /var/log/supervisor/)")
        else:
            self.add("host.supervisord", "supervisord answers", "host", "pass", "supervisorctl status answers",
                     f"{len(self.progs)} programs")
        self.facts["file_root"] = self.s.get("file_root")
        if self.venv:
            self.labnodes_check(self.venv)

    def labnodes_check(self, venv):
        rc, out = self.installed
        ok = rc == 0 and out.startswith("labnodes ") and os.access(f"{venv}/bin/labnodes", os.X_OK)
        lines = [ln for ln in out.strip().splitlines() if not ln.startswith("settings: ")]
        last = (lines[:1] if ok else lines[-1:]) or [f"exit {rc}"]  # the version, or the error's last line
        last = last[0]
        self.add("host.labnodes", "", "host", "pass" if ok else "fail",
                 f"labnodes importable by {venv}/bin/python and {venv}/bin/labnodes executable",
                 last.strip()[:200] + ("" if os.access(f"{venv}/bin/labnodes", os.X_OK)
                                                        else f"; no executable {venv}/bin/labnodes"),
                 "re-run provisioning (fab provision) to reinstall the labnodes venv")

    # service layer
    def find(self, svc):
        frag, cmd, *_ = SERVICES[svc]
        for name, p in (self.progs or {}).items():
            if frag in name:
                return name, p
        for name, p in (self.progs or {}).items():
            if cmd in f" {p['cmdline']}":
                return name, p
        return None, None

    def services(self):
        if self.progs is None:  # the checks are still due: placeholders, blocked by host.supervisord (resolve)
            for c in plan(self.ctx):
                if c["layer"] == "service" and not c["id"].endswith(".broker"):
                    self.add(c["id"], c["title"], "service", "fail", deps=c["deps"])
            for svc in self.ctx.get("services") or []:
                if svc == "celery":  # asks the broker, not supervisord
                    self.celery("service.celery", None)
            return
        wanted = self.ctx.get("services")
        if wanted is None:  # standalone: whatever supervisord runs
            wanted = [s for s in SERVICES if self.find(s)[0]]
        for svc in wanted:
            self.service(svc)

    def service(self, svc):
        _, _, host_key, port_key, title = SERVICES[svc]
        name, p = self.find(svc)
        base = f"service.{svc}"
        hint_run = f"supervisorctl start {name}; its log is in /var/log/labnodes/" if name else \
            f"the {title} is not a supervisord program here: re-run provisioning (fab provision)"
        again = p is not None and recovering(p)  # RUNNING, but it ended by itself less than RECENT s ago
        running = p is not None and p["state"] == "RUNNING" and not again
        found = (f"{name} {p['state']}" + (f": {ended_note(p)}" if p.get("ended") else "")) if p else "no such program"
        why = log_ends(p.get("log"), error=again) if p and (p["state"] in CRASHED or again) and p.get("log") else ""
        if why and again:  # supervisord keeps starting it; restarting it by hand would end the same way
            hint_run = (f"it ends by itself and supervisord starts it again: fix what its log ({p['log']}) says, "
                        f"then supervisorctl restart {name}")
        elif why:  # starting it again would end the same way
            hint_run = f"it ends by itself: fix what its log ({p['log']}) says, then supervisorctl start {name}"
        self.add(f"{base}.running", f"{title} is supervised and running", "service",
                 "pass" if running else "fail",
                 f"a supervisord program for the {title}, RUNNING, and not started again less than {RECENT:g} s ago "
                 "after it ended by itself",
                 found + (f"; its log's last error: {why}" if why and again else f"; its log ends: {why}" if why else ""),
                 hint_run, deps=["host.supervisord"])
        if svc == "celery":
            self.celery(base, p)
            return
        if svc == "ring" and self.ctx.get("ring_next"):
            self.ring_next(base, p)
        address = self.address()
        port = self.setting(port_key)
        try:
            port = int(port) if port not in (None, "", 0, "0") else None
        except (TypeError, ValueError):  # only where the venv could not judge the settings (the module docstring)
            self.add(f"{base}.listens", f"{title} listens on the cluster address", "service", "fail",
                     f"{port_key} in {SETTINGS}: a port number", f"{port_key} = {port!r}",
                     "re-run provisioning (fab provision)", deps=[f"{base}.running"])
            return
        mine = family(p["pid"]) if p and p["pid"] else set()
        own = [(a, pt) for a, pt, pids in self.listen if mine & set(pids)]
        want = f"{address or '<no address: ring_host missing from the settings>'}:{port if port else '<any port>'}"
        good = [x for x in own if x[0] == address and (port is None or x[1] == port)]
        wild = [x for x in own if x[0] in ("0.0.0.0", "*", "::", "") or x[0].startswith("127.")]
        if good and not wild:
            outcome, found = "pass", ", ".join(f"{a}:{pt}" for a, pt in own) + f" (pid {p['pid']})"
        else:
            outcome = "fail"
            others = [f"{a}:{pt} held by {', '.join(f'{n} pid {i}' for i, n in pids.items())}"
                      for a, pt, pids in self.listen if a == address and port and pt == port and not mine & set(pids)]
            found = (f"{title} (pid {p['pid'] if p else '-'}) listens on "
                     f"{', '.join(f'{a}:{pt}' for a, pt in own) or 'nothing'}") + (f"; {others[0]}" if others else "")
        self.add(f"{base}.listens", f"{title} listens on the cluster address", "service", outcome,
                 f"{title} itself listening on {want} and on no wildcard or loopback address", found,
                 f"bind the {title} to this host's cluster address ({host_key or 'its address'} in {SETTINGS}); "
                 f"restart it", deps=[f"{base}.running"] + ([] if address else ["host.settings"]))
        # without an address (standalone, settings unreadable) it is blocked by host.settings, not a finding
        if svc == "redis":
            self.redis_auth(base, address, port or (good or own or [(None, 0)])[0][1])
        if svc == "flower":
            self.flower_auth(base, address, (good or own or [(None, 0)])[0][1])

    def ring_next(self, base, p):
        want = f"--name {self.ctx['host']} --next {self.ctx['ring_next']}"
        cl = p["cmdline"] if p else ""
        args = cl.split()
        got = {k: args[i + 1] for i, k in enumerate(args[:-1]) if k in ("--name", "--next")}
        ok = got.get("--name") == self.ctx["host"] and got.get("--next") == self.ctx["ring_next"]
        self.add(f"{base}.next", "ring node passes to its successor in group order", "service",
                 "pass" if ok else "fail", want, " ".join(f"{k} {v}" for k, v in got.items()) or cl or "no command",
                 "the successor is the next host of group ring (the last wraps to the first): re-run provisioning",
                 deps=[f"{base}.running"])

    def redis_auth(self, base, address, port):
        anon = talk(address, port, resp("PING"))
        pw = str(self.s.get("redis_password", ""))
        auth = [str(self.s["redis_user"])] if self.s.get("redis_user") else []
        authed = (talk(address, port, resp("AUTH", *auth, pw) + resp("PING")) if pw
                  else "<no redis_password in settings>")
        ok = anon.startswith("-NOAUTH") and authed.startswith("+OK")
        self.add(f"{base}.auth", "Redis refuses clients without the password and accepts the cluster's",
                 "service", "pass" if ok else "fail", "PING without password -> -NOAUTH; AUTH <password> -> +OK",
                 f"without password: {anon}; with it: {authed.split(chr(13))[0]}",
                 "set requirepass in redis.conf to the redis_password of the settings; never disable protection",
                 deps=[f"{base}.listens"])

    def flower_auth(self, base, address, port):
        answers = {page: talk(address, port, f"GET {page} HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
                   for page in ("/", "/metrics")}
        ok = all(got.split()[1:2] == ["401"] for got in answers.values())
        self.add(f"{base}.auth", "Flower asks for a password, on its monitor pages too", "service",
                 "pass" if ok else "fail", "HTTP 401 without credentials for / and /metrics",
                 "; ".join(f"{page}: {got}" for page, got in answers.items()),
                 "run Flower with basic auth (FLOWER_BASIC_AUTH) through labnodes.flower_serve, which also guards "
                 "/metrics", deps=[f"{base}.listens"])

    def celery(self, base, p):
        host, port = self.s.get("redis_host"), self.setting("redis_port")
        pw = str(self.s.get("redis_password", ""))
        if not host or not port:
            got = f"redis_host/redis_port missing from {SETTINGS}"
        else:
            auth = [str(self.s["redis_user"])] if self.s.get("redis_user") else []
            got = talk(host, port, resp("AUTH", *auth, pw) + resp("PING"))
        ok = got.startswith("+OK")
        self.add(f"{base}.broker", "the broker accepts this host's Redis password", "service",
                 "pass" if ok else "fail", f"AUTH with redis_password from {SETTINGS} at {host}:{port} -> +OK",
                 got, "redis_password in this host's settings must equal the broker's requirepass: re-provision",
                 deps=["host.settings"])  # true or not whether the worker runs: a wrong password also stops it

    # reach layer
    def reach(self):
        peers = self.ctx.get("peers")
        if peers is not None:  # from the control machine: every other host's sshd
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(max_workers=max(1, min(32, len(peers)))) as pool:
                errs = pool.map(lambda item: connect(*item[1]), peers.items())
            self.facts["reach"] = dict(zip(peers, errs))
            return
        used = set()
        for svc in list(self.ctx.get("services") or [s for s in SERVICES if self.find(s)[0]]):
            used.update(CLIENT_OF.get(svc, []))
        if not self.find("redis")[0] and not self.find("math")[0] and not self.find("ring")[0]:
            used.update(["redis", "nameserver", "math", "file"])  # a client host talks to every server
        for svc in sorted(used):
            _, _, host_key, port_key, title = SERVICES[svc]
            addr, port = self.s.get(host_key), self.setting(port_key)
            if not addr or not port:
                continue
            err = connect(addr, port)
            the = "" if title in ("Redis", "Flower") else "the "
            self.add(f"reach.{svc}", f"reaches {the}{title} at {addr}:{port}", "reach", "fail" if err else "pass",
                     f"a TCP connection to {addr}:{port}", err or "connected",
                     f"is the {title} up, and is this host's network up (ip addr; ping {addr})?")

    def faults(self):
        """labkit's own faults in force on this host (`fab impair`, `partition`, `fault`): their records, from the
        directory the control side names (labkit.faults.STATE_DIR), so `fab check` can say a failure is one."""
        where = self.ctx.get("faults_dir")
        if not where:
            return
        records = []
        for path in sorted(glob.glob(os.path.join(where, "*.json"))):
            try:
                with open(path) as f:
                    records.append(json.load(f))
            except (OSError, ValueError):
                continue  # removed by a heal meanwhile, or half-written: not in force
        self.facts["faults"] = [r for r in records if isinstance(r, dict)]

    def run(self):
        self.reach()
        self.host_checks()
        self.services()
        self.faults()
        return {"checks": self.checks, "facts": self.facts, "time": time.time()}


def probe(ctx: dict) -> dict:
    return Probe(ctx).run()


# --- CLI ---------------------------------------------------------------------------------------------------------

def print_checks(checks, out=sys.stdout):
    marks = {"pass": "PASS", "fail": "FAIL", "blocked": "BLOCKED"}
    for c in checks:
        line = f"{marks[c['outcome']]:8} {c['id']:28} {c['title']}"
        if c["outcome"] == "fail":
            line += f"\n         expected: {c['expected']}\n         found:    {c['found']}\n         hint:     {c['hint']}"
        elif c["outcome"] == "blocked":
            line += f"  (blocked by {c['blocked_by']})"
        print(line, file=out)


def main_standalone(json_out=False, ctx=None) -> int:
    result = probe(ctx or {})
    resolve(result["checks"])
    if json_out:
        print(json.dumps(result))
    else:
        print_checks(result["checks"])
        n = {o: sum(c["outcome"] == o for c in result["checks"]) for o in ("pass", "fail", "blocked")}
        print(f"\n{socket.gethostname()}: {n['pass']} passed, {n['fail']} failed, {n['blocked']} blocked")
    return 1 if any(c["outcome"] != "pass" for c in result["checks"]) else 0


def register(subparsers) -> None:
    p = subparsers.add_parser("selftest", help="check this host's settings, services and reach (no control machine)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_selftest)


def _cmd_selftest(args, settings) -> int:
    """settings is None when they cannot be loaded: host.settings then says why, and the other checks still run."""
    import dataclasses  # the effective settings (file, environment, labnodes' defaults) fill what the file omits
    return main_standalone(args.json, {"vars": dataclasses.asdict(settings) if settings else {}})


def supervised() -> dict | None:
    """What `fab status` shows of a host's programs (`--programs`): programs() without the command lines, and
    "log_ends" for each that ended by itself and is not running again for long (its state or recovering())."""
    progs = programs()
    if progs is None:
        return None
    for name, p in progs.items():
        del p["cmdline"]
        again = recovering(p)
        if p["state"] in CRASHED or again:
            p["log_ends"] = log_ends(p["log"], error=again) if p.get("log") else \
                last_line(sh(["supervisorctl", "tail", f"-{16384 if again else 1600}", name])[1], error=again)
    return progs


if __name__ == "__main__":  # run by the control side as `python3 - --context JSON` (labkit/checks), `--programs`
    _ctx = json.loads(sys.argv[sys.argv.index("--context") + 1]) if "--context" in sys.argv else {}
    TIMEOUT = float(_ctx.get("timeout", TIMEOUT))  # a slow host (an emulated VM) gets more than 3 s
    print(json.dumps({"programs": supervised()} if "--programs" in sys.argv else probe(_ctx)))
