"""``[storage]``: the engine, and for PostgreSQL its dsn and pool size."""

from __future__ import annotations

from pathlib import Path

import pytest

from momedod import config
from momedod.config import ConfigError, StorageConfig, load_config


@pytest.fixture(autouse=True)
def no_system_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never read the machine's /etc/momedo/momedod.toml."""
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", tmp_path / "etc" / "momedod.toml")


def load(tmp_path: Path, text: str) -> StorageConfig:
    path = tmp_path / "momedod.toml"
    path.write_text(text)
    return load_config(path, environ={}).storage


def test_sqlite_is_the_default_engine(tmp_path: Path) -> None:
    assert load(tmp_path, "") == StorageConfig(engine="sqlite", dsn=None, pool_size=10)


def test_postgres_engine_with_dsn_and_pool_size(tmp_path: Path) -> None:
    storage = load(
        tmp_path,
        '[storage]\nengine = "postgres"\ndsn = "host=/run/postgresql dbname=momedo"\n'
        "pool_size = 4\n",
    )
    assert storage == StorageConfig("postgres", "host=/run/postgresql dbname=momedo", 4)
    uri = load(tmp_path, '[storage]\nengine = "postgres"\ndsn = "postgresql://m@db/momedo"\n')
    assert uri.dsn == "postgresql://m@db/momedo" and uri.pool_size == 10


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('engine = "postgres"', r'storage\.dsn: engine = "postgres" needs the database'),
        ('dsn = "dbname=momedo"', r'storage\.dsn: only used with engine = "postgres"'),
        ('engine = "mysql"', r"storage\.engine: expected one of 'sqlite', 'postgres'"),
        ('engine = "postgres"\ndsn = ""', r"storage\.dsn: expected a PostgreSQL connection"),
        ('engine = "postgres"\ndsn = 5', r"storage\.dsn: expected a PostgreSQL connection"),
        ('engine = "postgres"\ndsn = "port=1"\npool_size = 0', r"storage\.pool_size: expected an"),
        ('engine = "postgres"\ndsn = "port=1"\npool_size = true', r"storage\.pool_size: expected"),
    ],
)
def test_invalid_storage_settings_are_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, f"[storage]\n{text}\n")


def test_an_unparsable_dsn_is_not_echoed(tmp_path: Path) -> None:
    """It may hold a password."""
    with pytest.raises(ConfigError, match=r"storage\.dsn: .*cannot parse \(not shown\)") as info:
        load(tmp_path, '[storage]\nengine = "postgres"\ndsn = "password=\'s3cret"\n')
    assert "s3cret" not in str(info.value)


def test_momedod_restore_refuses_the_postgres_engine(tmp_path: Path) -> None:
    """'momedod restore' restores SQLite backups; on postgres it says what to use instead."""
    import subprocess
    import sys

    cfg = tmp_path / "momedod.toml"
    cfg.write_text(
        f'[server]\nstate_dir = "{tmp_path / "state"}"\n'
        '[storage]\nengine = "postgres"\ndsn = "host=/nonexistent dbname=momedo"\n'
    )
    (tmp_path / "backup").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "momedod.cli", "restore", "-c", str(cfg), str(tmp_path / "backup")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "restore refused" in done.stderr and "pg_restore" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "state").exists()
