"""momedod configuration: one TOML file validated into frozen dataclasses.

Theory of operation: the file is parsed with ``tomllib`` and every table is checked against a
schema (``_SECTIONS``) that names each key, how to validate it and a help line. Keys the file
leaves out keep the dataclass defaults, so the file is effectively deep-merged over the built-in
defaults; ``[[listener]]`` is an array, so a file that has one replaces the default listener.
The same schema renders ``default_config_text()`` (shipped as ``etc/momedod.toml``), so the
documented defaults cannot drift from the real ones. Environment overrides (systemd's
``$STATE_DIRECTORY`` and ``$RUNTIME_DIRECTORY``) and ``--dev`` are applied after validation.

Every problem is a ``ConfigError`` whose message names the file, the key path and what was
expected, e.g. ``/etc/momedo/momedod.toml: listener[0].port: expected an integer 1-65535,
got 'abc'``.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import tomli_w

from momedod.protocol import invite, userid
from momedod.pushurl import origin_of, push_rule
from momedod.quiet import QuietPolicy, parse_days, parse_time

DEFAULT_CONFIG_PATH = Path("/etc/momedo/momedod.toml")
DEV_STATE_DIR_NAME = ".momedo-dev"
ADMIN_SOCKET_NAME = "admin.sock"

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "console", "logfmt", "json")
STORAGE_ENGINES = ("sqlite", "postgres")
MAX_POOL_SIZE = 1000
TLS_VERSIONS = ("1.2", "1.3")

MIN_FRAME_BYTES = 1024
MAX_FRAME_BYTES = 64 * 1024 * 1024
# A KEY_PUT frame carries the record after u8 type, u32 request_id and a u32 length prefix.
KEY_PUT_OVERHEAD = 9
MAX_TIMEOUT_S = 86_400.0
MAX_COUNT = 2**31 - 1
MAX_SERVER_NAME_BYTES = 64  # WELCOME.server_name
MAX_UNIX_PATH_BYTES = 107  # sun_path is 108 bytes including the terminating NUL


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and why, on one line."""


@dataclass(frozen=True)
class ServerConfig:
    """``[server]``: identity and state of this server."""

    name: str = "momedo"
    public_address: str | None = None  # "host:port" for invite links; None: the first listener
    # Every node's "host:port" for invite links (a server with several nodes); None: the one
    # public_address. Setting both is an error.
    public_addresses: tuple[str, ...] | None = None
    # Further certificate pins (fingerprint text) invite links carry, for nodes whose
    # certificate key differs from this node's; None: only this node's own.
    certificate_pins: tuple[str, ...] | None = None
    state_dir: Path = Path("/var/lib/momedo")


@dataclass(frozen=True)
class ListenerConfig:
    """One ``[[listener]]``: a TLS address/port clients connect to."""

    address: str = "0.0.0.0"
    port: int = 7443
    cert: Path | None = None
    key: Path | None = None
    max_connections: int = 10000
    tls_min_version: str = "1.3"


@dataclass(frozen=True)
class LimitsConfig:
    """``[limits]``: protocol limits, timeouts (seconds) and retention."""

    max_frame_bytes: int = 1048576
    handshake_timeout: float = 10.0
    idle_timeout: float = 300.0
    write_timeout: float = 30.0
    mailbox_ttl_days: int = 30
    mailbox_max_messages: int = 10000
    invite_ttl_hours: int = 168
    max_recipients: int = 1000
    max_record_bytes: int = 65536


@dataclass(frozen=True)
class AbuseConfig:
    """``[abuse]``: limits against floods and guessing (docs/ADMIN.md, "Abuse limits")."""

    auth_failures: int = 20
    auth_failure_window: float = 300.0
    frames_per_second: int = 200
    frame_burst: int = 1000
    key_lookups_per_minute: int = 300
    max_prekeys_per_device: int = 200
    max_tls_handshakes: int = 64
    connections_per_address: int = 2000


@dataclass(frozen=True)
class AdminConfig:
    """``[admin]``: the operator socket momedoctl and momedo-tui talk to."""

    socket: Path = Path("/run/momedo/admin.sock")


