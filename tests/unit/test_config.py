"""Settings precedence and validation: defaults < file < LABNODES_* environment < flags."""

import json

import pytest

from labnodes import config


@pytest.fixture
def conf(tmp_path):
    path = tmp_path / "labnodes.toml"
    path.write_text('math_port = 6000\nredis_host = "10.0.0.5"\nring_timeout = 2\n')
    return path


def test_defaults_bind_loopback_and_hold_no_secret():
    s = config.load(env={})
    assert {s.redis_host, s.ns_host, s.ring_host, s.math_host, s.file_host} == {"127.0.0.1"}
    assert s.redis_password == "" and s.hmac_key == ""


def test_file_overrides_defaults(conf):
    s = config.load(conf, env={})
    assert (s.math_port, s.redis_host, s.ring_timeout) == (6000, "10.0.0.5", 2.0)


def test_environment_overrides_file_and_flags_override_environment(conf):
    env = {"LABNODES_MATH_PORT": "7000", "LABNODES_REDIS_HOST": "10.0.0.6"}
    s = config.load(conf, env=env, overrides={"math_port": 8000, "redis_host": None})
    assert s.math_port == 8000  # flag wins
    assert s.redis_host == "10.0.0.6"  # unset flag (None) leaves the environment's value


def test_config_path_from_environment(conf):
    assert config.load(env={"LABNODES_CONFIG": str(conf)}).math_port == 6000


@pytest.mark.parametrize(
    "text, message",
    [
        ("nonsense = 1\n", "unknown setting 'nonsense'"),
        ('math_port = "many"\n', "math_port must be int"),
        ("math_port = 1.5\n", "math_port must be int"),
        ("math_port = true\n", "math_port must be int"),
        ("redis_host = 5\n", "redis_host must be str"),
        ("math_port = \n", "not valid TOML"),
    ],
)
def test_bad_config_file_names_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError, match=message):
        config.load(path, env={})


@pytest.mark.parametrize("source, value", [("file", 99999), ("file", -1), ("env", "65536"), ("flag", 99999)])
def test_a_port_out_of_range_is_refused_from_every_source(tmp_path, source, value):
    """The socket module took port 99999 as 34463 (99999 mod 65536): `labnodes math ask --port 99999` reached
    whatever listened there."""
    path = tmp_path / "c.toml"
    path.write_text(f"math_port = {value}\n" if source == "file" else "")
    env = {"LABNODES_FILE_PORT": value} if source == "env" else {}
    flags = {"ns_port": value} if source == "flag" else {}
    with pytest.raises(config.ConfigError, match=r"_port must be a port number 0-65535 \(0: any free port\), got "):
        config.load(path, env=env, overrides=flags)


def test_port_zero_and_65535_are_ports():
    assert config.load(env={"LABNODES_MATH_PORT": "0"}, overrides={"file_port": 65535}).file_port == 65535


@pytest.mark.parametrize("source, name, value, says", [
    ("file", "ring_timeout", "-1", "ring_timeout must be a number of seconds > 0 and at most 86400, got -1"),
    ("env", "file_idle_timeout", "0", "file_idle_timeout must be a number of seconds > 0 and at most 86400, got 0"),
    ("env", "celery_timeout", "nan", "celery_timeout must be a number of seconds > 0 and at most 86400, got nan"),
    ("flag", "math_idle_timeout", float("inf"), "math_idle_timeout must be a number of seconds > 0 and at most"),
    ("file", "celery_visibility_timeout", "86401", "at most 86400, got 86401"),
    ("env", "file_min_rate", "-5", "file_min_rate must be a number 0 or more, got -5"),
    ("flag", "celery_concurrency", 0, "celery_concurrency must be 1 or more, got 0"),
    ("file", "ring_size", "-3", "ring_size must be 1 or more, got -3"),
    ("env", "redis_db", "-1", "redis_db must be 0 or more, got -1"),
])
def test_a_number_outside_its_rule_is_refused_from_every_source_naming_it(tmp_path, source, name, value, says):
    """A socket took a timeout of -1 or NaN as a traceback (`labnodes math ask --timeout -1`: ValueError: Timeout
    value out of range), 0 as "cannot connect: Operation now in progress", inf as an OverflowError."""
    path = tmp_path / "c.toml"
    path.write_text(f"{name} = {value}\n" if source == "file" else "")
    env = {f"LABNODES_{name.upper()}": value} if source == "env" else {}
    flags = {name: value} if source == "flag" else {}
    where = {"file": str(path), "env": f"LABNODES_{name.upper()}", "flag": "command line"}[source]
    with pytest.raises(config.ConfigError) as err:
        config.load(path, env=env, overrides=flags)
    assert str(err.value).startswith(f"{where}: ") and says in str(err.value)


def test_the_edges_of_each_rule_are_allowed():
    s = config.load(env={"LABNODES_RING_TIMEOUT": "0.001", "LABNODES_FILE_MIN_RATE": "0", "LABNODES_REDIS_DB": "0"},
                    overrides={"celery_visibility_timeout": 86400, "ring_size": 1})
    assert (s.ring_timeout, s.file_min_rate, s.redis_db, s.celery_visibility_timeout, s.ring_size) == \
        (0.001, 0.0, 0, 86400.0, 1)


@pytest.mark.parametrize("text, says", [("-1", "> 0 and at most 86400, got -1"), ("0", "got 0"), ("nan", "got nan"),
                                        ("inf", "got inf"), ("abc", "must be a number of seconds, got 'abc'")])
def test_a_timeout_flag_that_is_no_setting_has_the_same_rule_in_argparses_words(text, says):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match=says):
        config.seconds(text)
    assert config.seconds("2.5") == 2.5


def test_missing_config_file_is_an_error_not_a_silent_default(tmp_path):
    with pytest.raises(config.ConfigError, match="cannot read config file"):
        config.load(tmp_path / "absent.toml", env={})


@pytest.mark.parametrize(
    "env, message",
    [({"LABNODES_MATH_PORT": "x"}, "LABNODES_MATH_PORT: math_port must be int"),
     ({"LABNODES_NO_SUCH": "1"}, "unknown setting LABNODES_NO_SUCH")],
)
def test_bad_environment_names_the_variable(env, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load(env=env)


def test_required_secret_says_how_to_provide_it():
    with pytest.raises(config.ConfigError, match="LABNODES_HMAC_KEY"):
        config.require(config.load(env={}), "hmac_key")


@pytest.mark.parametrize("json_out", [False, True])
def test_bad_settings_end_a_command_in_one_line_and_with_json_as_an_error_object(tmp_path, capsys, json_out):
    """Exit 2 and labnodes' line on stderr; a program that asked for `--json` also gets {"error": {...}} with the
    code "settings", so it can tell bad settings from an unreachable server without reading the message."""
    from labnodes import cli

    path = tmp_path / "labnodes.toml"
    path.write_text('math_port = "abc"\n')
    status = cli.main(["--config", str(path), "math", "ask", *(["--json"] if json_out else []), "48,18"])
    out = capsys.readouterr()
    message = f"{path}: math_port must be int, got 'abc'"
    assert (status, out.err) == (2, f"labnodes: error: {message}\n")
    if json_out:
        assert json.loads(out.out) == {"error": {"message": message, "code": "settings", "address": ""}}
    else:
        assert out.out == ""
