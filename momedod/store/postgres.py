"""PostgreSQL engine of the store (``[storage] engine = "postgres"``).

Theory of operation
-------------------
The transaction functions of :mod:`momedod.store.txn` are synchronous; so is psycopg 3 here
(its async API needs asyncio and does not run under trio). Every store call borrows a
connection from a ``psycopg_pool.ConnectionPool`` of ``pool_size`` connections and runs in
one of trio's worker threads (``trio.to_thread.run_sync``), under a ``CapacityLimiter`` of
the same size, so no thread ever waits for a connection.

Writes run in a ``SERIALIZABLE`` transaction each, committed before the call returns
(PostgreSQL's commit is durable with its default ``synchronous_commit = on``; it does its own
group commit). SERIALIZABLE makes the transaction functions behave as they do on SQLite's
single writer: e.g. two concurrent enqueues to one mailbox both take the device row's
``next_seq`` with ``UPDATE ... RETURNING``; the second waits for the first, then fails with a
serialization failure and is run again from the start, so seqs stay gap-free and in commit
order. Serialization failures and deadlocks are retried up to ``WRITE_ATTEMPTS`` times; after
``SHARED_ATTEMPTS`` a write runs alone on this node (:class:`_WriteGate`), so a hot row cannot
starve it, and backs off briefly if it still conflicts (with another node). Nothing else is
retried: a connection lost during COMMIT leaves it unknown whether the write committed, so
it becomes a StoreError (pooled connections found dead at BEGIN are simply replaced).

Reads run in a ``REPEATABLE READ, READ ONLY`` transaction: one committed snapshot, never a
serialization failure.

SQL dialect. The transaction functions write portable SQL with ``?`` placeholders;
:func:`pg_sql` turns them into psycopg's ``%s`` (cached per statement). Python booleans are
sent as 0/1 integers and ``sum()``'s NUMERIC comes back as int, so the functions see the
same values as on SQLite.

What this engine does not do the SQLite way: :meth:`PostgresStore.backup` refuses (back up
with ``pg_dump`` or the cluster's base backups), and :meth:`PostgresStore.disk_usage` reports
``pg_database_size`` of the database. Later parts of the high-availability work (LISTEN/NOTIFY
between nodes) get their own long-lived connection from :meth:`PostgresStore.connect_dedicated`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import psycopg
import psycopg.errors
import trio
from psycopg.adapt import Buffer, Dumper, Loader
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from momedod.protocol.frames import MAX_BLOB_CHUNK
from momedod.store.base import BackupInfo, StorageFull, StoreError, StoreObserver
from momedod.store.engine import TxStore
from momedod.store.pg_migrations import migrate_pg
from momedod.store.txn import Row, Tx

__all__ = [
    "BLOB_CHUNK_BYTES",
    "BlobChunksMissing",
    "PostgresStore",
    "PostgresTx",
    "describe_dsn",
    "pg_sql",
]

P = ParamSpec("P")
T = TypeVar("T")

WRITE_ATTEMPTS = 20
"""Runs of a write transaction that keeps failing to serialize before the call fails."""
SHARED_ATTEMPTS = 3
"""Attempts a write makes alongside this node's other writes before it runs alone."""
BLOB_CHUNK_BYTES = MAX_BLOB_CHUNK
"""Bytes per ``blob_chunks`` row: the upload chunk size, so a chunk is one INSERT."""
CONNECT_TIMEOUT_S = 10
POOL_TIMEOUT_S = 30.0  # waiting for a free connection (only if more callers than threads)
_BEGIN_WRITE = "BEGIN ISOLATION LEVEL SERIALIZABLE"
_BEGIN_READ = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"
_RETRY = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)


@functools.lru_cache(maxsize=2048)
def pg_sql(sql: str) -> str:
    """The portable SQL of :mod:`momedod.store.txn` in psycopg's placeholder style."""
    return sql.replace("%", "%%").replace("?", "%s")


class _BoolAsInt(Dumper):
    """Booleans are 0/1 integers in the schema (as in SQLite)."""

    oid = psycopg.adapters.types["int8"].oid

    def dump(self, obj: Any) -> Buffer:
        return b"1" if obj else b"0"


