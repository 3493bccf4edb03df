"""Store fixtures: a fresh SQLite store per test, with cheap random IDs."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from momedod.store import Store, open_store


def fake_user_id() -> str:
    return secrets.token_hex(4).upper()


def fake_invite_code() -> str:
    return secrets.token_hex(10).upper()


def opened(path: Path, **kwargs: object) -> AbstractAsyncContextManager[Store]:
    """open_store for tests: the real engine, with fake ID generators unless given."""
    kwargs.setdefault("new_user_id", fake_user_id)
    kwargs.setdefault("new_invite_code", fake_invite_code)
    return open_store("sqlite", path, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def store_opener() -> object:
    return opened


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with opened(tmp_path) as s:
        yield s