@dataclass(frozen=True)
class LogConfig:
    """``[log]``: log verbosity and output format."""

    level: str = "info"
    format: str = "auto"


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: the Prometheus endpoint (plain HTTP; keep it on loopback or firewalled)."""

    enabled: bool = True
    address: str = "127.0.0.1"
    port: int = 9479


@dataclass(frozen=True)
class StorageConfig:
    """``[storage]``: the database engine behind the store."""

    engine: str = "sqlite"
    dsn: str | None = None  # engine = "postgres": libpq connection string or URI
    pool_size: int = 10  # engine = "postgres": connections (and worker threads) per node


@dataclass(frozen=True)
class ClusterConfig:
    """``[cluster]``: several momedod nodes over one PostgreSQL database (docs/OPERATIONS.md)."""

    enabled: bool = False
    node_name: str | None = None  # None: the machine's host name
    heartbeat_interval: float = 1.0  # seconds between heartbeats of this node
    lease_timeout: float = 5.0  # a node whose heartbeat is older than this counts as dead


@dataclass(frozen=True)
class PolicyConfig:
    """``[policy]``: what users may do on their own."""

    users_create_groups: bool = True
    max_group_size: int = 5000


@dataclass(frozen=True)
class AttachmentsConfig:
    """``[attachments]``: end-to-end encrypted files (blobs) stored in state_dir/blobs."""

    max_file_mib: int = 25
    quota_mib_per_user: int = 500
    ttl_days: int = 30
    partial_ttl_hours: int = 24
    collect_interval: float = 3600.0


@dataclass(frozen=True)
class PushConfig:
    """``[push]``: content-free wake-ups for devices that are not connected."""

    enabled: bool = True
    gateway_url: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    coalesce_seconds: float = 30.0
    queue_size: int = 10_000
    senders: int = 4
    timeout: float = 5.0
    max_attempts: int = 6
    retry_seconds: float = 2.0
    retry_max_seconds: float = 300.0


@dataclass(frozen=True)
class QuietHoursConfig:
    """One ``[[quiet_hours]]`` policy: the working window of some users (see momedod.quiet)."""

    name: str = ""
    days: str = "Mon-Fri"
    start: str = "07:00"
    end: str = "18:00"
    timezone: str = "Europe/Berlin"
    defer_delivery: bool = False
    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    """The whole validated configuration of one momedod process."""

    server: ServerConfig = ServerConfig()
    listeners: tuple[ListenerConfig, ...] = (ListenerConfig(),)
    limits: LimitsConfig = LimitsConfig()
    abuse: AbuseConfig = AbuseConfig()
    admin: AdminConfig = AdminConfig()
    log: LogConfig = LogConfig()
    storage: StorageConfig = StorageConfig()
    cluster: ClusterConfig = ClusterConfig()
    metrics: MetricsConfig = MetricsConfig()
    policy: PolicyConfig = PolicyConfig()
    attachments: AttachmentsConfig = AttachmentsConfig()
    push: PushConfig = PushConfig()
    quiet_hours: tuple[QuietHoursConfig, ...] = ()
    source: Path | None = None  # the file it was read from; None: built-in defaults
    dev: bool = False


# --- loading -------------------------------------------------------------------------------


def load_config(
    path: Path | None = None,
    *,
    dev: bool = False,
    environ: Mapping[str, str] = os.environ,
) -> Config:
    """Find, read and validate the configuration; raise ConfigError if it is unusable.

    File: ``path`` (``--config``) > ``$MOMEDO_CONFIG`` > ``/etc/momedo/momedod.toml`` if it
    exists (not with ``dev``) > built-in defaults.
    """
    source = find_config_file(path, dev=dev, environ=environ)
    if source is None:
        config, socket_set = Config(), False
    else:
        config, socket_set = _parse(_read_toml(source), str(source), source.absolute().parent)
        config = replace(config, source=source.absolute())

    if dev:
        state_dir = Path.cwd() / DEV_STATE_DIR_NAME
        listeners: list[ListenerConfig] = []
        for lc in config.listeners:
            loopback = replace(lc, address="127.0.0.1")
            if all(loopback.port != other.port for other in listeners):
                listeners.append(loopback)
        return replace(
            config,
            server=replace(config.server, state_dir=state_dir),
            listeners=tuple(listeners),
            admin=AdminConfig(socket=state_dir / ADMIN_SOCKET_NAME),
            dev=True,
        )

    state_directory = environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state_directory:
        config = replace(config, server=replace(config.server, state_dir=Path(state_directory)))
    # An explicit [admin] socket wins over $RUNTIME_DIRECTORY: momedoctl runs outside the
    # service and must find the same socket from the same file.
    runtime_directory = environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime_directory and not socket_set:
        config = replace(config, admin=AdminConfig(Path(runtime_directory) / ADMIN_SOCKET_NAME))
    return config


def find_config_file(
    path: Path | None = None, *, dev: bool = False, environ: Mapping[str, str] = os.environ
) -> Path | None:
    """The config file ``load_config`` reads, or None for the built-in defaults."""
    if path is not None:
        return Path(path)
    if environ.get("MOMEDO_CONFIG"):
        return Path(environ["MOMEDO_CONFIG"])
    if not dev and DEFAULT_CONFIG_PATH.exists():
        return DEFAULT_CONFIG_PATH
    return None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid UTF-8 (byte offset {e.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {_syntax_error_text(str(e))}") from None
    except (ValueError, RecursionError):  # tomllib: an integer of > 4300 digits, deep nesting
        raise ConfigError(
            f"{path}: TOML syntax error: a number too long or nesting too deep"
        ) from None


def _syntax_error_text(message: str) -> str:
    # Python 3.11's TOMLDecodeError only carries the position inside its message.
    m = re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", message)
    if m:
        return f"line {m[2]}, column {m[3]}: TOML syntax error: {m[1]}"
    m = re.fullmatch(r"(.*) \(at end of document\)", message)
    if m:
        return f"at end of file: TOML syntax error: {m[1]}"
    return f"TOML syntax error: {message}"


# --- validation ----------------------------------------------------------------------------


class _Invalid(Exception):
    """A value failed its check; ``expected`` completes "expected ...", ``shown`` the value."""

    def __init__(self, expected: str, shown: str | None = None) -> None:
        super().__init__(expected)
        self.expected = expected
        self.shown = shown


_Check = Callable[[Any, Path], Any]


def _describe(value: Any) -> str:
    """A value as the operator wrote it in TOML, for "got ..." in messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a date/time ({value})"


