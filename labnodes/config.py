"""Settings for every labnodes program: defaults < config file < LABNODES_* environment < command-line flags.

The config file is flat TOML whose keys are the field names of `Settings` (the Ansible roles template it):

    redis_host = "10.77.1.10"
    redis_password = "..."

Its path is `--config PATH`, else `$LABNODES_CONFIG`, else `/etc/labnodes/labnodes.toml` if that exists.
Each field can also be set as `LABNODES_<FIELD>` (for example `LABNODES_MATH_PORT=6000`).
Every `*_port` setting is 0-65535 (0: a server takes any free port); every `*_timeout` (and a `--timeout` flag)
is a number of seconds > 0 and at most a day (`seconds`); a count (`COUNTS`) is 1 or more, `redis_db` and
`file_min_rate` 0 or more. A value outside its rule is one line naming the setting and where it came from: a
socket took -1 or NaN as a Python traceback, 0 as "Operation now in progress", inf as an overflow.
Defaults bind to 127.0.0.1 and hold no secret: programs that need a secret refuse to start without one.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path

from labnodes import LabnodesError

DEFAULT_CONFIG = Path("/etc/labnodes/labnodes.toml")
ENV_PREFIX = "LABNODES_"
# Seconds two hosts' clocks may differ by. A Celery job carries its expiry as a time on the client's clock and a
# worker compares it with its own: jobs expire this much later than the client's waits need (celery_app.job_expires),
# so a worker whose clock runs ahead (a lab machine without NTP, a VM paused, a clock stepped) still runs them.
# `fab check` fails host.clock on a host more than half of it away from the control machine's clock.
CLOCK_ALLOWANCE = 60.0
MAX_SECONDS = 86400.0  # the longest timeout a setting or flag may ask for: a day
COUNTS = ("celery_concurrency", "ring_size", "ring_max_laps", "file_max_size", "file_max_connections")


class ConfigError(LabnodesError):
    """A setting is missing, unknown or of the wrong type; the message says which and where."""

    def __init__(self, message: str):
        super().__init__(message, code="settings")


@dataclasses.dataclass(frozen=True)
class Settings:
    log_level: str = "INFO"  # DEBUG, INFO, WARNING, ERROR
    log_rate: int = 100  # DEBUG/INFO lines a program writes a second at most, the rest counted (labnodes.logs); 0: all
    venv: str = ""  # where this labnodes is installed (the role writes it; the control side runs <venv>/bin/labnodes)

    # Celery: Redis is both broker and result backend.
    redis_host: str = "127.0.0.1"
    redis_port: int = 6379
    redis_db: int = 0
    redis_user: str = ""  # Redis ACL user (a cluster's Celery user may run only what Celery needs); "": default
    redis_password: str = ""  # no default secret; Redis on a cluster always has one
    celery_concurrency: int = 2  # worker processes per worker host
    celery_timeout: float = 30.0  # seconds a client waits for one result
    celery_visibility_timeout: float = 90.0  # seconds before a task held by a lost worker is re-delivered

    # Pyro4: name server and ring nodes.
    ns_host: str = "127.0.0.1"
    ns_port: int = 9090
    ns_storage: str = ""  # sqlite file where the name server keeps its names across restarts; "": in memory
    hmac_key: str = ""  # required by the name server and the ring; no default
    ring_host: str = "127.0.0.1"  # address a ring node binds and advertises
    ring_port: int = 0  # 0: any free port (the name server records the real one)
    ring_timeout: float = 5.0  # seconds per hop before a hop is declared dead
    ring_size: int = 3  # ring hosts (the playbook writes the inventory's count); sizes the lap's timeouts
    ring_max_laps: int = 100  # bound on laps round the ring for one message
    ring_idle_timeout: float = 60.0  # a Pyro daemon closes links idle this long; ring nodes reconnect

    # Socket math server.
    math_host: str = "127.0.0.1"
    math_port: int = 5050
    math_idle_timeout: float = 60.0  # seconds a connection may stay silent

    # File transfer server.
    file_host: str = "127.0.0.1"
    file_port: int = 5051
    file_root: str = "/var/lib/labnodes/files"  # every name is confined to this directory
    file_max_size: int = 4 * 1024**3  # bytes; larger transfers are refused before any byte is written
    file_idle_timeout: float = 60.0  # seconds without progress before a transfer is abandoned
    file_max_connections: int = 32  # connections served at once; more get a "busy" ERR frame
    file_min_rate: float = 16384.0  # bytes/s a transfer must average after file_idle_timeout s, or "too-slow"

    # Flower, Celery's web monitor on the broker (its program takes the port from the role; recorded here so the
    # control side can show where it is).
    flower_port: int = 5555

    def replace(self, **changes) -> Settings:
        return dataclasses.replace(self, **changes)


FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def check_seconds(value: float, what: str = "") -> float:
    """The rule for every timeout: a number of seconds > 0 and at most MAX_SECONDS (`what` names it)."""
    if not 0 < value <= MAX_SECONDS:  # NaN fails too
        rule = f"must be a number of seconds > 0 and at most {MAX_SECONDS:g}, got {value:g}"
        raise ConfigError(f"{what} {rule}" if what else rule)
    return value


def seconds(text: str) -> float:
    """argparse type of a --timeout flag that is no setting: check_seconds' rule, in argparse's words."""
    import argparse

    try:
        return check_seconds(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _coerce(name: str, value, source: str):
    kind = FIELDS[name].type
    try:
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            number = int(value)
            if name.endswith("_port") and not 0 <= number <= 65535:
                # a socket call would take 99999 as 99999 mod 65536 and reach another port without a word
                raise ConfigError(f"{source}: {name} must be a port number 0-65535 (0: any free port), got {number}")
            if (name in COUNTS and number < 1) or (name == "redis_db" and number < 0):
                raise ConfigError(f"{source}: {name} must be {1 if name in COUNTS else 0} or more, got {number}")
            return number
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if name.endswith("_timeout"):
                return check_seconds(number, f"{source}: {name}")
            if not 0 <= number < float("inf"):  # NaN fails too
                raise ConfigError(f"{source}: {name} must be a number 0 or more, got {number:g}")
            return number
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {name} must be {kind}, got {value!r}") from None


def load(
    path: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Settings:
    """Build Settings from the config file, then the environment, then `overrides` (flags; None means unset)."""
    env = os.environ if env is None else env
    values: dict[str, object] = {}

    if path is None and env.get(ENV_PREFIX + "CONFIG"):
        path = env[ENV_PREFIX + "CONFIG"]
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        for key, value in data.items():
            if key not in FIELDS:
                raise ConfigError(f"{path}: unknown setting {key!r}")
            values[key] = _coerce(key, value, str(path))

    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "CONFIG":
            continue
        name = key[len(ENV_PREFIX):].lower()
        if name not in FIELDS:
            raise ConfigError(f"environment: unknown setting {key}")
        values[name] = _coerce(name, value, key)

    for name, value in (overrides or {}).items():
        if value is not None and name in FIELDS:
            values[name] = _coerce(name, value, "command line")  # a flag's help names its setting

    if values.get("log_rate", 0) < 0:
        raise ConfigError(f"log_rate must be 0 (no cap) or a number of lines a second, got {values['log_rate']}")
    return Settings(**values)


def require(settings: Settings, name: str) -> str:
    """Return a secret setting, or raise a ConfigError that says how to provide it."""
    value = getattr(settings, name)
    if not value:
        raise ConfigError(
            f"{name} is not set: put it in the config file or set {ENV_PREFIX}{name.upper()}"
        )
    return value
