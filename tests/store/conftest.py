"""Store fixtures: a fresh store per test on every engine, with cheap random IDs.

``store`` and ``store_opener`` are parametrized over ``ENGINES``: a test that uses them runs
once on SQLite and once on PostgreSQL (the throwaway server of ``tests/pg.py``; each path
opened gets its own empty schema, so reopening a path finds its data again). A test marked
``@pytest.mark.sqlite_only`` (say why in a comment) runs on SQLite alone.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from momedod.store import Store, open_store

ENGINES = ("sqlite", "postgres")
PG_POOL_SIZE = 4

Opener = Callable[..., AbstractAsyncContextManager[Store]]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only: a store test about SQLite's files; runs on the sqlite engine only"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine" in metafunc.fixturenames:
        only = metafunc.definition.get_closest_marker("sqlite_only") is not None
        metafunc.parametrize("engine", ["sqlite"] if only else list(ENGINES))


def fake_user_id() -> str:
    return secrets.token_hex(4).upper()


def fake_invite_code() -> str:
    return secrets.token_hex(10).upper()


def opened(path: Path, **kwargs: object) -> AbstractAsyncContextManager[Store]:
    """open_store("sqlite") for tests, with fake ID generators unless given."""
    kwargs.setdefault("new_user_id", fake_user_id)
    kwargs.setdefault("new_invite_code", fake_invite_code)
    return open_store("sqlite", path, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def store_opener(engine: str, request: pytest.FixtureRequest) -> Opener:
    """Like ``opened``, on this test's engine: ``async with store_opener(path) as s``."""
    if engine == "sqlite":
        return opened
    pg = request.getfixturevalue("pg_server")
    schemas: dict[Path, str] = {}

    def open_pg(path: Path, **kwargs: Any) -> AbstractAsyncContextManager[Store]:
        kwargs.setdefault("new_user_id", fake_user_id)
        kwargs.setdefault("new_invite_code", fake_invite_code)
        key = Path(path).resolve()
        if key not in schemas:
            schemas[key] = pg.new_dsn()
        return open_store("postgres", path, dsn=schemas[key], pool_size=PG_POOL_SIZE, **kwargs)

    return open_pg


async def query(store: Store, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of a portable SQL query (``?`` placeholders) in a read transaction, any engine."""
    return await store._read(lambda tx: tx.all(sql, params))  # type: ignore[attr-defined]


@pytest.fixture
async def store(store_opener: Opener, tmp_path: Path) -> AsyncIterator[Store]:
    async with store_opener(tmp_path) as s:
        yield s