def _string(value: Any, base: Path) -> str:
    if not isinstance(value, str):
        raise _Invalid("a string")
    return value


def _choice(*choices: str) -> _Check:
    expected = "one of " + ", ".join(repr(c) for c in choices)

    def check(value: Any, base: Path) -> str:
        if not isinstance(value, str) or value not in choices:
            raise _Invalid(expected)
        return value

    return check


def _integer(low: int, high: int, expected: str | None = None) -> _Check:
    def check(value: Any, base: Path) -> int:
        # TOML booleans are Python bools, which are ints; a boolean is never a count.
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Invalid(expected or f"an integer {low}-{high}")
        if value < low:
            raise _Invalid(expected or f"an integer {low}-{high}")
        if value > high:
            raise _Invalid(f"at most {high}" if expected else f"an integer {low}-{high}")
        return value

    return check


_count = _integer(1, MAX_COUNT, "a positive integer")


def _seconds(value: Any, base: Path) -> float:
    expected = f"a number of seconds, more than 0 and at most {MAX_TIMEOUT_S:g}"
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _Invalid(expected)
    if not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT_S):
        raise _Invalid(expected)
    return float(value)


def _path(value: Any, base: Path) -> Path:
    if not isinstance(value, str) or not value or "\0" in value:
        raise _Invalid("a path (a non-empty string)")
    return base / value  # an absolute value replaces base


def _socket_path(value: Any, base: Path) -> Path:
    path = _path(value, base)
    if len(os.fsencode(path)) > MAX_UNIX_PATH_BYTES:
        raise _Invalid(f"a socket path of at most {MAX_UNIX_PATH_BYTES} bytes", f"{str(path)!r}")
    return path


def _server_name(value: Any, base: Path) -> str:
    expected = f"a non-empty string of at most {MAX_SERVER_NAME_BYTES} bytes (UTF-8)"
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(expected)
    if len(value.encode()) > MAX_SERVER_NAME_BYTES or not value.isprintable():
        raise _Invalid(expected)
    return value


_HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_.])?")


