"""A throwaway PostgreSQL server for the test session (the postgres store engine's tests).

``pg_server`` (session-scoped) runs ``initdb`` into a new temporary directory and starts the
server with ``pg_ctl``, listening only on a Unix socket in that directory, with ``fsync=off``.
PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` system
user (``runuser``), which owns the directory. Each test gets its own empty schema
(:meth:`PgServer.new_dsn`: a DSN whose ``search_path`` is that schema): creating a schema
is much cheaper than a database. Without PostgreSQL's binaries the fixture FAILS (it never
skips): install the Debian package ``postgresql``.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
DATABASE = "momedo_test"
PORT = 5432  # only names the socket file: the server listens on no TCP port


def find_pg_bin() -> Path | None:
    """The newest PostgreSQL bin directory with initdb and pg_ctl, or None."""

    def version(d: str) -> int:
        try:
            return int(Path(d).parent.name.split(".")[0])
        except ValueError:
            return 0

    for d in sorted(glob.glob(PG_BIN_GLOB), key=version, reverse=True):
        if os.access(f"{d}/initdb", os.X_OK) and os.access(f"{d}/pg_ctl", os.X_OK):
            return Path(d)
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).parent
    return None


MISSING = (
    "PostgreSQL's server binaries (initdb, pg_ctl) were not found in "
    f"{PG_BIN_GLOB}: the postgres store engine's tests need them. Install the Debian "
    "package postgresql (apt-get install postgresql; `make test` does it when run as root)."
)


class PgServer:
    """A running throwaway server; ``new_dsn()`` hands out fresh empty schemas."""

    def __init__(self, socket_dir: Path) -> None:
        self.socket_dir = socket_dir
        self._names = itertools.count(1)

    def dsn(self, dbname: str = DATABASE) -> str:
        return f"host={self.socket_dir} port={PORT} user=postgres dbname={dbname}"

    def new_dsn(self) -> str:
        """A DSN of a new, empty schema (its own search_path) in the test database."""
        name = f"t_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
        return f"{self.dsn()} options='-c search_path={name}'"


def _as_server_user() -> tuple[list[str], int | None, int | None]:
    """The command prefix that runs a program as a user PostgreSQL accepts, and its ids."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail(
            "running as root, but there is no 'postgres' system user to run the test "
            "PostgreSQL server as (the Debian package postgresql creates it)"
        )
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.fail("running as root needs runuser (util-linux) to start PostgreSQL as postgres")
    return [runuser, "-u", "postgres", "--"], pw.pw_uid, pw.pw_gid


def _run(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd="/")
    if done.returncode != 0:
        pytest.fail(f"{what} failed ({done.returncode}): {done.stderr.strip() or done.stdout}")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """Start PostgreSQL for this session in a temporary directory; stop and remove it after."""
    bindir = find_pg_bin()
    if bindir is None:
        pytest.fail(MISSING)
    prefix, uid, gid = _as_server_user()
    # Not under pytest's tmp dirs: those are 0700 root's, where the postgres user cannot go.
    root = Path(tempfile.mkdtemp(prefix="momedo-pg-"))
    data = root / "data"
    if uid is not None and gid is not None:
        os.chown(root, uid, gid)
    try:
        _run(
            [
                *prefix,
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            "initdb",
        )
        options = (
            f"-c listen_addresses='' -c unix_socket_directories='{root}' -p {PORT}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            " -c max_connections=200"
        )
        _run(
            [
                *prefix,
                str(bindir / "pg_ctl"),
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                str(data),
                "-l",
                str(root / "server.log"),
                "-o",
                options,
            ],
            "pg_ctl start (see the log in the temporary directory)",
        )
        try:
            server = PgServer(root)
            with psycopg.connect(server.dsn("postgres"), autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {DATABASE}")
            yield server
        finally:
            subprocess.run(
                [*prefix, str(bindir / "pg_ctl"), "stop", "-m", "immediate", "-D", str(data)],
                capture_output=True,
                check=False,
                cwd="/",
            )
    finally:
        # Thousands of files (a schema per test): removed in the background, so the session
        # does not wait for it.
        subprocess.Popen(["rm", "-rf", "--", str(root)], start_new_session=True, cwd="/")
