"""Online backup of the store, the backup manifest, and restore's checks."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sqlite3
import stat
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio

from momedod.store import Recipient, Store, StoreError
from momedod.store import backup as bk
from momedod.store import sqlite as sqlite_engine
from momedod.store.sqlite import DB_FILENAME, SQLiteStore

# The online backup copies SQLite's database file; the postgres engine refuses (pg_dump) and
# test_store_postgres.py checks that.
pytestmark = pytest.mark.sqlite_only

T0 = 1_700_000_000_000
DAY = 86_400_000
KEY = b"\x01" * 32
FP = "B" * 52
WHEN = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)


@pytest.fixture
def opened(store_opener: Any) -> Any:
    return store_opener


async def make_user(store: Store) -> str:
    user, invite = await store.create_user("someone", T0, DAY)
    await store.redeem_invite(invite.code, KEY, "device", T0)
    return user.user_id


def make_tls(state: Path) -> None:
    tls = state / "tls"
    tls.mkdir(mode=0o700, parents=True, exist_ok=True)
    (tls / "cert.pem").write_text("-----BEGIN CERTIFICATE-----\nfake\n")
    (tls / "key.pem").write_text("-----BEGIN PRIVATE KEY-----\nfake\n")
    os.chmod(tls / "key.pem", 0o600)


async def write_backup(store: Store, state: Path, dest: Path) -> bk.BackupSummary:
    """What the admin command does, minus the socket."""
    bk.prepare_backup_dir(dest)
    info = await store.backup(dest)
    return bk.finish_backup(dest, state, info, fingerprint=FP, created=WHEN, momedo_version="0.1.0")


def mailbox_ids(db: Path) -> dict[int, set[bytes]]:
    """message ids per device pk, read straight from a database file."""
    uri = db.resolve().as_uri() + "?mode=ro&immutable=1"
    with sqlite3.connect(uri, uri=True) as conn:
        rows = conn.execute("SELECT device_pk, message_id FROM mailbox").fetchall()
    out: dict[int, set[bytes]] = {}
    for pk, message_id in rows:
        out.setdefault(pk, set()).add(bytes(message_id))
    return out


def integrity(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db.resolve().as_uri() + "?mode=ro&immutable=1", uri=True) as conn:
        return [tuple(r) for r in conn.execute("PRAGMA integrity_check")]


# --- the online backup ---------------------------------------------------------------------


async def test_backup_during_concurrent_enqueues_is_a_consistent_snapshot(
    tmp_path: Path, opened: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tiny steps: the copy takes many steps while the writer keeps committing in between.
    monkeypatch.setattr(sqlite_engine, "BACKUP_STEP_PAGES", 2)
    state, dest = tmp_path / "state", tmp_path / "backup"
    committed: list[bytes] = []
    async with opened(state) as store:
        sender = await make_user(store)
        rcpts = [await make_user(store) for _ in range(2)]
        to = [Recipient(r, 1, b"part") for r in rcpts]
        stop = False
        n = 0

        async def burst() -> None:
            nonlocal n
            while not stop:
                n += 1
                message_id = n.to_bytes(16, "big")
                await store.enqueue((sender, 1), message_id, os.urandom(2000), to, T0, 100_000)
                committed.append(message_id)

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(burst)
            while len(committed) < 300:
                await trio.sleep(0.001)
            before = set(committed)
            info = await store.backup(_mk(dest))
            await trio.sleep(0.02)
            stop = True
        live = await store.stats()

    copy = dest / DB_FILENAME
    assert integrity(copy) == [("ok",)]
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert sorted(p.name for p in dest.iterdir()) == [DB_FILENAME]  # one self-contained file
    per_device = mailbox_ids(copy)
    assert len(per_device) == 2
    a, b = per_device.values()
    assert before <= a, f"{len(before - a)} messages committed before the backup are missing"
    assert a == b  # each message for both recipients or for neither: no half transaction
    assert a <= set(committed)
    assert info.mailbox_entries == len(a) * 2 and info.users == 3 and info.devices == 3
    assert info.files == (DB_FILENAME,) and info.bytes == copy.stat().st_size
    assert info.schema_version >= 1
    assert live.mailbox_entries > info.mailbox_entries  # the burst went on after the backup

    # The copy is a working store on its own.
    restored = tmp_path / "restored"
    restored.mkdir()
    shutil.copy(copy, restored / DB_FILENAME)
    async with opened(restored) as store2:
        entries = await store2.fetch(rcpts[0], 1, 0, 100_000)
        assert {e.message_id for e in entries} == a
        assert all(e.part == b"part" and len(e.payload) == 2000 for e in entries)


def _mk(path: Path) -> Path:
    path.mkdir()
    return path


async def test_writes_go_on_while_a_backup_copies(
    tmp_path: Path, opened: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy holds a read snapshot for its whole run, and commits are not blocked by it.

    The copy is paused after its first one-page step while another message commits; a backup
    that restarted on that commit (what SQLite does without the held read transaction) would
    contain it.
    """
    monkeypatch.setattr(sqlite_engine, "BACKUP_STEP_PAGES", 1)
    gate = threading.Event()
    copying = threading.Event()
    original = SQLiteStore._copy_to

    def paused_copy(self: SQLiteStore, dest: Path, cancelled: threading.Event) -> Any:
        def hold(status: int, remaining: int, total: int) -> None:
            copying.set()
            gate.wait(10)

        real_backup = sqlite3.Connection.backup

        class Conn(sqlite3.Connection):
            def backup(self, target: Any, **kw: Any) -> None:  # type: ignore[override]
                kw["progress"] = hold
                real_backup(self, target, **kw)

        monkeypatch.setattr(sqlite_engine.sqlite3, "connect", _factory(Conn))
        return original(self, dest, cancelled)

    async with opened(tmp_path / "state") as store:
        sender, rcpt = await make_user(store), await make_user(store)
        to = [Recipient(rcpt, 1, b"")]
        await store.enqueue((sender, 1), b"1" * 16, b"before", to, T0, 100)
        monkeypatch.setattr(SQLiteStore, "_copy_to", paused_copy)
        dest = _mk(tmp_path / "backup")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.backup, dest)
            await trio.to_thread.run_sync(copying.wait, 10)
            # The backup is stopped after its first step, inside its read transaction.
            with trio.fail_after(5):
                await store.enqueue((sender, 1), b"2" * 16, b"during", to, T0, 100)
            gate.set()
        assert (await store.stats()).mailbox_entries == 2
    [ids] = mailbox_ids(dest / DB_FILENAME).values()
    assert ids == {b"1" * 16}  # the snapshot from the start of the backup