def _is_host(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return len(text) <= 253 and _HOSTNAME.fullmatch(text) is not None
    return True


def _listen_address(value: Any, base: Path) -> str:
    if not isinstance(value, str) or not _is_host(value):
        raise _Invalid("an IP address or host name (e.g. '0.0.0.0', '::', '127.0.0.1')")
    return value


def _host_port(value: Any, base: Path) -> str:
    expected = "a 'host:port' address (e.g. 'chat.example.org:7443' or '[2001:db8::1]:7443')"
    if not isinstance(value, str):
        raise _Invalid(expected)
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise _Invalid(expected)
    elif ":" in host:  # an IPv6 address must be bracketed
        raise _Invalid(expected)
    if not sep or not _is_host(host) or not (port.isascii() and port.isdigit()):
        raise _Invalid(expected)
    if not 1 <= int(port) <= 65535:
        raise _Invalid(expected)
    return value


def _host_ports(value: Any, base: Path) -> tuple[str, ...]:
    expected = (
        f"an array of 1 to {invite.MAX_ADDRESSES} distinct 'host:port' addresses"
        " (e.g. ['a.example.org:7443', 'b.example.org:7443'])"
    )
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _Invalid(expected)
    addresses = []
    for v in value:
        try:
            addresses.append(invite.parse_address(v))
        except invite.InvalidInviteLink as e:
            raise _Invalid(expected, f"{v!r} ({e})") from None
    try:
        invite.check_addresses(addresses)
    except invite.InvalidInviteLink as e:
        raise _Invalid(expected, str(e)) from None
    return tuple(value)


def _pins(value: Any, base: Path) -> tuple[str, ...]:
    expected = (
        f"an array of at most {invite.MAX_PINS - 1} distinct certificate fingerprints"
        " (52 base32 characters each, as `momedoctl server info` shows them)"
    )
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Invalid(expected)
    if len(value) > invite.MAX_PINS - 1:
        raise _Invalid(expected, f"{len(value)} fingerprints")
    pins = []
    for v in value:
        try:
            pins.append(invite.parse_fingerprint_text(v))
        except ValueError as e:
            raise _Invalid(expected, f"{v!r} ({e})") from None
    if len(set(pins)) != len(pins):
        raise _Invalid(expected, "a fingerprint listed twice")
    return tuple(invite.fingerprint_text(p) for p in pins)


@dataclass(frozen=True)
class _Key:
    name: str
    check: _Check
    help: str
    example: str | None = None  # TOML value shown for a key whose default is None


_SERVER_KEYS = (
    _Key("name", _server_name, "Server name shown to clients (at most 64 bytes)."),
    _Key(
        "public_address",
        _host_port,
        '"host:port" that invite links point to. Default: the first listener\'s address\n'
        "(the machine's host name if that is 0.0.0.0 or ::). Set it on a real server.",
        example='"chat.example.org:7443"',
    ),
    _Key(
        "public_addresses",
        _host_ports,
        'Several nodes (one database, docs/ADMIN.md "Several addresses"): every node\'s\n'
        '"host:port", 1 to 8. Invite links carry them all and clients fail over between\n'
        "them. Set this or public_address, not both.",
        example='["chat1.example.org:7443", "chat2.example.org:7443"]',
    ),
    _Key(
        "certificate_pins",
        _pins,
        "Fingerprints (as `momedoctl server info` shows them) of the other nodes'\n"
        "certificate keys, if they differ from this node's; invite links carry this\n"
        "node's own fingerprint and these, and clients accept any of them (at most 7).",
        example='["LF6Q3QN6JAKOYVBUPPLVUMXMJCRIKEAFY6XR5LMVPAB7GYYNQCJA"]',
    ),
    _Key(
        "state_dir",
        _path,
        "Database and generated TLS certificate. $STATE_DIRECTORY (set by systemd's\n"
        "StateDirectory=) takes precedence.",
    ),
)
_LISTENER_KEYS = (
    _Key(
        "address",
        _listen_address,
        'IP address to listen on; "0.0.0.0" is every IPv4 address, "::" every IPv6 one.',
    ),
    _Key("port", _integer(1, 65535), "TCP port."),
    _Key(
        "cert",
        _path,
        "PEM certificate chain and private key, both or neither. Without them momedod\n"
        "generates a self-signed certificate in state_dir; clients pin its fingerprint\n"
        "from the invite link, so no public CA is needed.",
        example='"/etc/momedo/tls/fullchain.pem"',
    ),
    _Key("key", _path, "", example='"/etc/momedo/tls/privkey.pem"'),
    _Key("max_connections", _count, "Connections accepted at once; further clients wait."),
    _Key("tls_min_version", _choice(*TLS_VERSIONS), 'Oldest TLS version accepted: "1.3" or "1.2".'),
)
_LIMITS_KEYS = (
    _Key(
        "max_frame_bytes",
        _integer(MIN_FRAME_BYTES, MAX_FRAME_BYTES),
        "Largest protocol frame in bytes (1024 to 67108864); bounds a message's size.",
    ),
    _Key("handshake_timeout", _seconds, "Seconds a client has to finish TLS and sign in."),
    _Key("idle_timeout", _seconds, "Seconds of silence after which a connection is closed."),
    _Key("write_timeout", _seconds, "Seconds a client may stall reading before it is dropped."),
    _Key(
        "mailbox_ttl_days",
        _count,
        "Days an undelivered message waits for an offline device before it is deleted.",
    ),
    _Key("mailbox_max_messages", _count, "Undelivered messages kept per device at most."),
    _Key("invite_ttl_hours", _count, "Hours an invite link stays valid (168 = 7 days)."),
    _Key("max_recipients", _count, "Devices one message may be addressed to (group size)."),
    _Key(
        "max_record_bytes",
        _count,
        "Largest key-directory record in bytes (at most max_frame_bytes - 9).",
    ),
)
_ADMIN_KEYS = (
    _Key(
        "socket",
        _socket_path,
        "Unix socket for momedoctl and momedo-tui (mode 0660). If this key is not set and\n"
        "$RUNTIME_DIRECTORY is (systemd's RuntimeDirectory=), $RUNTIME_DIRECTORY/admin.sock.",
    ),
)
_LOG_KEYS = (
    _Key("level", _choice(*LOG_LEVELS), 'One of "debug", "info", "warning", "error".'),
    _Key(
        "format",
        _choice(*LOG_FORMATS),
        '"auto" (console on a terminal, logfmt under journald, JSON otherwise),\n'
        '"console", "logfmt" or "json".',
    ),
)


def _boolean(value: Any, base: Path) -> bool:
    if not isinstance(value, bool):
        raise _Invalid("true or false")
    return value


_METRICS_KEYS = (
    _Key("enabled", _boolean, "Serve Prometheus metrics over HTTP at /metrics."),
    _Key(
        "address",
        _listen_address,
        "Address of the metrics endpoint. Plain HTTP without authentication: keep it on\n"
        "127.0.0.1, or firewall it so only your Prometheus server can reach it.",
    ),
    _Key("port", _integer(1, 65535), "TCP port of the metrics endpoint."),
)


def _dsn(value: Any, base: Path) -> str:
    expected = (
        "a PostgreSQL connection string ('host=db.example.org dbname=momedo user=momedo')"
        " or URI ('postgresql://momedo@db.example.org/momedo')"
    )
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(expected)
    try:
        from psycopg.conninfo import conninfo_to_dict

        conninfo_to_dict(value)
    except Exception as exc:  # psycopg.ProgrammingError
        # Never echo the value: it may hold a password.
        raise _Invalid(expected, "a string libpq cannot parse (not shown)") from exc
    return value


_STORAGE_KEYS = (
    _Key(
        "engine",
        _choice(*STORAGE_ENGINES),
        'Database engine: "sqlite" (a file in state_dir) or "postgres" (the database\n'
        "named by dsn; blobs and TLS material stay in state_dir). See docs/ADMIN.md.",
    ),
    _Key(
        "dsn",
        _dsn,
        'engine = "postgres": libpq connection string or URI. Keep a password out of\n'
        "this file: use ~/.pgpass (PGPASSFILE) or peer authentication over the socket.",
        example='"host=/run/postgresql dbname=momedo user=momedo"',
    ),
    _Key(
        "pool_size",
        _integer(1, MAX_POOL_SIZE),
        'engine = "postgres": database connections (and worker threads) of this node.',
    ),
)


def _node_name(value: Any, base: Path) -> str:
    expected = "a node name: 1 to 63 letters, digits, '.', '_' or '-'"
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,63}", value):
        raise _Invalid(expected)
    return value


