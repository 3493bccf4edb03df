"""The systemd unit and the sysusers.d/tmpfiles.d files (issue 6, acceptance point 2).

``scripts/check-unit.sh`` (``make check-unit``) runs ``systemd-analyze verify`` and
``systemd-analyze security --offline=true`` on ``systemd/momedod.service`` and applies the
sysusers.d and tmpfiles.d files to an empty root; these tests run it, check that it really
fails on a bad unit, and cross-check the unit against the daemon's defaults. None needs a
running systemd; the systemd-analyze tests are skipped only where the binary is absent.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from momedod.admin.server import ADMIN_GROUP
from momedod.config import ADMIN_SOCKET_NAME, DEFAULT_CONFIG_PATH, AdminConfig, ServerConfig

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "momedod.service"
SYSUSERS = REPO / "systemd" / "momedo.sysusers"
TMPFILES = REPO / "systemd" / "momedo.tmpfiles"
CHECK_UNIT = REPO / "scripts" / "check-unit.sh"
MAX_EXPOSURE = 2.0

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian package systemd): cannot check the unit",
)
needs_sysusers = pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None,
    reason="systemd-sysusers/systemd-tmpfiles are not installed (Debian package systemd)",
)


def unit_settings(path: Path = UNIT) -> dict[str, dict[str, list[str]]]:
    """``{section: {key: [values in order]}}`` of a unit file (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}: {line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not a key=value line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def service(key: str) -> str:
    """The (last) value of ``key`` in [Service]."""
    return unit_settings()["Service"][key][-1]


def check_unit(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(CHECK_UNIT), str(unit)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def exposure_level(output: str) -> float:
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", output)
    assert m, f"no 'Overall exposure level' line in:\n{output}"
    return float(m[1])


# --- systemd-analyze ---------------------------------------------------------------------------


@needs_analyze
def test_check_unit_passes() -> None:
    """What `make check-unit` runs: verify is clean and the exposure level is at most 2.0."""
    result = check_unit(UNIT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "systemd-analyze verify" in result.stdout
    m = re.search(r"exposure level (\d+(?:\.\d+)?) \(at most", result.stdout)
    assert m, result.stdout
    assert float(m[1]) <= MAX_EXPOSURE


@needs_analyze
def test_security_exposure_at_most_2() -> None:
    """The same number straight from systemd-analyze, without the script in between."""
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "momedod.service" not in result.stderr, result.stderr  # no parse warnings
    assert exposure_level(result.stdout) <= MAX_EXPOSURE


@needs_analyze
def test_check_unit_fails_on_unknown_key(tmp_path: Path) -> None:
    # systemd-analyze verify itself exits 0 here and only prints a warning.
    bad = tmp_path / "momedod.service"
    bad.write_text(UNIT.read_text().replace("[Service]\n", "[Service]\nWatchdogSecs=30\n", 1))
    result = check_unit(bad)
    assert result.returncode != 0
    assert "Unknown key" in result.stdout + result.stderr
    assert str(bad) in result.stdout + result.stderr  # named by its own path, not the copy


@needs_analyze
def test_check_unit_fails_on_weak_sandbox(tmp_path: Path) -> None:
    weak = tmp_path / "momedod.service"
    lines = UNIT.read_text().splitlines(keepends=True)
    dropped = ("Protect", "Private", "SystemCall", "Restrict", "CapabilityBoundingSet")
    weak.write_text("".join(line for line in lines if not line.startswith(dropped)))
    result = check_unit(weak)
    assert result.returncode != 0
    assert f"is above {MAX_EXPOSURE}" in result.stderr


# --- the unit against the daemon -----------------------------------------------------------


def test_unit_is_notify_with_watchdog_and_reload() -> None:
    assert service("Type") == "notify"
    assert service("NotifyAccess") == "main"
    assert service("WatchdogSec") == "30"
    # systemd 252 (bookworm) has no Type=notify-reload: SIGHUP, the daemon says RELOADING=1.
    assert service("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert service("Restart") == "on-failure"
    assert int(service("TimeoutStopSec")) >= 30
    assert service("KillSignal") == "SIGTERM"


def test_unit_runs_the_venv_with_the_default_config() -> None:
    assert service("ExecStart") == f"/opt/momedo/bin/momedod run --config {DEFAULT_CONFIG_PATH}"
    assert DEFAULT_CONFIG_PATH.parent == Path("/etc") / service("ConfigurationDirectory")


def test_unit_directories_match_the_daemon_defaults() -> None:
    """$STATE_DIRECTORY/$RUNTIME_DIRECTORY point where momedoctl (outside the unit) looks."""
    assert service("User") == "momedo"
    assert service("Group") == "momedo"
    assert ServerConfig().state_dir == Path("/var/lib") / service("StateDirectory")
    assert service("StateDirectoryMode") == "0700"
    assert AdminConfig().socket == Path("/run") / service("RuntimeDirectory") / ADMIN_SOCKET_NAME
    # Operators in momedo-admin must reach the 0660 socket inside the runtime directory.
    assert int(service("RuntimeDirectoryMode"), 8) & 0o005 == 0o005
    # The daemon gives the socket its admin group, so it must be a member.
    assert service("SupplementaryGroups") == ADMIN_GROUP


def test_unit_sandbox() -> None:
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "MemoryDenyWriteExecute": "yes",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "SystemCallArchitectures": "native",
    }
    assert {key: service(key) for key in expected} == expected
    filters = unit_settings()["Service"]["SystemCallFilter"]
    assert filters[0] == "@system-service"
    # chown must stay allowed: the daemon gives the admin socket to the momedo-admin group.
    assert "@chown" in filters[1:]


def test_backup_directory_is_writable_and_created() -> None:
    """momedoctl backup makes the daemon write outside its state dir: only there."""
    writable = [p.lstrip("-") for p in service("ReadWritePaths").split()]
    assert writable == ["/var/backups/momedo"]
    entries = [line.split() for line in TMPFILES.read_text().splitlines()]
    entries = [e for e in entries if e and not e[0].startswith("#")]
    assert ["d", "/var/backups/momedo", "0700", "momedo", "momedo", "-"] in entries


# --- sysusers.d and tmpfiles.d ---------------------------------------------------------------


@needs_sysusers
def test_sysusers_and_tmpfiles_apply_to_an_empty_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    subprocess.run(
        ["systemd-sysusers", f"--root={root}", str(SYSUSERS)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    passwd = {
        line.split(":")[0]: line.split(":")
        for line in (root / "etc/passwd").read_text().splitlines()
    }
    groups = {
        line.split(":")[0]: line.split(":")
        for line in (root / "etc/group").read_text().splitlines()
    }
    assert set(passwd) == {"momedo"}
    assert set(groups) == {"momedo", ADMIN_GROUP}
    _name, _pw, uid, gid, _gecos, home, shell = passwd["momedo"]
    assert int(uid) < 1000 and gid == groups["momedo"][2]  # a system user with its own group
    assert home == "/var/lib/momedo"
    assert shell == "/usr/sbin/nologin"

    result = subprocess.run(
        ["systemd-tmpfiles", f"--root={root}", "--create", str(TMPFILES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and not result.stderr, result.stderr
    etc = (root / "etc/momedo").stat()
    assert (stat.S_IMODE(etc.st_mode), etc.st_uid) == (0o755, 0)
    backups = (root / "var/backups/momedo").stat()
    assert stat.S_IMODE(backups.st_mode) == 0o700
    if os.geteuid() == 0:  # only root can give the directory to momedo
        assert (backups.st_uid, backups.st_gid) == (int(uid), int(gid))