class _NumericAsInt(Loader):
    """``sum()`` over BIGINT is NUMERIC; the schema holds only integers."""

    def load(self, data: Buffer) -> int:
        return int(bytes(data))


def _configure(conn: psycopg.Connection[Any]) -> None:
    conn.adapters.register_dumper(bool, _BoolAsInt)
    conn.adapters.register_loader("numeric", _NumericAsInt)


def describe_dsn(dsn: str) -> str:
    """The DSN as an operator may see it in logs and errors: no password, no options."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "postgres (unparsable dsn)"
    shown = [f"{key}={params[key]}" for key in ("host", "port", "dbname", "user") if key in params]
    return "postgres " + (" ".join(shown) if shown else "(libpq defaults)")


class _WriteGate:
    """Lets this node's write transactions run side by side (shared), or one alone (exclusive).

    A write that keeps losing serialization conflicts (a hot row: many sends to one mailbox)
    could lose forever to the stream of new ones; its later attempts run exclusively: new
    writes of this node wait, the running ones finish, then it runs with no competitor on
    this node, so it succeeds unless another node's write conflicts with it.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0  # exclusive entrants waiting: new shared ones queue behind them

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._waiting:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                if not self._shared:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._exclusive or self._shared:
                self._cond.wait()
            self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class PostgresTx:
    """:class:`momedod.store.txn.Tx` over a psycopg connection (one reused cursor)."""

    __slots__ = ("_cur",)

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._cur = conn.cursor()

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        """Run one statement; return the number of rows it changed."""
        self._cur.execute(pg_sql(sql), tuple(params))
        return self._cur.rowcount

    def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> None:
        """Run one statement once per parameter row."""
        self._cur.executemany(pg_sql(sql), [tuple(r) for r in rows])

    def one(self, sql: str, params: Sequence[object] = ()) -> Row | None:
        """First result row or None (fetches all rows so RETURNING statements complete)."""
        rows = self.all(sql, params)
        return rows[0] if rows else None

    def all(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        """All result rows."""
        cur = self._cur.execute(pg_sql(sql), tuple(params))
        if cur.description is None:
            return []
        return cur.fetchall()


class PostgresStore(TxStore):
    """The PostgreSQL engine; see the module docstring.

    ``path`` is the state directory (TLS material stays there); the data, attachments
    included (``blob_chunks``), lives in the database ``dsn`` (a libpq connection string or
    URI). Create it, then ``await store.open()`` inside trio (``open_store`` does both).
    """

    def __init__(
        self,
        path: Path,
        dsn: str,
        *,
        pool_size: int = 10,
        new_user_id: Callable[[], str] | None = None,
        new_invite_code: Callable[[], str] | None = None,
        observer: StoreObserver | None = None,
    ) -> None:
        super().__init__(new_user_id=new_user_id, new_invite_code=new_invite_code)
        if pool_size < 1:
            raise StoreError("pool_size must be at least 1")
        self.path = path
        self.dsn = dsn
        self.where = describe_dsn(dsn)
        self._pool_size = pool_size
        self._observer = observer
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._limiter: trio.CapacityLimiter | None = None
        self._closing = False
        self._inflight = 0
        self._idle: trio.Event | None = None
        self._gate = _WriteGate()

    # -- life cycle ------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, migrate the schema and fill the pool. Raises StoreError."""
        if self._pool is not None:
            raise StoreError("store is already open")
        self._limiter = trio.CapacityLimiter(self._pool_size)
        with trio.CancelScope(shield=True):  # a migration is not abandoned half-way
            self._pool = await trio.to_thread.run_sync(self._open_sync)

    def _open_sync(self) -> ConnectionPool[psycopg.Connection[Any]]:
        try:
            conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to {self.where}: {_first_line(exc)}") from exc
        try:
            with conn:
                migrate_pg(conn, self.where)
        except psycopg.Error as exc:
            raise StoreError(f"cannot set up the schema in {self.where}: {exc}") from exc
        pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            self.dsn,
            min_size=self._pool_size,
            max_size=self._pool_size,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
            configure=_configure,
            timeout=POOL_TIMEOUT_S,
            name="momedo-store",
            open=False,
        )
        try:
            pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        except PoolTimeout as exc:
            pool.close()
            raise StoreError(f"cannot open {self._pool_size} connections to {self.where}") from exc
        return pool

    async def close(self) -> None:
        """Wait for the calls in progress, then close every connection. Idempotent."""
        self._closing = True
        pool, self._pool = self._pool, None
        if pool is None:
            return
        with trio.CancelScope(shield=True):
            while self._inflight:
                self._idle = trio.Event()
                await self._idle.wait()
            await trio.to_thread.run_sync(pool.close)

    def connect_dedicated(self) -> psycopg.Connection[Any]:
        """A new autocommit connection outside the pool (e.g. for LISTEN); the caller closes it.

        Blocking: call it from a worker thread.
        """
        conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        _configure(conn)
        return conn

    # -- running transaction functions -----------------------------------------------------

    def _check_usable(self) -> ConnectionPool[psycopg.Connection[Any]]:
        if self._closing:
            raise StoreError("store is closed")
        if self._pool is None:
            raise StoreError("store is not open")
        return self._pool

    async def _run(self, name: str, call: Callable[[], T]) -> T:
        self._check_usable()
        self._inflight += 1
        start = time.perf_counter()
        try:
            return await trio.to_thread.run_sync(call, limiter=self._limiter)
        finally:
            self._inflight -= 1
            if not self._inflight and self._idle is not None:
                self._idle.set()
            if self._observer is not None:
                self._observer.operation(name, time.perf_counter() - start)

    async def _write(
        self, fn: Callable[Concatenate[Tx, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        pool = self._check_usable()
        result = await self._run(
            fn.__name__,
            functools.partial(self._run_write, pool, lambda tx: fn(tx, *args, **kwargs)),
        )
        if self._observer is not None:
            self._observer.batch(1)
        return result

    async def _read(
        self, fn: Callable[Concatenate[Tx, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        pool = self._check_usable()
        call = functools.partial(self._run_read, pool, lambda tx: fn(tx, *args, **kwargs))
        return await self._run(fn.__name__, call)

    def _run_write(
        self, pool: ConnectionPool[psycopg.Connection[Any]], call: Callable[[Tx], T]
    ) -> T:
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            alone = attempt > SHARED_ATTEMPTS
            try:
                with self._gate.exclusive() if alone else self._gate.shared():
                    return self._fresh_transaction(pool, _BEGIN_WRITE, call)
            except _RETRY as exc:
                if attempt == WRITE_ATTEMPTS:
                    raise StoreError(
                        f"a write kept conflicting with concurrent writes ({attempt} attempts)"
                        f" in {self.where}: {_first_line(exc)}"
                    ) from exc
                # Usually the transaction that won has committed by now (we waited for its
                # row lock): run again at once. Alone on this node it can only have lost to
                # another node: back off a little then.
                if alone:
                    time.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
        raise AssertionError("unreachable")

    def _run_read(
        self, pool: ConnectionPool[psycopg.Connection[Any]], call: Callable[[Tx], T]
    ) -> T:
        return self._fresh_transaction(pool, _BEGIN_READ, call)

    def _fresh_transaction(
        self, pool: ConnectionPool[psycopg.Connection[Any]], begin: str, call: Callable[[Tx], T]
    ) -> T:
        """``_transaction``, skipping pooled connections that died while idle (a server
        restart, a failover): those fail at BEGIN, before anything ran, so another
        connection can safely take over. The pool replaces the dead ones."""
        for attempt in range(self._pool_size + 1):
            try:
                return self._transaction(pool, begin, call)
            except _DeadAtBegin as exc:
                if attempt == self._pool_size:
                    raise StoreError(
                        f"lost the connection to {self.where}: {_first_line(exc.__cause__ or exc)}"
                    ) from exc
        raise AssertionError("unreachable")

    def _transaction(
        self, pool: ConnectionPool[psycopg.Connection[Any]], begin: str, call: Callable[[Tx], T]
    ) -> T:
        """Run ``call`` in one transaction on a pooled connection; map database errors."""
        try:
            with pool.connection() as conn:
                try:
                    conn.execute(begin)
                except psycopg.OperationalError as exc:
                    if conn.broken:
                        raise _DeadAtBegin from exc
                    raise
                try:
                    result = call(PostgresTx(conn))
                except BaseException:
                    if not conn.broken:
                        with contextlib.suppress(psycopg.Error):
                            conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
                return result
        except (_DeadAtBegin, *_RETRY):
            raise
        except PoolTimeout as exc:
            raise StoreError(
                f"no connection to {self.where} became free within {POOL_TIMEOUT_S:g} s"
            ) from exc
        except psycopg.errors.DiskFull as exc:
            raise StorageFull(f"storage full: {_first_line(exc)} ({self.where})") from exc
        except psycopg.OperationalError as exc:
            # No SQLSTATE: libpq lost the socket; 08xxx connection exceptions; 57P0x the
            # server shut down or terminated the session.
            if exc.sqlstate is None or exc.sqlstate.startswith(("08", "57P")):
                raise StoreError(
                    f"lost the connection to {self.where}: {_first_line(exc)}"
                    " (a write in progress may or may not have committed)"
                ) from exc
            raise StoreError(f"database error: {_first_line(exc)} ({self.where})") from exc
        except psycopg.Error as exc:
            raise StoreError(f"database error: {_first_line(exc)} ({self.where})") from exc

    # -- attachment bytes in blob_chunks (cluster mode; momedod.server.blobstore.PgBlobs) ---

    async def blob_chunks_open(self, blob_id: bytes, received: int) -> int:
        """Cut the unfinished upload's rows to at most ``received`` bytes; return how many
        bytes they hold (less than ``received`` if a chunk write did not happen)."""
        return await self._write(_chunks_cut, blob_id, received)

    async def blob_chunks_write(self, blob_id: bytes, offset: int, data: bytes) -> None:
        """Store ``data`` at ``offset`` of an unfinished upload (dropping anything held from
        ``offset`` on). Raises BlobChunksMissing if the upload is gone or holds fewer than
        ``offset`` bytes."""
        await self._write(_chunks_write, blob_id, offset, data)

    async def blob_chunks_digest(self, blob_id: bytes) -> tuple[int, bytes]:
        """(length, SHA-256) of the bytes held for the blob, read in one snapshot."""
        return await self._read(_chunks_digest, blob_id)

    async def blob_chunks_read(self, blob_id: bytes, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset`` (empty at the end). Raises
        BlobChunksMissing if nothing at all is held for the blob."""
        return await self._read(_chunks_read, blob_id, offset, length)

    async def blob_chunks_remove(self, blob_ids: Sequence[bytes]) -> int:
        """Delete the rows of these blobs; return how many blobs had any."""
        return await self._write(_chunks_remove, list(blob_ids))

    # -- engine-specific parts of the Store interface ---------------------------------------

    async def disk_usage(self) -> int:
        """See :meth:`Store.disk_usage`: ``pg_database_size`` of the whole database."""
        return await self._read(_database_size)

    async def backup(self, dest_dir: Path) -> BackupInfo:
        """Refused: a PostgreSQL database is backed up with PostgreSQL's own tools."""
        raise StoreError(
            "momedoctl backup copies SQLite stores only; back up the postgres engine's database"
            f" ({self.where}) with pg_dump or your cluster's base backups (docs/ADMIN.md)"
        )


class BlobChunksMissing(Exception):
    """The upload's rows are not (all) there: collected meanwhile, or a chunk write was lost."""


def _chunks_held(tx: Tx, blob_id: bytes) -> int:
    row = tx.one(
        "SELECT coalesce(sum(octet_length(data)), 0) FROM blob_chunks WHERE blob_id = ?",
        (blob_id,),
    )
    return 0 if row is None else int(row[0])


def _chunks_cut(tx: Tx, blob_id: bytes, size: int) -> int:
    """Drop everything of the blob from byte ``size`` on; return the bytes held after."""
    keep_rows = -(-size // BLOB_CHUNK_BYTES)  # rows wholly or partly below size
    tx.execute("DELETE FROM blob_chunks WHERE blob_id = ? AND idx >= ?", (blob_id, keep_rows))
    idx, within = divmod(size, BLOB_CHUNK_BYTES)
    if within:
        tx.execute(
            "UPDATE blob_chunks SET data = substring(data FROM 1 FOR ?)"
            " WHERE blob_id = ? AND idx = ? AND octet_length(data) > ?",
            (within, blob_id, idx, within),
        )
    return _chunks_held(tx, blob_id)


def _chunks_write(tx: Tx, blob_id: bytes, offset: int, data: bytes) -> None:
    # The upload must still be unfinished (the collector may have taken it meanwhile; rows
    # written after that would never be removed).
    if tx.one("SELECT 1 FROM blobs WHERE blob_id = ? AND complete = 0", (blob_id,)) is None:
        raise BlobChunksMissing(blob_id.hex())
    if _chunks_cut(tx, blob_id, offset) != offset:
        raise BlobChunksMissing(blob_id.hex())
    view, pos = memoryview(data), offset
    while view:
        idx, within = divmod(pos, BLOB_CHUNK_BYTES)
        piece = bytes(view[: BLOB_CHUNK_BYTES - within])
        if within:
            tx.execute(
                "UPDATE blob_chunks SET data = data || ? WHERE blob_id = ? AND idx = ?",
                (piece, blob_id, idx),
            )
        else:
            tx.execute(
                "INSERT INTO blob_chunks (blob_id, idx, data) VALUES (?, ?, ?)",
                (blob_id, idx, piece),
            )
        view, pos = view[len(piece) :], pos + len(piece)


def _chunks_digest(tx: Tx, blob_id: bytes) -> tuple[int, bytes]:
    digest, length = hashlib.sha256(), 0
    rows = tx.one("SELECT count(*) FROM blob_chunks WHERE blob_id = ?", (blob_id,))
    for idx in range(0 if rows is None else int(rows[0])):  # one row at a time: bounded memory
        row = tx.one("SELECT data FROM blob_chunks WHERE blob_id = ? AND idx = ?", (blob_id, idx))
        if row is None:  # a gap: the bytes are not what was uploaded
            return -1, b""
        digest.update(row[0])
        length += len(row[0])
    return length, digest.digest()


def _chunks_read(tx: Tx, blob_id: bytes, offset: int, length: int) -> bytes:
    first, last = offset // BLOB_CHUNK_BYTES, (offset + length - 1) // BLOB_CHUNK_BYTES
    rows = tx.all(
        "SELECT idx, data FROM blob_chunks WHERE blob_id = ? AND idx BETWEEN ? AND ? ORDER BY idx",
        (blob_id, first, last),
    )
    if not rows and tx.one("SELECT 1 FROM blob_chunks WHERE blob_id = ?", (blob_id,)) is None:
        raise BlobChunksMissing(blob_id.hex())
    out = bytearray()
    for idx, data in rows:
        if idx != first + len(out) // BLOB_CHUNK_BYTES or len(out) % BLOB_CHUNK_BYTES:
            break  # a gap or a short row before the end: stop at what is contiguous
        out += data
    start = offset - first * BLOB_CHUNK_BYTES
    return bytes(out[start : start + length])


def _chunks_remove(tx: Tx, blob_ids: list[bytes]) -> int:
    return sum(
        1
        for blob_id in blob_ids
        if tx.execute("DELETE FROM blob_chunks WHERE blob_id = ?", (blob_id,)) > 0
    )


class _DeadAtBegin(Exception):
    """A pooled connection was found dead at BEGIN: nothing ran, try another one."""


def _database_size(tx: Tx) -> int:
    row = tx.one("SELECT pg_database_size(current_database())")
    return 0 if row is None else int(row[0])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