def _factory(cls: type[sqlite3.Connection]) -> Callable[..., sqlite3.Connection]:
    real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        kwargs["factory"] = cls
        return real_connect(*args, **kwargs)

    return connect


async def test_cancelled_backup_removes_its_partial_copy(
    tmp_path: Path, opened: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = threading.Event()
    original = SQLiteStore._copy_to

    def slow_copy(self: SQLiteStore, dest: Path, cancelled: threading.Event) -> Any:
        started.set()
        cancelled.wait(10)  # until the caller is cancelled; then the first step aborts
        return original(self, dest, cancelled)

    monkeypatch.setattr(SQLiteStore, "_copy_to", slow_copy)
    dest = _mk(tmp_path / "backup")
    async with opened(tmp_path / "state") as store:
        await make_user(store)
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(store.backup, dest)
                await trio.to_thread.run_sync(started.wait, 10)
                assert (dest / DB_FILENAME).exists()
                scope.cancel()
        with trio.fail_after(5):
            while any(dest.iterdir()):
                await trio.sleep(0.01)
        await make_user(store)  # the store is unaffected


async def test_backup_never_overwrites_and_names_the_file(tmp_path: Path, opened: Any) -> None:
    dest = _mk(tmp_path / "backup")
    (dest / DB_FILENAME).write_bytes(b"precious")
    async with opened(tmp_path / "state") as store:
        with pytest.raises(StoreError, match=r"cannot create .*momedo\.sqlite3"):
            await store.backup(dest)
        with pytest.raises(StoreError, match="cannot create"):
            await store.backup(tmp_path / "missing-dir")
    assert (dest / DB_FILENAME).read_bytes() == b"precious"


# --- the backup directory and its manifest -------------------------------------------------


async def test_manifest_lists_every_file_with_size_and_sha256(tmp_path: Path, opened: Any) -> None:
    state, dest = tmp_path / "state", tmp_path / "out" / "backup"
    make_tls(state)
    async with opened(state) as store:
        rcpt, sender = await make_user(store), await make_user(store)
        await store.enqueue((sender, 1), b"m" * 16, b"x", [Recipient(rcpt, 1, b"")], T0, 100)
        summary = await write_backup(store, state, dest)

    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    assert stat.S_IMODE((dest / "tls").stat().st_mode) == 0o700
    manifest = json.loads((dest / bk.MANIFEST_NAME).read_text())
    assert manifest["format"] == "momedo-backup" and manifest["format_version"] == 1
    assert manifest["momedo_version"] == "0.1.0"
    assert manifest["created"] == "2026-12-01T03:00:00Z"
    assert manifest["engine"] == "sqlite" and manifest["schema_version"] >= 1
    assert manifest["fingerprint"] == FP
    assert manifest["counts"] == {"users": 2, "devices": 2, "mailbox_entries": 1}
    listed = {f["path"]: f for f in manifest["files"]}
    assert set(listed) == {DB_FILENAME, "tls/cert.pem", "tls/key.pem"}
    assert listed[DB_FILENAME]["kind"] == "database" and listed["tls/key.pem"]["kind"] == "tls"
    for rel, entry in listed.items():
        data = (dest / rel).read_bytes()
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert stat.S_IMODE((dest / rel).stat().st_mode) == 0o600
    on_disk = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert on_disk == sorted([*listed, bk.MANIFEST_NAME])  # no temp file left behind
    assert (dest / "tls/key.pem").read_bytes() == (state / "tls/key.pem").read_bytes()
    total = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    assert (summary.files, summary.bytes) == (4, total)
    assert (summary.users, summary.devices, summary.mailbox_entries) == (2, 2, 1)
    assert bk.verify_backup(dest).database.sha256 == listed[DB_FILENAME]["sha256"]


async def test_backup_without_tls_dir_lists_only_the_database(tmp_path: Path, opened: Any) -> None:
    async with opened(tmp_path / "state") as store:
        await write_backup(store, tmp_path / "state", tmp_path / "backup")
    manifest = bk.verify_backup(tmp_path / "backup")
    assert [f.path for f in manifest.files] == [DB_FILENAME]


def test_backup_dir_must_be_absolute_and_new_or_empty(tmp_path: Path) -> None:
    with pytest.raises(bk.BackupRefused, match="absolute"):
        bk.prepare_backup_dir(Path("relative/backup"))
    full = _mk(tmp_path / "full")
    (full / "something").write_text("x")
    with pytest.raises(bk.BackupRefused, match="not empty"):
        bk.prepare_backup_dir(full)
    (tmp_path / "file").write_text("x")
    with pytest.raises(bk.BackupRefused, match="not a directory"):
        bk.prepare_backup_dir(tmp_path / "file")
    assert bk.prepare_backup_dir(_mk(tmp_path / "empty")) is False
    assert bk.prepare_backup_dir(tmp_path / "new" / "nested") is True
    assert stat.S_IMODE((tmp_path / "new" / "nested").stat().st_mode) == 0o700


def test_discard_removes_only_what_a_backup_writes(tmp_path: Path) -> None:
    dest = _mk(tmp_path / "b")
    (dest / DB_FILENAME).write_text("partial")
    (dest / "MANIFEST.json.tmp").write_text("{")
    bk.discard_backup(dest, remove_dir=True)
    assert not dest.exists()
    dest = _mk(tmp_path / "c")
    (dest / "operator-notes.txt").write_text("mine")
    (dest / DB_FILENAME).write_text("partial")
    bk.discard_backup(dest, remove_dir=True)
    assert [p.name for p in dest.iterdir()] == ["operator-notes.txt"]


# --- verify and restore --------------------------------------------------------------------


@pytest.fixture
async def good_backup(tmp_path: Path, opened: Any) -> tuple[Path, str, str]:
    """A backup of a store with one queued message; returns (dir, receiver, sender)."""
    state = tmp_path / "live"
    make_tls(state)
    async with opened(state) as store:
        rcpt, sender = await make_user(store), await make_user(store)
        await store.enqueue((sender, 1), b"q" * 16, b"hello", [Recipient(rcpt, 1, b"")], T0, 100)
        await write_backup(store, state, tmp_path / "backup")
    return tmp_path / "backup", rcpt, sender


def rehash(backup: Path) -> None:
    """Make the manifest match the files again (to get past the checksums on purpose)."""
    path = backup / bk.MANIFEST_NAME
    manifest = json.loads(path.read_text())
    for entry in manifest["files"]:
        data = (backup / entry["path"]).read_bytes()
        entry["size"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    path.write_text(json.dumps(manifest))


def no_socket(tmp_path: Path) -> Path:
    return tmp_path / "no-daemon.sock"


async def test_restore_into_a_new_state_dir(
    tmp_path: Path, opened: Any, good_backup: tuple[Path, str, str]
) -> None:
    backup, rcpt, _sender = good_backup
    state = tmp_path / "new" / "state"
    result = bk.restore_backup(backup, state, admin_socket=no_socket(tmp_path))
    assert result.state_dir == state and result.moved_aside is None
    assert result.manifest.mailbox_entries == 1
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for path in state.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600)
    assert (state / "tls/key.pem").read_bytes() == (backup / "tls/key.pem").read_bytes()
    assert [p.name for p in state.parent.iterdir()] == ["state"]  # no temp dir left
    async with opened(state) as store:
        [entry] = await store.fetch(rcpt, 1, 0, 10)
        assert entry.payload == b"hello"


async def test_restore_into_an_empty_existing_state_dir(
    tmp_path: Path, good_backup: tuple[Path, str, str]
) -> None:
    state = _mk(tmp_path / "state")
    bk.restore_backup(good_backup[0], state, admin_socket=no_socket(tmp_path))
    assert (state / DB_FILENAME).is_file()


async def test_restore_refuses_an_existing_database_unless_forced(
    tmp_path: Path, good_backup: tuple[Path, str, str]
) -> None:
    backup = good_backup[0]
    state = _mk(tmp_path / "state")
    (state / DB_FILENAME).write_bytes(b"the current database")
    with pytest.raises(bk.RestoreRefused, match=r"already holds a database .* --force"):
        bk.restore_backup(backup, state, admin_socket=no_socket(tmp_path))
    assert (state / DB_FILENAME).read_bytes() == b"the current database"

    result = bk.restore_backup(
        backup, state, admin_socket=no_socket(tmp_path), force=True, now=WHEN
    )
    aside = tmp_path / "state.before-restore-20261201T030000Z"
    assert result.moved_aside == aside
    assert (aside / DB_FILENAME).read_bytes() == b"the current database"  # kept, not deleted
    assert (state / DB_FILENAME).read_bytes() == (backup / DB_FILENAME).read_bytes()
    # A second forced restore in the same second does not clobber the first aside copy.
    again = bk.restore_backup(backup, state, admin_socket=no_socket(tmp_path), force=True, now=WHEN)
    assert again.moved_aside is not None and again.moved_aside != aside and aside.exists()


async def test_restore_refuses_while_the_daemon_answers(
    tmp_path: Path, good_backup: tuple[Path, str, str]
) -> None:
    path = tmp_path / "admin.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listening:
        listening.bind(str(path))
        listening.listen(1)
        with pytest.raises(bk.RestoreRefused, match="momedod is running"):
            bk.restore_backup(good_backup[0], tmp_path / "state", admin_socket=path)
    assert not (tmp_path / "state").exists()


def truncate(backup: Path) -> None:
    db = backup / DB_FILENAME
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])


