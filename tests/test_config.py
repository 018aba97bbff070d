"""Configuration: one key table for TOML, HASTAPLE_* and flags."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from click.testing import CliRunner

from hastaple import config
from hastaple.app.cli import cli
from hastaple.core.schedule import DEFAULT_POLICY
from hastaple.errors import ConfigError


def test_zero_config_common_case(tmp_path):
    """--haproxy-config alone is enough; everything else has a default."""
    cfg = config.load(None, {"HOME": str(tmp_path)}, {"haproxy_config": ("/etc/h.cfg",)})
    assert cfg.haproxy_configs == (Path("/etc/h.cfg"),)
    assert cfg.metrics_address == "127.0.0.1:9877"
    assert cfg.policy == DEFAULT_POLICY
    assert cfg.state_dir == config.default_state_dir({"HOME": str(tmp_path)})


def test_toml_with_sections_and_relative_paths(tmp_path):
    """TOML keys, [refresh] and [responder_overrides] tables; paths relative to the file."""
    toml = tmp_path / "hastaple.toml"
    toml.write_text(
        'paths = ["certs"]\n'
        'haproxy = ["/run/haproxy/admin.sock", "127.0.0.1:9999"]\n'
        'state_dir = "/var/lib/x"\n'
        'metrics_address = "off"\n'
        'log_format = "json"\n'
        "[refresh]\n"
        "jitter = 0.2\n"
        'backoff_cap = "2h"\n'
        "alert_before = 3600\n"
        "[responder_overrides]\n"
        '"http://ocsp.old.test/" = "http://ocsp.new.test/"\n'
    )
    cfg = config.load(toml, {})
    assert cfg.paths == (tmp_path / "certs",)
    assert cfg.sockets == ("/run/haproxy/admin.sock", "127.0.0.1:9999")
    assert cfg.state_dir == Path("/var/lib/x")
    assert cfg.metrics_address is None
    assert cfg.log_format == "json"
    assert cfg.policy.jitter == 0.2
    assert cfg.policy.backoff_cap == dt.timedelta(hours=2)
    assert cfg.policy.alert_before == dt.timedelta(hours=1)
    assert cfg.responder("http://ocsp.old.test/") == "http://ocsp.new.test/"
    assert cfg.responder("http://other/") == "http://other/"


def test_precedence_flag_over_env_over_file(tmp_path):
    """A flag beats HASTAPLE_*, which beats the file."""
    toml = tmp_path / "c.toml"
    toml.write_text('paths = ["/a"]\n[refresh]\nbackoff_base = "1m"\ninterval = "1h"\n')
    env = {"HASTAPLE_REFRESH_BACKOFF_BASE": "2m", "HASTAPLE_REFRESH_INTERVAL": "3h"}
    cfg = config.load(toml, env, {"refresh_interval": "4h", "paths": ()})
    assert cfg.policy.backoff_base == dt.timedelta(minutes=2)
    assert cfg.policy.interval == dt.timedelta(hours=4)
    assert cfg.paths == (Path("/a"),)


def test_env_lists_and_mapping():
    """Lists and mappings from the environment are comma-separated."""
    env = {
        "HASTAPLE_PATHS": "/a,/b",
        "HASTAPLE_HAPROXY": "/s1, /s2",
        "HASTAPLE_RESPONDER_OVERRIDES": "http://x/=http://y/",
        "HASTAPLE_STATE_DIR": "/st",
    }
    cfg = config.load(None, env)
    assert cfg.paths == (Path("/a"), Path("/b"))
    assert cfg.sockets == ("/s1", "/s2")
    assert cfg.responder("http://x/") == "http://y/"
    assert cfg.state_dir == Path("/st")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("paths = ['/a']\nbogus = 1\n", "unknown key 'bogus'"),
        ("paths = ['/a']\n[refresh]\nbogus = 1\n", "unknown key 'refresh.bogus'"),
        ("paths = ['/a']\n[refresh]\ninterval = 'soon'\n", "refresh_interval"),
        ("paths = ['/a']\n[refresh]\njitter = 2.0\n", "between 0 and 1"),
        ("paths = ['/a']\nlog_format = 'xml'\n", "log_format"),
        ("paths = ['/a']\nmetrics_address = 'nope'\n", "host:port"),
        ("paths = ['/a']\nresponder_connections = 0\n", "between 1 and 256"),
        ("paths = ['/a']\nresponder_connections = 2.5\n", "whole number"),
        ("paths = ['/a']\nresponder_connections = true\n", "whole number"),
        ("paths = 3\n", "paths"),
        ("paths = [\n", "not valid TOML"),
        ("state_dir = '/x'\n", "nothing to watch"),
    ],
)
def test_bad_config_names_file_and_problem(tmp_path, text, needle):
    """Every bad value is a ConfigError whose message says where and what."""
    toml = tmp_path / "bad.toml"
    toml.write_text(text)
    with pytest.raises(ConfigError, match=needle) as info:
        config.load(toml, {})
    if needle != "nothing to watch":
        assert str(toml) in str(info.value)


@pytest.mark.parametrize(
    "value",
    ["inf", "-inf", "nan", "99999999999999999999", "1e300", "'99999999999d'", "'36500d'"],
)
def test_absurd_toml_duration_is_config_error(tmp_path, value):
    """Infinite, NaN or absurdly long durations are a ConfigError, not an OverflowError."""
    toml = tmp_path / "bad.toml"
    toml.write_text(f"paths = ['/a']\n[refresh]\ninterval = {value}\n")
    with pytest.raises(ConfigError, match="refresh_interval") as info:
        config.load(toml, {})
    assert str(toml) in str(info.value)


@pytest.mark.parametrize("text", ["99999999999d", "1" + "0" * 400, "3651d", "9" * 20])
def test_absurd_flag_duration_is_config_error(text):
    """`--refresh-interval 99999999999d` names the flag and the longest duration allowed."""
    with pytest.raises(ConfigError, match=r"--refresh-interval: refresh_interval: .*3650d"):
        config.load(None, {}, {"paths": ("/a",), "refresh_interval": text})


def test_longest_duration_is_accepted():
    """The bound itself (3650 days) is a valid duration: the negative of the cases above."""
    cfg = config.load(None, {}, {"paths": ("/a",), "refresh_interval": "3650d"})
    assert cfg.policy.interval == config.MAX_DURATION == dt.timedelta(days=3650)


def test_responder_connections_from_each_source(tmp_path):
    """Default 8; a `[responder]` table, the environment and the flag each set it."""
    assert config.load(None, {"HASTAPLE_PATHS": "/a"}).responder_connections == 8
    toml = tmp_path / "c.toml"
    toml.write_text("paths = ['/a']\n[responder]\nconnections = 16\n")
    assert config.load(toml, {}).responder_connections == 16
    env = {"HASTAPLE_RESPONDER_CONNECTIONS": "4"}
    assert config.load(toml, env).responder_connections == 4
    assert config.load(toml, env, {"responder_connections": "2"}).responder_connections == 2
    with pytest.raises(ConfigError, match=r"HASTAPLE_RESPONDER_CONNECTIONS: .*whole number"):
        config.load(toml, {"HASTAPLE_RESPONDER_CONNECTIONS": "lots"})


def test_bad_env_names_variable():
    """A bad environment value names the variable."""
    with pytest.raises(ConfigError, match="HASTAPLE_HAPROXY_POLL"):
        config.load(None, {"HASTAPLE_PATHS": "/a", "HASTAPLE_HAPROXY_POLL": "-1"})


def test_missing_file(tmp_path):
    """An unreadable config file is a ConfigError naming it."""
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot read"):
        config.load(tmp_path / "missing.toml", {})


_SAMPLES = {
    "paths": "/b",
    "strings": "/run/other.sock",
    "path": "/tmp/other-state",
    "int": "3",
    "float": "0.3",
    "duration": "7m",
    "mapping": "http://a.test/=http://b.test/",
    "bool": "1",
}
_STRING_SAMPLES = {
    "metrics_address": "127.0.0.1:1",
    "proxy": "http://127.0.0.1:3128",
    "log_format": "json",
    "fleet": "redis://127.0.0.1:6379/0",
    "fleet_prefix": "other:",
}


def test_every_field_has_env_and_flag():
    """Each key's HASTAPLE_ variable is read by load, and `run` offers its flag."""
    help_text = CliRunner().invoke(cli, ["run", "--help"], terminal_width=200).output
    base = {"HASTAPLE_PATHS": "/a"}
    for field in config.FIELDS:
        assert field.env == "HASTAPLE_" + field.name.upper()
        assert field.flag in help_text, field.flag
        sample = _STRING_SAMPLES.get(field.name) or _SAMPLES[field.kind]
        changed = config.load(None, {**base, field.env: sample})
        assert changed != config.load(None, base), field.env