_CLUSTER_KEYS = (
    _Key(
        "enabled",
        _boolean,
        "Run as one node of several over the same PostgreSQL database (needs\n"
        '[storage] engine = "postgres"; docs/OPERATIONS.md): nodes record which devices\n'
        "are connected to them, wake each other for new messages and apply admin actions\n"
        "on every node.",
    ),
    _Key(
        "node_name",
        _node_name,
        "Name of this node, unique in the cluster (shown by momedoctl cluster status and\n"
        "in the metrics). Default: the machine's host name.",
        example='"chat1"',
    ),
    _Key(
        "heartbeat_interval",
        _seconds,
        "Seconds between this node's heartbeats (and refreshes of the node list).",
    ),
    _Key(
        "lease_timeout",
        _seconds,
        "A node whose last heartbeat is older than this many seconds counts as dead: its\n"
        "connected devices no longer count (at least twice heartbeat_interval).",
    ),
)

_ABUSE_KEYS = (
    _Key(
        "auth_failures",
        _integer(1, 1000000),
        "Failed enrollments and logins (bad signature, unknown device, wrong or expired\n"
        "invite code) one source address may make per auth_failure_window; beyond that\n"
        "its ENROLL and AUTH get TOO_MANY_ATTEMPTS until the window has refilled.",
    ),
    _Key(
        "auth_failure_window",
        _seconds,
        "Seconds in which auth_failures failures are allowed (the back-off refills in it).",
    ),
    _Key(
        "frames_per_second",
        _integer(1, 1000000),
        "Frames one connection may send per second on average; beyond that (and the\n"
        "burst) the server reads that connection no faster: the sender is slowed down.",
    ),
    _Key("frame_burst", _integer(1, 1000000), "Frames one connection may send in a burst."),
    _Key(
        "key_lookups_per_minute",
        _integer(1, 1000000),
        "KEY_GET and KEY_CLAIM requests one device may make per minute (against user-ID\n"
        "enumeration); further ones get RATE_LIMITED.",
    ),
    _Key(
        "max_prekeys_per_device",
        _integer(1, 1000000),
        "One-time prekeys stored per device and suite; uploads beyond get QUOTA_EXCEEDED.",
    ),
    _Key(
        "max_tls_handshakes",
        _integer(1, 1000000),
        "TLS handshakes in progress at once (all listeners); further connections wait, so a\n"
        "reconnect storm cannot starve established sessions of CPU.",
    ),
    _Key(
        "connections_per_address",
        _integer(1, 1000000),
        "Connections open at once from one source address; further ones get SERVER_BUSY.",
    ),
)
_POLICY_KEYS = (
    _Key(
        "users_create_groups",
        _boolean,
        "Users may create their own groups from the app (organisation groups and channels\n"
        "are managed with momedoctl group ...).",
    ),
    _Key(
        "max_group_size",
        _integer(2, 65535),
        "Most members of one group or channel (2 to 65535).",
    ),
)
_ATTACHMENTS_KEYS = (
    _Key("max_file_mib", _integer(1, 4096), "Largest attachment in MiB (as uploaded, encrypted)."),
    _Key(
        "quota_mib_per_user",
        _integer(1, 1048576),
        "Attachment storage one user may occupy at once, in MiB.",
    ),
    _Key(
        "ttl_days",
        _count,
        "Days an attachment is kept after the last message referencing it is gone.",
    ),
    _Key(
        "partial_ttl_hours",
        _count,
        "Hours an unfinished upload may wait for its next chunk before it is removed.",
    ),
    _Key("collect_interval", _seconds, "Seconds between runs of the attachment collector."),
)