def flip_byte(backup: Path) -> None:
    db = backup / DB_FILENAME
    data = bytearray(db.read_bytes())
    data[len(data) // 2] ^= 0x01
    db.write_bytes(bytes(data))


def edit_manifest(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def edit(backup: Path) -> None:
        path = backup / bk.MANIFEST_NAME
        manifest = json.loads(path.read_text())
        change(manifest)
        path.write_text(json.dumps(manifest))

    return edit


def corrupt_with_matching_checksums(backup: Path) -> None:
    db = backup / DB_FILENAME
    data = bytearray(db.read_bytes())
    page = 4096
    data[page : 2 * page] = b"\xa5" * page  # smash the second page (a b-tree page)
    db.write_bytes(bytes(data))
    rehash(backup)


def newer_schema(backup: Path) -> None:
    with sqlite3.connect(backup / DB_FILENAME) as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    conn.close()
    rehash(backup)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (truncate, "is truncated or damaged"),
        (flip_byte, "does not match its SHA-256"),
        (lambda b: (b / bk.MANIFEST_NAME).unlink(), "no MANIFEST.json"),
        (lambda b: (b / bk.MANIFEST_NAME).write_text('{"format": "momedo-b'), "not valid JSON"),
        (lambda b: (b / "tls/key.pem").unlink(), "tls/key.pem is missing"),
        (lambda b: (b / "extra.bin").write_text("x"), "not in the manifest: extra.bin"),
        (lambda b: (b / f"{DB_FILENAME}-wal").write_text("x"), "not in the manifest"),
        (
            edit_manifest(lambda m: m["files"][0].update(path="../escape")),
            "unsafe or repeated path '../escape'",
        ),
        (edit_manifest(lambda m: m.update(format_version=2)), "made by a newer momedo"),
        (edit_manifest(lambda m: m.pop("counts")), "missing 'counts'"),
        (edit_manifest(lambda m: m.update(engine="postgres")), "'postgres' store"),
        (corrupt_with_matching_checksums, "fails SQLite's integrity check"),
        (lambda b: (truncate(b), rehash(b)), "fails SQLite's integrity check"),
        (lambda b: ((b / DB_FILENAME).write_bytes(b"x" * 8192), rehash(b)), "not an SQLite"),
        (newer_schema, "schema version 99 is newer"),
    ],
    ids=[
        "truncated",
        "flipped-byte",
        "no-manifest",
        "manifest-cut",
        "missing-file",
        "extra-file",
        "stray-wal",
        "path-escape",
        "newer-format",
        "manifest-shape",
        "other-engine",
        "corrupt-db",
        "truncated-rehashed",
        "not-a-db",
        "newer-schema",
    ],
)
async def test_damaged_backups_are_refused_and_nothing_changes(
    tmp_path: Path,
    good_backup: tuple[Path, str, str],
    damage: Callable[[Path], None],
    message: str,
) -> None:
    backup = good_backup[0]
    damage(backup)
    with pytest.raises(bk.RestoreRefused, match=message) as info:
        bk.verify_backup(backup)
    assert "\n" not in str(info.value) and str(backup) in str(info.value)
    with pytest.raises(bk.RestoreRefused, match=message):
        bk.restore_backup(backup, tmp_path / "state", admin_socket=no_socket(tmp_path))
    assert not (tmp_path / "state").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup", "live"]


async def test_ignorable_files_do_not_spoil_a_backup(
    tmp_path: Path, good_backup: tuple[Path, str, str]
) -> None:
    backup = good_backup[0]
    (backup / ".DS_Store").write_text("x")
    _mk(backup / "lost+found")
    (backup / "lost+found" / "#1234").write_text("x")
    bk.verify_backup(backup)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root restores files for another user")
async def test_restore_as_root_gives_files_the_state_dirs_owner(
    tmp_path: Path, good_backup: tuple[Path, str, str]
) -> None:
    state = _mk(tmp_path / "state")
    os.chown(state, 65534, 65534)  # e.g. /var/lib/momedo made for the service user
    result = bk.restore_backup(good_backup[0], state, admin_socket=no_socket(tmp_path))
    assert result.owner is not None
    for path in (state, *state.rglob("*")):
        assert (path.stat().st_uid, path.stat().st_gid) == (65534, 65534), path