def test_hot_certs_is_off_unless_asked(tmp_path):
    """--hot-certs, HASTAPLE_HOT_CERTS=1 or hot_certs = true; anything unclear is an error."""
    base = {"HASTAPLE_PATHS": "/a"}
    assert config.load(None, base).hot_certs is False
    assert config.load(None, {**base, "HASTAPLE_HOT_CERTS": "1"}).hot_certs is True
    assert config.load(None, {**base, "HASTAPLE_HOT_CERTS": "off"}).hot_certs is False
    assert config.load(None, base, {"hot_certs": True}).hot_certs is True
    toml = tmp_path / "h.toml"
    toml.write_text('paths = ["/a"]\nhot_certs = true\n')
    assert config.load(toml, {}).hot_certs is True
    with pytest.raises(ConfigError, match="hot_certs"):
        config.load(None, {**base, "HASTAPLE_HOT_CERTS": "maybe"})


def test_loopback_detection():
    """Only loopback hosts count as local for the metrics server."""
    assert config.is_loopback("127.0.0.1")
    assert config.is_loopback("::1")
    assert config.is_loopback("localhost")
    assert not config.is_loopback("0.0.0.0")  # noqa: S104 - only parsed
    assert config.split_address("[::1]:80") == ("::1", 80)


def test_contrib_example_loads():
    """The example configuration shipped in contrib/ is valid."""
    example = Path(__file__).parent.parent / "contrib" / "hastaple.toml"
    cfg = config.load(example, {})
    assert cfg.haproxy_configs == (Path("/etc/haproxy/haproxy.cfg"),)
    assert cfg.policy == DEFAULT_POLICY


