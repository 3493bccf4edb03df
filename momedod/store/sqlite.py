"""SQLite engine of the store.

Theory of operation
-------------------
Writes. One writer thread owns the only read-write connection. Callers (trio tasks) wrap a
transaction function from :mod:`momedod.store.txn` in an ``_Op``, put it on a
``queue.SimpleQueue`` and park (``wait_task_rescheduled``; no event object per op). The
writer takes everything that is queued (up to ``max_batch`` ops), opens ONE transaction
(``BEGIN IMMEDIATE``), runs the ops one after the other and then ``COMMIT``s once: one fsync
(``synchronous=FULL`` in WAL mode) makes the whole batch durable. If an op raises, the
transaction is rolled back and the batch runs again with each op inside its own
``SAVEPOINT``: the failing op is rolled back to its savepoint and keeps its exception, the
others are unaffected (a batch of one failing op just keeps its error). Transaction
functions are written to be re-runnable (the postgres engine retries them too), and the
common case -- nothing fails -- saves two statements per op. Only after the commit does the
writer wake the batch's callers, with a single ``TrioToken.run_sync_soon``, so no caller
sees a result that is not on disk. While one batch commits, the next one queues up: the
busier the server, the bigger the batches (group commit).

Failures. An error that may have cost SQLite the whole transaction (disk full, I/O error,
...) or a failed COMMIT fails every op of the batch; ``SQLITE_FULL`` becomes
:class:`StorageFull`. The writer then carries on with the next batch. If the writer thread
itself dies (a bug), its pending ops and every later call raise :class:`StoreError` instead
of hanging. A caller that is cancelled while waiting simply stops waiting: its op may still
commit, and its result is dropped.

Reads are handed the same way to ``read_threads`` reader threads (one
``queue.SimpleQueue``; cheaper than a ``trio.to_thread`` hop per read), each thread with its
own read-only connection (``threading.local``), inside a short read transaction, so every
read sees one committed snapshot (WAL lets readers proceed while the writer commits). Each
read wakes its caller with its own ``run_sync_soon``.

Backup. ``backup()`` runs SQLite's online backup API in a worker thread, from a dedicated
read-only connection into a new file. That connection first opens a read transaction and
keeps it for the whole copy: the copy is then exactly that WAL snapshot, and the writer is
never blocked (it keeps appending to the WAL; only checkpoints wait until the copy is done).
Without the open transaction, SQLite restarts a backup whenever another connection commits,
which under steady load means forever. The copy runs in steps of ``BACKUP_STEP_PAGES``
pages; between steps a cancelled caller's flag stops it. The copy is switched to the
rollback-journal mode, so it is one self-contained file, checked with ``quick_check`` and
fsynced.

Close. ``close()`` queues a stop marker behind the pending ops; the writer finishes them,
closes its connection and exits.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

import trio

from momedod.store import txn
from momedod.store.base import (
    BackupInfo,
    StorageFull,
    StoreError,
    StoreObserver,
)
from momedod.store.engine import TxStore
from momedod.store.migrations import migrate
from momedod.store.txn import Row, Tx

__all__ = ["DB_FILENAME", "SQLiteStore", "SQLiteTx"]

DB_FILENAME = "momedo.sqlite3"
BUSY_TIMEOUT_MS = 10_000  # only another process (e.g. a backup) can hold the write lock
BACKUP_STEP_PAGES = 1024  # pages per backup step (4 MiB at SQLite's default page size)

P = ParamSpec("P")
T = TypeVar("T")

_SQLITE_FULL = 13
# Primary result codes after which SQLite may have rolled back the whole transaction
# (https://sqlite.org/lang_transaction.html: "Response To Errors Within A Transaction").
_TXN_LOST = frozenset({5, 6, 7, 10, 11, 13, 26})  # BUSY LOCKED NOMEM IOERR CORRUPT FULL NOTADB


def _primary_code(exc: sqlite3.Error) -> int:
    return int(getattr(exc, "sqlite_errorcode", 1)) & 0xFF


class SQLiteTx:
    """:class:`momedod.store.txn.Tx` over a sqlite3 connection (one reused cursor)."""

    __slots__ = ("_cur",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._cur = conn.cursor()

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        """Run one statement; return the number of rows it changed."""
        return self._cur.execute(sql, params).rowcount

    def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> None:
        """Run one statement once per parameter row."""
        self._cur.executemany(sql, rows)

    def one(self, sql: str, params: Sequence[object] = ()) -> Row | None:
        """First result row or None (fetches all rows so RETURNING statements complete)."""
        rows = self._cur.execute(sql, params).fetchall()
        return cast(Row, rows[0]) if rows else None

    def all(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        """All result rows."""
        return self._cur.execute(sql, params).fetchall()


class _Op:
    """One queued write: the call, the waiting trio task (None once it stopped waiting) and
    the outcome."""

    __slots__ = ("call", "error", "result", "task")

    def __init__(self, call: Callable[[Tx], object], task: trio.lowlevel.Task) -> None:
        self.call = call
        self.task: trio.lowlevel.Task | None = task
        self.result: object = None
        self.error: BaseException | None = None


class _ReadConn:
    """A reader thread's connection; weakly tracked so close() can close it."""

    __slots__ = ("__weakref__", "conn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn


def _wake(batch: list[_Op]) -> None:
    """Run in the trio thread: resume every caller of ``batch`` that still waits."""
    reschedule = trio.lowlevel.reschedule
    for op in batch:
        task = op.task
        if task is not None:
            op.task = None
            reschedule(task)


class _BackupCancelled(Exception):
    """Raised between backup steps once the waiting caller has been cancelled."""


def fsync_path(path: Path) -> None:
    """fsync a file or directory by path (making a rename or a new file durable)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_db_files(path: Path) -> None:
    for suffix in ("", "-journal", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            os.unlink(f"{path}{suffix}")


class SQLiteStore(TxStore):
    """The SQLite engine: database ``<state dir>/momedo.sqlite3``; see the module docstring.

    Create it, then ``await store.open()`` inside trio (``open_store`` does both).
    ``new_user_id`` / ``new_invite_code`` generate IDs and invite codes (default: the
    generators of :mod:`momedod.protocol`).
    """

    def __init__(
        self,
        path: Path,
        *,
        new_user_id: Callable[[], str] | None = None,
        new_invite_code: Callable[[], str] | None = None,
        read_threads: int = 4,
        max_batch: int = 256,
        observer: StoreObserver | None = None,
    ) -> None:
        super().__init__(new_user_id=new_user_id, new_invite_code=new_invite_code)
        self.path = path
        self._observer = observer
        self.db_path = path / DB_FILENAME
        self._read_threads = read_threads
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._read_queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._read_workers: list[threading.Thread] = []
        self._lock = threading.Lock()  # guards _closing, _failure, _readers and queue puts
        self._closing = False
        self._failure: str | None = None  # set once the writer has stopped
        self._inflight: list[_Op] = []
        self._readers: weakref.WeakSet[_ReadConn] = weakref.WeakSet()
        self._local = threading.local()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready: trio.Event | None = None
        self._stopped: trio.Event | None = None
        self._open_error: BaseException | None = None

    # -- life cycle ------------------------------------------------------------------------

    async def open(self) -> None:
        """Create/migrate the database and start the writer thread. Raises StoreError."""
        if self._thread is not None:
            raise StoreError("store is already open")
        self._token = trio.lowlevel.current_trio_token()
        self._ready = trio.Event()
        self._stopped = trio.Event()
        self._thread = threading.Thread(
            target=self._writer_main, name="momedo-store-writer", daemon=True
        )
        self._thread.start()
        with trio.CancelScope(shield=True):  # a migration is not abandoned half-way
            await self._ready.wait()
        if self._open_error is not None:
            self._thread.join()
            raise self._open_error
        for i in range(self._read_threads):
            worker = threading.Thread(
                target=self._read_worker, name=f"momedod-store-reader-{i}", daemon=True
            )
            worker.start()
            self._read_workers.append(worker)

    async def close(self) -> None:
        """Let the writer finish the queued ops, then stop it and close all connections."""
        with self._lock:
            first = not self._closing
            self._closing = True
            if first and self._failure is None:
                self._queue.put(None)
            if first:
                for _ in self._read_workers:
                    self._read_queue.put(None)  # behind the reads already queued
        if self._thread is None or self._stopped is None:
            return
        with trio.CancelScope(shield=True):
            await self._stopped.wait()
        self._thread.join()
        for worker in self._read_workers:
            # Each finishes the read it runs (a short transaction) and exits.
            await trio.to_thread.run_sync(worker.join)
        with self._lock:
            readers = list(self._readers)
            self._readers.clear()
        for reader in readers:
            reader.conn.close()

    def _call_soon(self, fn: Callable[..., object], *args: Any) -> None:
        assert self._token is not None
        # If the trio run is gone, nobody is waiting any more.
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(fn, *args)

    def _error(self, exc: sqlite3.Error) -> StoreError:
        if _primary_code(exc) == _SQLITE_FULL:
            err: StoreError = StorageFull(f"storage full: {exc} ({self.db_path})")
        else:
            err = StoreError(f"database error: {exc} ({self.db_path})")
        err.__cause__ = exc
        return err

    # -- the writer thread -----------------------------------------------------------------

    def _connect_writer(self) -> sqlite3.Connection:
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Create the file ourselves so it is 0600 whatever the umask; SQLite gives the
            # -wal and -shm files the database file's mode.
            os.close(os.open(self.db_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        except OSError as exc:
            raise StoreError(f"cannot open {self.db_path}: {exc.strerror}") from exc
        conn = sqlite3.connect(self.db_path, isolation_level=None, cached_statements=256)
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise StoreError(f"{self.db_path}: cannot switch to WAL journal mode")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            migrate(conn, self.db_path)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot open {self.db_path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _writer_main(self) -> None:
        assert self._ready is not None and self._stopped is not None
        try:
            conn = self._connect_writer()
        except BaseException as exc:
            self._open_error = exc
            with self._lock:
                self._failure = "store could not be opened"
            self._call_soon(self._ready.set)
            self._call_soon(self._stopped.set)
            return
        self._call_soon(self._ready.set)
        reason = "store is closed"
        try:
            self._writer_loop(conn)
        except BaseException as exc:
            reason = f"store writer thread failed ({exc!r}); restart momedod"
        finally:
            with self._lock:
                self._failure = reason
            orphans = self._inflight
            while True:
                try:
                    op = self._queue.get_nowait()
                except queue.Empty:
                    break
                if op is not None:
                    orphans.append(op)
            for op in orphans:
                op.result = None
                op.error = StoreError(reason)
            if orphans:
                self._call_soon(_wake, orphans)
            conn.close()  # rolls back an unfinished transaction
            self._call_soon(self._stopped.set)

    def _writer_loop(self, conn: sqlite3.Connection) -> None:
        tx = SQLiteTx(conn)
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self._max_batch:
                try:
                    op = self._queue.get_nowait()
                except queue.Empty:
                    break
                if op is None:
                    stop = True
                    break
                batch.append(op)
            self._inflight = batch
            self._run_batch(conn, tx, batch)
            if self._observer is not None:
                self._observer.batch(len(batch))
            self._inflight = []
            self._call_soon(_wake, batch)
            if stop:
                return

    def _run_batch(self, conn: sqlite3.Connection, tx: SQLiteTx, batch: list[_Op]) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            if self._run_plain(conn, tx, batch):
                conn.execute("COMMIT")
            elif len(batch) > 1:
                # An op failed and the transaction is rolled back. Run the batch again with a
                # savepoint per op, so the failing op is rolled back alone. (Transaction
                # functions may run more than once: the postgres engine retries them too.)
                conn.execute("BEGIN IMMEDIATE")
                self._run_savepoints(conn, tx, batch)
                conn.execute("COMMIT")
            # else: the batch was that one failing op; its error is its outcome.
        except sqlite3.Error as exc:
            # If even ROLLBACK fails the connection is unusable; the next BEGIN will tell.
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            for op in batch:
                op.result = None
                op.error = self._error(exc)

    def _run_plain(self, conn: sqlite3.Connection, tx: SQLiteTx, batch: list[_Op]) -> bool:
        """Run the ops of ``batch`` in the open transaction without savepoints (the common
        case: nothing fails; saves two statements per op). If one raises, roll the whole
        transaction back, give that op its error, clear the others' results and return
        False. Errors that may have cost SQLite the transaction propagate."""
        for op in batch:
            try:
                op.result = op.call(tx)
            except sqlite3.Error as exc:
                if _primary_code(exc) in _TXN_LOST or not conn.in_transaction:
                    raise  # fail the whole batch
                error: BaseException = self._error(exc)
            except Exception as exc:
                error = exc
            else:
                continue
            conn.execute("ROLLBACK")
            for other in batch:
                other.result = None
            op.error = error
            return False
        return True

    def _run_savepoints(self, conn: sqlite3.Connection, tx: SQLiteTx, batch: list[_Op]) -> None:
        for op in batch:
            op.error = None
            conn.execute("SAVEPOINT op")
            try:
                op.result = op.call(tx)
            except sqlite3.Error as exc:
                if _primary_code(exc) in _TXN_LOST or not conn.in_transaction:
                    raise  # fail the whole batch
                conn.execute("ROLLBACK TO op")
                op.result = None
                op.error = self._error(exc)
            except Exception as exc:
                conn.execute("ROLLBACK TO op")
                op.result = None
                op.error = exc
            conn.execute("RELEASE op")

    # -- submitting work -------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._thread is None:
            raise StoreError("store is not open")
        if self._failure is not None:
            raise StoreError(self._failure)
        if self._closing:
            raise StoreError("store is closed")

    async def _write(
        self, fn: Callable[Concatenate[Tx, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        op = _Op(lambda tx: fn(tx, *args, **kwargs), trio.lowlevel.current_task())
        start = time.perf_counter()
        with self._lock:
            self._check_usable()
            self._queue.put(op)

        def abort(_: object) -> trio.lowlevel.Abort:
            op.task = None  # cancelled: stop waiting; the op may still commit (result dropped)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
        if self._observer is not None:
            self._observer.operation(fn.__name__, time.perf_counter() - start)
        if op.error is not None:
            raise op.error
        return cast(T, op.result)

    async def _read(
        self, fn: Callable[Concatenate[Tx, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        op = _Op(lambda tx: fn(tx, *args, **kwargs), trio.lowlevel.current_task())
        start = time.perf_counter()
        with self._lock:
            self._check_usable()
            self._read_queue.put(op)

        def abort(_: object) -> trio.lowlevel.Abort:
            op.task = None  # cancelled: stop waiting; the read's result is dropped
            return trio.lowlevel.Abort.SUCCEEDED

        try:
            await trio.lowlevel.wait_task_rescheduled(abort)
        finally:
            if self._observer is not None:
                self._observer.operation(fn.__name__, time.perf_counter() - start)
        if op.error is not None:
            raise op.error
        return cast(T, op.result)

    def _read_worker(self) -> None:
        """A reader thread: runs queued reads until its stop marker (see the module doc)."""
        while True:
            op = self._read_queue.get()
            if op is None:
                return
            if op.task is not None:  # else: its caller was cancelled before it started
                try:
                    op.result = self._run_read(op.call)
                except BaseException as exc:
                    op.error = exc
                self._call_soon(_wake, [op])

    def _run_read(self, call: Callable[[Tx], T]) -> T:
        try:
            conn = self._reader()
            if conn.in_transaction:  # left open by a failed COMMIT of an earlier read
                conn.execute("ROLLBACK")
            conn.execute("BEGIN")
            try:
                return call(SQLiteTx(conn))
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def _reader(self) -> sqlite3.Connection:
        reader: _ReadConn | None = getattr(self._local, "reader", None)
        if reader is None:
            uri = self.db_path.resolve().as_uri() + "?mode=ro"
            conn = sqlite3.connect(
                uri, uri=True, isolation_level=None, check_same_thread=False, cached_statements=256
            )
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            reader = _ReadConn(conn)
            self._local.reader = reader
            with self._lock:
                self._readers.add(reader)
        return reader.conn

    # -- engine-specific parts of the Store interface ---------------------------------------

    async def disk_usage(self) -> int:
        """See :meth:`Store.disk_usage`: ``momedo.sqlite3`` and its -wal and -shm files."""

        def measure() -> int:
            total = 0
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(OSError):
                    total += os.stat(f"{self.db_path}{suffix}").st_size
            return total

        return await trio.to_thread.run_sync(measure)

    async def backup(self, dest_dir: Path) -> BackupInfo:
        """See :meth:`Store.backup`; writes ``dest_dir/momedo.sqlite3`` (module docstring)."""
        self._check_usable()
        cancelled = threading.Event()
        call = functools.partial(self._run_backup, dest_dir / DB_FILENAME, cancelled)
        try:
            # Abandoned on cancel so a shutdown does not wait for a long copy; the thread
            # sees the flag at its next step and removes its partial file.
            return await trio.to_thread.run_sync(call, abandon_on_cancel=True)
        except BaseException:
            cancelled.set()
            raise

    def _run_backup(self, dest: Path, cancelled: threading.Event) -> BackupInfo:
        try:
            os.close(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        except OSError as exc:
            raise StoreError(f"cannot create {dest}: {exc.strerror}") from exc
        try:
            return self._copy_to(dest, cancelled)
        except sqlite3.Error as exc:
            _remove_db_files(dest)
            if _primary_code(exc) == _SQLITE_FULL:
                raise StorageFull(f"backup to {dest}: storage full: {exc}") from exc
            raise StoreError(f"backup to {dest} failed: {exc}") from exc
        except OSError as exc:
            _remove_db_files(dest)
            raise StoreError(f"backup to {dest} failed: {exc.strerror or exc}") from exc
        except BaseException:
            _remove_db_files(dest)
            raise

    def _copy_to(self, dest: Path, cancelled: threading.Event) -> BackupInfo:
        def step_done(status: int, remaining: int, total: int) -> None:
            if cancelled.is_set():
                raise _BackupCancelled

        uri = self.db_path.resolve().as_uri() + "?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, isolation_level=None)) as src:
            src.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            with contextlib.closing(sqlite3.connect(dest, isolation_level=None)) as dst:
                # Exclusive: nobody else opens the copy, and it never gets a -shm file (the
                # copied header says WAL until the switch below), which suits network shares.
                dst.execute("PRAGMA locking_mode = EXCLUSIVE")
                # The first read fixes the snapshot that every backup step then copies.
                src.execute("BEGIN")
                src.execute("SELECT count(*) FROM sqlite_master").fetchone()
                src.backup(dst, pages=BACKUP_STEP_PAGES, progress=step_done)
                src.execute("COMMIT")
                mode = dst.execute("PRAGMA journal_mode = DELETE").fetchone()
                if mode is None or str(mode[0]).lower() != "delete":
                    raise StoreError(f"{dest}: cannot switch the copy to a single file")
                check = dst.execute("PRAGMA quick_check").fetchall()
                if [tuple(r) for r in check] != [("ok",)]:
                    raise StoreError(
                        f"the copy in {dest} fails SQLite's quick_check ({check[0][0]}); "
                        f"the live database {self.db_path} may be damaged"
                    )
                tx = SQLiteTx(dst)
                version = txn.stored_schema_version(tx)
                counts = txn.stats(tx)
        fsync_path(dest)
        fsync_path(dest.parent)
        return BackupInfo(
            engine="sqlite",
            schema_version=version,
            files=(DB_FILENAME,),
            bytes=dest.stat().st_size,
            users=counts.users,
            devices=counts.devices,
            mailbox_entries=counts.mailbox_entries,
        )
