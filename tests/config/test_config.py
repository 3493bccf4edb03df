"""momedod.config and the momedod command line."""

from __future__ import annotations

import dataclasses
import re
import sys
import types
from pathlib import Path

import pytest

from momedod import cli, config
from momedod.config import (
    AdminConfig,
    Config,
    ConfigError,
    LimitsConfig,
    ListenerConfig,
    ServerConfig,
    default_config_text,
    load_config,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_system_config(tmp_path, monkeypatch):
    """Never read the machine's /etc/momedo/momedod.toml."""
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", tmp_path / "etc" / "momedod.toml")


def write(tmp_path: Path, text: str, name: str = "momedod.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_text(tmp_path: Path, text: str) -> Config:
    return load_config(write(tmp_path, text), environ={})


def error_of(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    prefix = f"{path}: "
    assert message.startswith(prefix)
    assert "\n" not in message
    return message[len(prefix) :]


# --- defaults and the shipped file ---


def test_no_file_means_built_in_defaults():
    cfg = load_config(None, environ={})
    assert cfg == Config()
    assert cfg.source is None
    assert cfg.listeners == (ListenerConfig(address="0.0.0.0", port=7443),)
    assert cfg.server.state_dir == Path("/var/lib/momedo")
    assert cfg.admin.socket == Path("/run/momedo/admin.sock")
    assert cfg.limits.max_frame_bytes == 1048576


def test_shipped_example_is_the_default_config_text():
    assert (REPO / "etc" / "momedod.toml").read_text() == default_config_text()


def test_default_config_text_loads_to_the_defaults(tmp_path):
    cfg = load_text(tmp_path, default_config_text())
    assert dataclasses.replace(cfg, source=None) == Config()


def test_default_config_text_shows_the_real_defaults(tmp_path):
    # Uncommenting every key (but the examples for keys without a default) changes nothing.
    lines = []
    for line in default_config_text().splitlines():
        if re.match(r"#[a-z_]+ = ", line) and "example" not in line:
            line = line[1:]
        lines.append(line)
    text = "\n".join(lines)
    assert text.count("\nstate_dir = ") == 1 and text.count("\nmax_record_bytes = ") == 1
    cfg = load_text(tmp_path, text)
    assert dataclasses.replace(cfg, source=None) == Config()


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().limits.max_frame_bytes = 5  # type: ignore[misc]


# --- reading values ---


def test_values_are_merged_over_defaults(tmp_path):
    cfg = load_text(
        tmp_path,
        """
        [server]
        name = "Gesamtschule Nord"
        public_address = "chat.gs-nord.de:443"
        [[listener]]
        port = 443
        [[listener]]
        address = "::"
        port = 8443
        tls_min_version = "1.2"
        [limits]
        idle_timeout = 120
        write_timeout = 2.5
        """,
    )
    assert cfg.server == ServerConfig(
        name="Gesamtschule Nord", public_address="chat.gs-nord.de:443"
    )
    assert cfg.listeners == (
        ListenerConfig(port=443),
        ListenerConfig(address="::", port=8443, tls_min_version="1.2"),
    )
    assert cfg.limits == LimitsConfig(idle_timeout=120.0, write_timeout=2.5)
    assert isinstance(cfg.limits.idle_timeout, float)
    assert cfg.source == tmp_path / "momedod.toml"


def test_relative_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    path = write(
        conf_dir,
        """
        [server]
        state_dir = "state"
        [[listener]]
        cert = "tls/cert.pem"
        key = "/etc/ssl/key.pem"
        [admin]
        socket = "../run/admin.sock"
        """,
    )
    monkeypatch.chdir(tmp_path)
    cfg = load_config(Path("conf/momedod.toml"), environ={})
    assert cfg.server.state_dir == conf_dir / "state"
    assert cfg.listeners[0].cert == conf_dir / "tls" / "cert.pem"
    assert cfg.listeners[0].key == Path("/etc/ssl/key.pem")
    assert cfg.admin.socket == conf_dir / ".." / "run" / "admin.sock"
    assert cfg.source == path


# --- where the file comes from ---


def test_resolution_order(tmp_path, monkeypatch):
    explicit = write(tmp_path, '[server]\nname = "explicit"\n', "a.toml")
    from_env = write(tmp_path, '[server]\nname = "env"\n', "b.toml")
    system = write(tmp_path, '[server]\nname = "system"\n', "c.toml")
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", system)
    env = {"MOMEDO_CONFIG": str(from_env)}
    assert load_config(explicit, environ=env).server.name == "explicit"
    assert load_config(None, environ=env).server.name == "env"
    assert load_config(None, environ={}).server.name == "system"
    assert load_config(None, environ={"MOMEDO_CONFIG": ""}).server.name == "system"
    system.unlink()
    assert load_config(None, environ={}) == Config()


def test_explicit_missing_file_is_an_error(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read config file: No such file"):
        load_config(missing, environ={})
    with pytest.raises(ConfigError, match="No such file"):
        load_config(None, environ={"MOMEDO_CONFIG": str(missing)})


def test_systemd_state_directory_wins_over_the_file(tmp_path):
    path = write(tmp_path, '[server]\nstate_dir = "/srv/momedo"\n')
    env = {"STATE_DIRECTORY": "/var/lib/momedo-a:/var/lib/other"}
    assert load_config(path, environ=env).server.state_dir == Path("/var/lib/momedo-a")
    assert load_config(path, environ={}).server.state_dir == Path("/srv/momedo")


def test_runtime_directory_sets_the_socket_unless_the_file_does(tmp_path):
    env = {"RUNTIME_DIRECTORY": "/run/momedo-x"}
    assert load_config(None, environ=env).admin.socket == Path("/run/momedo-x/admin.sock")
    path = write(tmp_path, '[admin]\nsocket = "/srv/admin.sock"\n')
    assert load_config(path, environ=env).admin.socket == Path("/srv/admin.sock")


def test_dev_mode_zero_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "etc").mkdir()
    write(tmp_path / "etc", "[server]\nname = 'system'\n")  # the patched system config
    env = {"STATE_DIRECTORY": "/var/lib/x", "RUNTIME_DIRECTORY": "/run/x"}
    cfg = load_config(None, dev=True, environ=env)
    assert cfg.dev is True
    assert cfg.source is None  # /etc/momedo/momedod.toml is not read in dev mode
    assert cfg.server.name == "momedo"
    assert cfg.server.state_dir == tmp_path / ".momedo-dev"
    assert cfg.admin == AdminConfig(socket=tmp_path / ".momedo-dev" / "admin.sock")
    assert cfg.listeners == (ListenerConfig(address="127.0.0.1", port=7443),)


def test_dev_mode_with_a_file_keeps_its_ports_on_loopback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(
        tmp_path,
        """
        [[listener]]
        address = "0.0.0.0"
        port = 9000
        [[listener]]
        address = "::"
        port = 9000
        [[listener]]
        port = 9001
        [limits]
        idle_timeout = 5
        """,
    )
    cfg = load_config(None, dev=True, environ={"MOMEDO_CONFIG": str(path)})
    assert [(lc.address, lc.port) for lc in cfg.listeners] == [
        ("127.0.0.1", 9000),
        ("127.0.0.1", 9001),
    ]
    assert cfg.limits.idle_timeout == 5.0
    assert cfg.server.state_dir == tmp_path / ".momedo-dev"


# --- errors ---


def test_error_message_names_file_key_expectation_and_value(tmp_path):
    assert error_of(tmp_path, '[[listener]]\nport = "abc"\n') == (
        "listener[0].port: expected an integer 1-65535, got 'abc'"
    )
    assert error_of(tmp_path, "[[listener]]\n[[listener]]\nport = 70000\n") == (
        "listener[1].port: expected an integer 1-65535, got 70000"
    )


def test_booleans_are_not_integers(tmp_path):
    assert error_of(tmp_path, "[limits]\nmax_recipients = true\n") == (
        "limits.max_recipients: expected a positive integer, got true"
    )
    assert error_of(tmp_path, "[limits]\nidle_timeout = false\n").startswith(
        "limits.idle_timeout: expected a number of seconds"
    )


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "100000", '"10"'])
def test_timeouts_must_be_positive_finite_seconds(tmp_path, value):
    message = error_of(tmp_path, f"[limits]\nhandshake_timeout = {value}\n")
    assert message.startswith(
        "limits.handshake_timeout: expected a number of seconds, more than 0 and at most 86400"
    )


def test_counts_must_be_positive(tmp_path):
    assert error_of(tmp_path, "[limits]\nmailbox_ttl_days = 0\n") == (
        "limits.mailbox_ttl_days: expected a positive integer, got 0"
    )
    assert error_of(tmp_path, "[limits]\ninvite_ttl_hours = 1.5\n") == (
        "limits.invite_ttl_hours: expected a positive integer, got 1.5"
    )
    assert error_of(tmp_path, "[limits]\nmax_recipients = 9999999999\n") == (
        "limits.max_recipients: expected at most 2147483647, got 9999999999"
    )


@pytest.mark.parametrize("value", [1023, 64 * 1024 * 1024 + 1])
def test_max_frame_bytes_bounds(tmp_path, value):
    assert error_of(tmp_path, f"[limits]\nmax_frame_bytes = {value}\n") == (
        f"limits.max_frame_bytes: expected an integer 1024-67108864, got {value}"
    )


def test_max_frame_bytes_limits_accepted(tmp_path):
    text = "[limits]\nmax_frame_bytes = {}\nmax_record_bytes = 1000\n"
    assert load_text(tmp_path, text.format(1024)).limits.max_frame_bytes == 1024
    big = 64 * 1024 * 1024
    assert load_text(tmp_path, text.format(big)).limits.max_frame_bytes == big


def test_records_must_fit_in_a_frame(tmp_path):
    message = error_of(tmp_path, "[limits]\nmax_frame_bytes = 2048\n")  # default record 65536
    assert message.startswith("limits.max_record_bytes: expected at most 2039")
    assert message.endswith("got 65536")


def test_unknown_keys_list_the_known_ones(tmp_path):
    assert error_of(tmp_path, "[limits]\nmax_frame_byte = 5\n") == (
        "limits.max_frame_byte: unknown key (known: max_frame_bytes, handshake_timeout, "
        "idle_timeout, write_timeout, mailbox_ttl_days, mailbox_max_messages, "
        "invite_ttl_hours, max_recipients, max_record_bytes)"
    )
    assert error_of(tmp_path, "[[listeners]]\nport = 1\n") == (
        "listeners: unknown key (known: server, listener, limits, abuse, admin, log, storage, "
        "cluster, metrics, policy, attachments, push, quiet_hours)"
    )
    assert error_of(tmp_path, "[[listener]]\n[[listener]]\nhost = 'x'\n").startswith(
        "listener[1].host: unknown key (known: address, port, cert, key,"
    )


def test_toml_syntax_errors_name_line_and_column(tmp_path):
    message = error_of(tmp_path, '[server]\nname = "momedo"\nstate_dir = /var\n')
    assert message.startswith("line 3, column 13: TOML syntax error: ")


def test_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "momedod.toml"
    path.write_bytes(b'[server]\nname = "\xff"\n')
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        load_config(path, environ={})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[log]\nlevel = 'verbose'\n",
            "log.level: expected one of 'debug', 'info', 'warning', 'error', got 'verbose'",
        ),
        (
            "[log]\nformat = 'xml'\n",
            "log.format: expected one of 'auto', 'console', 'logfmt', 'json', got 'xml'",
        ),
        (
            "[storage]\nengine = 'mysql'\n",
            "storage.engine: expected one of 'sqlite', 'postgres', got 'mysql'",
        ),
        (
            "[[listener]]\ntls_min_version = 1.3\n",
            "listener[0].tls_min_version: expected one of '1.2', '1.3', got 1.3",
        ),
        ("server = 5\n", "server: expected a table, got 5"),
        (
            "[listener]\nport = 1\n",
            "listener: expected an array of tables ([[listener]]), got a table",
        ),
        (
            "listener = []\n",
            "listener: expected at least one [[listener]] table, got an empty array",
        ),
        (
            "[server]\nname = ''\n",
            "server.name: expected a non-empty string of at most 64 bytes (UTF-8), got ''",
        ),
        (
            "[server]\nstate_dir = 5\n",
            "server.state_dir: expected a path (a non-empty string), got 5",
        ),
        (
            "[[listener]]\naddress = 'not an address'\n",
            "listener[0].address: expected an IP "
            "address or host name (e.g. '0.0.0.0', '::', '127.0.0.1'), got 'not an address'",
        ),
    ],
)
def test_invalid_values(tmp_path, text, expected):
    assert error_of(tmp_path, text) == expected