def _push_url(value: Any, base: Path) -> str:
    expected = "an https:// (or http://) URL with a host name"
    if not isinstance(value, str):
        raise _Invalid(expected)
    try:
        origin_of(value)
    except ValueError:
        raise _Invalid(expected) from None
    return value


def _push_hosts(value: Any, base: Path) -> tuple[str, ...]:
    expected = (
        "an array of hosts ('ntfy.example.org', 'ntfy.example.org:8443', or"
        " 'http://host:port' to allow plain HTTP)"
    )
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Invalid(expected)
    for v in value:
        try:
            push_rule(v)
        except ValueError:
            raise _Invalid(expected, repr(v)) from None
    return tuple(value)


_PUSH_KEYS = (
    _Key("enabled", _boolean, "Send wake-ups to devices that registered a push target."),
    _Key(
        "gateway_url",
        _push_url,
        "Push gateway of your app vendor (holds the Apple/Google credentials); devices\n"
        "that register a gateway token are woken through it. Its host is always allowed.",
        example='"https://push.example.org/_matrix/push/v1/notify"',
    ),
    _Key(
        "allowed_hosts",
        _push_hosts,
        "UnifiedPush distributors (e.g. your ntfy server) devices may register endpoints\n"
        'on: "host" or "host:port" (https only), "http://host:port" to allow plain HTTP\n'
        "(intranet/tests). Any other endpoint URL is refused: no server-side request forgery.",
    ),
    _Key(
        "coalesce_seconds",
        _seconds,
        "At most one wake-up per device within this many seconds.",
    ),
    _Key("queue_size", _count, "Wake-ups waiting to be sent at most; more are dropped (counted)."),
    _Key("senders", _integer(1, 64), "Wake-ups sent at the same time (1 to 64)."),
    _Key("timeout", _seconds, "Seconds one push request may take."),
    _Key(
        "max_attempts",
        _integer(1, 100),
        "Attempts per wake-up on 5xx answers, 429 and timeouts. A target answering 404\n"
        "or 410 is dropped at once (and the device told at its next connection).",
    ),
    _Key(
        "retry_seconds", _seconds, "Wait before the first retry; doubles (with jitter) each time."
    ),
    _Key("retry_max_seconds", _seconds, "Longest wait between retries."),
)


def _strings(value: Any, base: Path) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _Invalid("an array of non-empty strings")
    return tuple(value)


_QUIET_KEYS = (
    _Key(
        "name",
        _server_name,
        "Name of the policy (shown in momedoctl quiet list).",
        example='"staff"',
    ),
    _Key("days", _string, 'Working days: "Mon-Fri", "Mon,Wed,Fri" or "daily".'),
    _Key("start", _string, 'The working window opens at this local time ("HH:MM") ...'),
    _Key("end", _string, "... and closes at this one; outside it the users have quiet hours."),
    _Key("timezone", _string, 'IANA time zone of the window, e.g. "Europe/Berlin".'),
    _Key(
        "defer_delivery",
        _boolean,
        "Also hold back non-urgent messages from the users' mobile devices while they are\n"
        "connected (desktops get everything). Without it only wake-ups are held.",
    ),
    _Key("users", _strings, "User IDs the policy applies to.", example='["M8N2-2HTR"]'),
    _Key(
        "groups",
        _strings,
        "Organisation groups/channels whose members it applies to.",
        example='["Kollegium"]',
    ),
)

# TOML table name -> (Config attribute, dataclass, keys, help, is an array of tables)
_SECTIONS: dict[str, tuple[str, type, tuple[_Key, ...], str, bool]] = {
    "server": ("server", ServerConfig, _SERVER_KEYS, "", False),
    "listener": (
        "listeners",
        ListenerConfig,
        _LISTENER_KEYS,
        "One [[listener]] table per address/port clients connect to (TLS). Repeat the\n"
        "table for more; the first one is used for invite links unless public_address\n"
        "is set.",
        True,
    ),
    "limits": ("limits", LimitsConfig, _LIMITS_KEYS, "", False),
    "abuse": (
        "abuse",
        AbuseConfig,
        _ABUSE_KEYS,
        "Abuse limits (docs/ADMIN.md). Many clients can share one address (a school's NAT):\n"
        "keep the per-address limits well above the number of devices behind one address.",
        False,
    ),
    "admin": ("admin", AdminConfig, _ADMIN_KEYS, "", False),
    "log": ("log", LogConfig, _LOG_KEYS, "", False),
    "storage": ("storage", StorageConfig, _STORAGE_KEYS, "", False),
    "cluster": ("cluster", ClusterConfig, _CLUSTER_KEYS, "", False),
    "metrics": ("metrics", MetricsConfig, _METRICS_KEYS, "", False),
    "policy": ("policy", PolicyConfig, _POLICY_KEYS, "", False),
    "attachments": ("attachments", AttachmentsConfig, _ATTACHMENTS_KEYS, "", False),
    "push": ("push", PushConfig, _PUSH_KEYS, "", False),
    "quiet_hours": (
        "quiet_hours",
        QuietHoursConfig,
        _QUIET_KEYS,
        "Quiet hours (docs/ADMIN.md): one [[quiet_hours]] table per policy. Outside the\n"
        "working window, wake-ups to the users under it wait until the window opens.\n"
        "Policies can also be set at run time: momedoctl quiet set ...",
        True,
    ),
}