def test_fleet_keys():
    """fleet, fleet_prefix and fleet_lease from TOML or env; a bad URL is exit 2 naming it."""
    loaded = config.load(
        None,
        {"HASTAPLE_PATHS": "/a", "HASTAPLE_FLEET": "unix:///run/redis.sock?db=2",
         "HASTAPLE_FLEET_PREFIX": "edge:", "HASTAPLE_FLEET_LEASE": "10s"},
    )  # fmt: skip
    assert loaded.fleet == "unix:///run/redis.sock?db=2"
    assert (loaded.fleet_prefix, loaded.fleet_lease.total_seconds()) == ("edge:", 10)
    plain = config.load(None, {"HASTAPLE_PATHS": "/a"})
    assert (plain.fleet, plain.fleet_prefix) == (None, "hastaple:")
    with pytest.raises(ConfigError, match="HASTAPLE_FLEET: fleet: 'mysql://h': a fleet URL"):
        config.load(None, {"HASTAPLE_PATHS": "/a", "HASTAPLE_FLEET": "mysql://h"})
    # run reads the whole URL before starting: a bad one is exit 2 naming it.
    result = CliRunner().invoke(cli, ["run", "--paths", "/a", "--fleet", "redis://h/zero"])
    assert result.exit_code == 2
    assert "fleet URL 'redis://h/zero': the database must be a number" in result.stderr
    with pytest.raises(ConfigError, match="fleet_prefix"):
        config.load(None, {"HASTAPLE_PATHS": "/a", "HASTAPLE_FLEET_PREFIX": "a b"})