@pytest.mark.parametrize("value", ["chat.example.org", "::1:7443", "host:0", "host:http", ":7443"])
def test_public_address_needs_host_and_port(tmp_path, value):
    assert error_of(tmp_path, f'[server]\npublic_address = "{value}"\n').startswith(
        "server.public_address: expected a 'host:port' address"
    )


@pytest.mark.parametrize("value", ["chat.example.org:443", "192.0.2.1:7443", "[2001:db8::1]:7443"])
def test_public_address_accepted(tmp_path, value):
    assert load_text(tmp_path, f'[server]\npublic_address = "{value}"\n').server.public_address


def test_cert_and_key_go_together(tmp_path):
    assert error_of(tmp_path, '[[listener]]\ncert = "c.pem"\n') == (
        "listener[0].key: expected a key file together with cert, got none"
    )
    assert error_of(tmp_path, '[[listener]]\nkey = "k.pem"\n') == (
        "listener[0].cert: expected a certificate together with key, got none"
    )


def test_duplicate_listeners_are_rejected(tmp_path):
    text = "[[listener]]\nport = 7443\n[[listener]]\naddress = '0.0.0.0'\n"
    assert error_of(tmp_path, text) == (
        "listener[1]: expected a unique address and port, got 0.0.0.0:7443 "
        "(already used by listener[0])"
    )