def _fail(where: str, keypath: str, expected: str, got: str) -> ConfigError:
    return ConfigError(f"{where}: {keypath}: expected {expected}, got {got}")


def _unknown_keys(table: dict[str, Any], known: list[str], prefix: str, where: str) -> None:
    for name in table:
        if name not in known:
            shown = name if name.isprintable() else repr(name)  # the message stays one line
            raise ConfigError(f"{where}: {prefix}{shown}: unknown key (known: {', '.join(known)})")


def _parse_table(
    table: Any, keypath: str, cls: type, keys: tuple[_Key, ...], where: str, base: Path
) -> Any:
    if not isinstance(table, dict):
        raise _fail(where, keypath, "a table", _describe(table))
    _unknown_keys(table, [k.name for k in keys], keypath + ".", where)
    values: dict[str, Any] = {}
    for key in keys:
        if key.name in table:
            value = table[key.name]
            try:
                values[key.name] = key.check(value, base)
            except _Invalid as e:
                got = e.shown or _describe(value)
                raise _fail(where, f"{keypath}.{key.name}", e.expected, got) from None
    return cls(**values)


def _parse(data: dict[str, Any], where: str, base: Path) -> tuple[Config, bool]:
    """Validate a parsed TOML document; also report whether [admin] socket was set."""
    _unknown_keys(data, list(_SECTIONS), "", where)
    sections: dict[str, Any] = {}
    for name, (attr, cls, keys, _, is_array) in _SECTIONS.items():
        if name not in data:
            continue
        if not is_array:
            sections[attr] = _parse_table(data[name], name, cls, keys, where, base)
            continue
        tables = data[name]
        if not isinstance(tables, list):
            raise _fail(where, name, f"an array of tables ([[{name}]])", _describe(tables))
        if not tables:
            raise _fail(where, name, f"at least one [[{name}]] table", "an empty array")
        sections[attr] = tuple(
            _parse_table(t, f"{name}[{i}]", cls, keys, where, base) for i, t in enumerate(tables)
        )
    config = Config(**sections)
    _check_server(config.server, where)
    _check_listeners(config.listeners, where)
    _check_limits(config.limits, where)
    _check_storage(config.storage, where)
    _check_cluster(config, where)
    _check_quiet_hours(config.quiet_hours, where)
    admin = data.get("admin", {})
    return config, "socket" in admin


def _check_storage(storage: StorageConfig, where: str) -> None:
    if storage.engine == "postgres" and storage.dsn is None:
        raise ConfigError(
            f'{where}: storage.dsn: engine = "postgres" needs the database to use, e.g.'
            ' dsn = "host=/run/postgresql dbname=momedo user=momedo"'
        )
    if storage.engine == "sqlite" and storage.dsn is not None:
        raise ConfigError(
            f'{where}: storage.dsn: only used with engine = "postgres" (engine is "sqlite")'
        )


def _check_cluster(config: Config, where: str) -> None:
    cluster = config.cluster
    if cluster.enabled and config.storage.engine != "postgres":
        raise ConfigError(
            f"{where}: cluster.enabled: several nodes share one PostgreSQL database; set"
            f' [storage] engine = "postgres" and dsn (engine is "{config.storage.engine}")'
        )
    if cluster.lease_timeout < 2 * cluster.heartbeat_interval:
        raise ConfigError(
            f"{where}: cluster.lease_timeout: must be at least twice heartbeat_interval"
            f" ({cluster.lease_timeout:g} s < 2 x {cluster.heartbeat_interval:g} s)"
        )


def _check_quiet_hours(policies: tuple[QuietHoursConfig, ...], where: str) -> None:
    seen: set[str] = set()
    for i, qc in enumerate(policies):
        if not qc.name:
            raise _fail(where, f"quiet_hours[{i}].name", "a name", "none")
        if qc.name in seen:
            raise _fail(where, f"quiet_hours[{i}].name", "a name used once", repr(qc.name))
        seen.add(qc.name)
        try:
            quiet_policy(qc)
        except ValueError as e:
            raise ConfigError(f"{where}: quiet_hours[{i}] ({qc.name}): {e}") from None


