"""`make install` / `make uninstall` into a staging root (DESTDIR), as root.

The install builds a real venv at DESTDIR/opt/momedo with /usr/bin/python3 and pip-installs
momedo from this checkout (dependencies come from pip's index or cache, about 20 s here). With
DESTDIR nothing on the running system changes: no users, no systemctl.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALL_PYTHON = Path("/usr/bin/python3")
PREFIX = "/opt/momedo"
COMMANDS = ("momedod", "momedoctl", "momedo", "momedo-tui")


def _python_can_make_venvs() -> bool:
    if not INSTALL_PYTHON.exists():
        return False
    probe = [
        str(INSTALL_PYTHON),
        "-c",
        "import ensurepip, venv, sys; sys.exit(sys.version_info < (3, 11))",
    ]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="make install runs as root only"),
    pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed"),
    pytest.mark.skipif(
        not _python_can_make_venvs(),
        reason=f"{INSTALL_PYTHON} is missing, older than 3.11 or lacks venv (python3-venv)",
    ),
]


def make(target: str, destdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), target, f"DESTDIR={destdir}", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def succeeded(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


@dataclass
class Staged:
    root: Path
    output: str

    @property
    def venv(self) -> Path:
        return self.root / PREFIX.lstrip("/")

    @property
    def config(self) -> Path:
        return self.root / "etc/momedo/momedod.toml"

    def installed_files(self) -> list[Path]:
        return [
            *(self.root / "usr/local/bin" / c for c in COMMANDS),
            self.root / "etc/systemd/system/momedod.service",
            self.root / "usr/lib/sysusers.d/momedo.conf",
            self.root / "usr/lib/tmpfiles.d/momedo.conf",
        ]


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Staged]:
    root = tmp_path_factory.mktemp("destdir")
    yield Staged(root, succeeded(make("install", root)))


def test_install_builds_a_working_venv(staged: Staged) -> None:
    momedod = staged.venv / "bin/momedod"
    result = subprocess.run(
        [str(momedod), "default-config"], capture_output=True, text=True, timeout=60, check=True
    )
    assert "[server]" in result.stdout
    for c in COMMANDS:
        assert os.access(staged.venv / "bin" / c, os.X_OK), c
    assert (staged.venv / "share/doc/momedo/ADMIN.md").is_file()  # the unit's Documentation=
    assert "Nothing was started" in staged.output


def test_install_links_commands_to_the_prefix(staged: Staged) -> None:
    for c in COMMANDS:
        link = staged.root / "usr/local/bin" / c
        assert link.is_symlink(), link
        assert os.readlink(link) == f"{PREFIX}/bin/{c}"  # the final path, without DESTDIR


def test_install_writes_systemd_files(staged: Staged) -> None:
    unit = staged.root / "etc/systemd/system/momedod.service"
    assert unit.read_text() == (REPO / "systemd/momedod.service").read_text()  # default PREFIX
    assert (staged.root / "usr/lib/sysusers.d/momedo.conf").read_bytes() == (
        REPO / "systemd/momedo.sysusers"
    ).read_bytes()
    assert (staged.root / "usr/lib/tmpfiles.d/momedo.conf").read_bytes() == (
        REPO / "systemd/momedo.tmpfiles"
    ).read_bytes()
    for path in staged.installed_files()[len(COMMANDS) :]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_install_writes_the_default_config(staged: Staged) -> None:
    default = subprocess.run(
        [str(staged.venv / "bin/momedod"), "default-config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert staged.config.read_text() == default
    st = staged.config.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o640, 0)
    assert f"{staged.config}: ok" in staged.output  # install ran check-config on it


def test_installed_package_has_its_data_files(staged: Staged) -> None:
    """Non-Python files of the packages (e.g. momedo-tui's stylesheet) reach the venv."""
    (site,) = staged.venv.glob("lib/python3*/site-packages")
    missing = [
        str(path.relative_to(REPO))
        for package in ("momedod", "momedo_tui")
        for path in (REPO / package).rglob("*")
        if path.is_file()
        and path.suffix not in (".py", ".pyc")
        and "__pycache__" not in path.parts
        and not (site / path.relative_to(REPO)).exists()
    ]
    assert not missing, (
        f"not in the installed wheel: {missing}; declare them in pyproject.toml, e.g. "
        '[tool.setuptools.package-data] momedo_tui = ["*.tcss"]'
    )


def test_reinstall_keeps_config_then_uninstall_keeps_data(staged: Staged) -> None:
    # Runs last in this module: it uninstalls what the fixture installed.
    edited = staged.config.read_text() + '\n[server]\npublic_address = "chat.example.org:7443"\n'
    staged.config.write_text(edited)
    again = succeeded(make("install", staged.root))
    assert staged.config.read_text() == edited
    assert "Kept the existing" in again

    state = staged.root / "var/lib/momedo"
    state.mkdir(parents=True)
    (state / "momedo.sqlite3").write_bytes(b"data")
    out = succeeded(make("uninstall", staged.root))
    for path in staged.installed_files():
        assert not path.exists() and not path.is_symlink(), path
    assert not staged.venv.exists()
    assert staged.config.read_text() == edited
    assert (state / "momedo.sqlite3").read_bytes() == b"data"
    assert "Kept:" in out and "/etc/momedo" in out


def test_install_refuses_non_root(tmp_path: Path) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    result = subprocess.run(
        [
            *("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"),
            *("make", "--no-print-directory", "-C", str(REPO), "install", f"DESTDIR={tmp_path}"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "must run as root" in result.stderr
    assert not (tmp_path / PREFIX.lstrip("/")).exists()


def test_install_refuses_to_replace_a_foreign_command(tmp_path: Path) -> None:
    bindir = tmp_path / "usr/local/bin"
    bindir.mkdir(parents=True)
    (bindir / "momedoctl").write_text("#!/bin/sh\n")
    result = make("install", tmp_path)
    assert result.returncode != 0
    assert "is not a symbolic link" in result.stderr
    assert not (tmp_path / PREFIX.lstrip("/")).exists()  # refused before building anything


def test_uninstall_leaves_foreign_files_alone(tmp_path: Path) -> None:
    bindir = tmp_path / "usr/local/bin"
    bindir.mkdir(parents=True)
    (bindir / "momedod").symlink_to("/usr/bin/true")
    not_a_venv = tmp_path / "srv/thing"
    not_a_venv.mkdir(parents=True)
    (not_a_venv / "keep").write_text("x")
    result = make("uninstall", tmp_path, "PREFIX=/srv/thing")
    assert result.returncode == 0, result.stderr
    assert (bindir / "momedod").is_symlink()
    assert (not_a_venv / "keep").exists()
    assert "not a Python venv" in result.stderr