def test_admin_socket_path_must_fit_a_unix_socket(tmp_path):
    message = error_of(tmp_path, f'[admin]\nsocket = "/run/{"x" * 120}.sock"\n')
    assert message.startswith("admin.socket: expected a socket path of at most 107 bytes")


# --- the momedod command ---


def test_check_config_ok(tmp_path, capsys):
    path = write(tmp_path, "[log]\nlevel = 'debug'\n")
    assert cli.main(["check-config", "-c", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: ok\n"


def test_check_config_error(tmp_path, capsys):
    path = write(tmp_path, "[log]\nlevel = 'loud'\n")
    assert cli.main(["check-config", "-c", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"momedod: {path}: log.level: expected one of")
    assert err.count("\n") == 1


def test_default_config_command_prints_the_text(capsys):
    assert cli.main(["default-config"]) == 0
    assert capsys.readouterr().out == default_config_text()


def test_run_passes_the_loaded_config_to_the_daemon(tmp_path, monkeypatch):
    seen = []
    daemon = types.ModuleType("momedod.server.daemon")
    daemon.run = lambda cfg: seen.append(cfg) or 3  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "momedod.server.daemon", daemon)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "--dev"]) == 3
    [cfg] = seen
    assert cfg.dev and cfg.server.state_dir == tmp_path / ".momedo-dev"


def test_run_with_a_bad_config_prints_one_line_and_exits_1(tmp_path, capsys):
    path = write(tmp_path, "[limits]\nidle_timeout = 'long'\n")
    assert cli.main(["run", "-c", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"momedod: {path}: limits.idle_timeout: expected a number of seconds, more than 0 and "
        "at most 86400, got 'long'\n"
    )


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["serve"])
    assert info.value.code == 2