def quiet_policy(qc: QuietHoursConfig) -> QuietPolicy:
    """The policy a ``[[quiet_hours]]`` table describes; ValueError if it is inconsistent."""
    users = tuple(userid.normalize(u) for u in qc.users)
    return QuietPolicy(
        qc.name,
        parse_days(qc.days),
        parse_time(qc.start),
        parse_time(qc.end),
        qc.timezone,
        qc.defer_delivery,
        users,
        qc.groups,
        "config",
    )


def _check_server(server: ServerConfig, where: str) -> None:
    if server.public_address is not None and server.public_addresses is not None:
        raise ConfigError(
            f"{where}: server.public_addresses: set either public_address (one address) or "
            "public_addresses (several nodes), not both"
        )
    addresses = server_addresses(server)
    if not addresses:
        return
    # The longest invite link this makes must stay within the link limit (QR codes).
    pins = [bytes([i]) * 32 for i in range(1 + len(server.certificate_pins or ()))]
    try:
        invite.InviteLink.of(addresses, "0" * invite.INVITE_CODE_LEN, pins, bytes(32))
    except invite.InvalidInviteLink as e:
        key = "public_addresses" if server.public_addresses is not None else "public_address"
        raise ConfigError(f"{where}: server.{key}: {e}") from None


def server_addresses(server: ServerConfig) -> tuple[invite.Address, ...]:
    """The ``(host, port)`` addresses invite links point to: ``public_addresses``, or the
    one ``public_address``; empty if neither is set (the daemon uses its first listener)."""
    texts = server.public_addresses or ((server.public_address,) if server.public_address else ())
    out = []
    for text in texts:
        host, _, port = text.rpartition(":")
        out.append((host.strip("[]"), int(port)))
    return tuple(out)


def _check_listeners(listeners: tuple[ListenerConfig, ...], where: str) -> None:
    seen: dict[tuple[str, int], int] = {}
    for i, lc in enumerate(listeners):
        if lc.cert is not None and lc.key is None:
            raise _fail(where, f"listener[{i}].key", "a key file together with cert", "none")
        if lc.key is not None and lc.cert is None:
            raise _fail(where, f"listener[{i}].cert", "a certificate together with key", "none")
        endpoint = (lc.address, lc.port)
        if endpoint in seen:
            raise _fail(
                where,
                f"listener[{i}]",
                "a unique address and port",
                f"{lc.address}:{lc.port} (already used by listener[{seen[endpoint]}])",
            )
        seen[endpoint] = i


def _check_limits(limits: LimitsConfig, where: str) -> None:
    most = limits.max_frame_bytes - KEY_PUT_OVERHEAD
    if limits.max_record_bytes > most:
        raise _fail(
            where,
            "limits.max_record_bytes",
            f"at most {most} (max_frame_bytes minus the {KEY_PUT_OVERHEAD}-byte frame overhead)",
            str(limits.max_record_bytes),
        )


# --- the commented default file ------------------------------------------------------------

_HEADER = f"""\
# momedod configuration.
#
# Every key is listed with its built-in default, commented out: uncomment a line
# and change it to override that default. Unknown keys and wrong types are errors;
# check a change with `momedod check-config -c FILE` before restarting.
#
# momedod reads the first of: `momedod run -c FILE`, $MOMEDO_CONFIG,
# {DEFAULT_CONFIG_PATH}. Without any it runs on these defaults.
# Relative paths are relative to the directory of this file.
# Users, devices and invites are not configured here: use momedoctl.
"""


def _toml_value(value: Any) -> str:
    if isinstance(value, Path):
        value = str(value)
    return tomli_w.dumps({"v": value}).partition("=")[2].strip()


def _comment(text: str) -> list[str]:
    return [f"# {line}" for line in text.splitlines()]


def default_config_text() -> str:
    """The commented default configuration; ``etc/momedod.toml`` is a copy of it."""
    lines = [_HEADER.rstrip("\n")]
    for name, (attr, cls, keys, help_text, is_array) in _SECTIONS.items():
        defaults = cls()
        lines.append("")
        lines.extend(_comment(help_text))
        optional = is_array and not getattr(Config(), attr)  # none by default: an example
        lines.append(("#" if optional else "") + (f"[[{name}]]" if is_array else f"[{name}]"))
        if optional:  # "# key = value": an example to copy, not a default to uncomment
            for key in keys:
                lines.extend(_comment(key.help) if key.help else [])
                lines.append(
                    f"# {key.name} = {key.example or _toml_value(getattr(defaults, key.name))}"
                )
            continue
        for key in keys:
            default = getattr(defaults, key.name)
            if key.help:
                lines.append("")
                lines.extend(_comment(key.help))
            if default is None:
                lines.append(f"#{key.name} = {key.example}  # example; not set by default")
            else:
                lines.append(f"#{key.name} = {_toml_value(default)}")
    return "\n".join(lines) + "\n"
