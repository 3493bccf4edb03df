"""Backups of a momedod state directory: writing them, verifying them, restoring them.

Theory of operation
-------------------
A backup is a directory::

    momedo.sqlite3      consistent snapshot of the database (Store.backup), one file
    tls/cert.pem        copy of STATE_DIR/tls/, if the server has one (files mode 0600)
    tls/key.pem
    blobs/ab/ab12...    the complete attachment blobs the database copy knows (hard links to
                        the live files when on the same filesystem: they never change)
    MANIFEST.json       written last; a directory without it is an unfinished backup

The manifest names every other file with its size and SHA-256, so a truncated, damaged or
altered backup is recognised before anything is restored. File paths are relative and
``/``-separated and may lie in subdirectories (the ``blobs/`` tree), which restore copies like
any other file. Readers refuse a manifest whose ``format_version`` is newer than theirs.

Writing (in the daemon, see ``server.backup`` in :mod:`momedod.admin.server`):
:func:`prepare_backup_dir`, then ``Store.backup``, then :func:`finish_backup` (TLS copy and
manifest); :func:`discard_backup` removes a failed attempt. Restoring (``momedod restore``,
daemon stopped): :func:`restore_backup` runs :func:`verify_backup`, checks the target, copies
the files into a temporary directory next to the state directory (checking every byte again
on the way), fsyncs it and renames it into place; an existing state directory is moved aside,
never deleted.

Everything here is plain blocking code (no event loop); the daemon calls it in a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pwd
import shutil
import socket
import sqlite3
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from momedod.store.base import BackupInfo
from momedod.store.migrations import SQLITE_MIGRATIONS
from momedod.store.sqlite import DB_FILENAME, fsync_path

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "BackupError",
    "BackupRefused",
    "BackupSummary",
    "Manifest",
    "ManifestFile",
    "RestoreRefused",
    "RestoreResult",
    "daemon_running",
    "discard_backup",
    "finish_backup",
    "prepare_backup_dir",
    "read_manifest",
    "restore_backup",
    "verify_backup",
]

MANIFEST_NAME = "MANIFEST.json"
FORMAT_NAME = "momedo-backup"
FORMAT_VERSION = 1
TLS_DIR = "tls"
BLOBS_DIR = "blobs"
SERVICE_USER = "momedo"
# Names a file system or a desktop may put into any directory; never part of a backup.
IGNORABLE = frozenset({"lost+found", ".DS_Store", "Thumbs.db"})
_CHUNK = 1024 * 1024
_SQLITE_NOTADB = 26


class BackupError(Exception):
    """A backup or restore failed; the message is one line for the operator."""


class BackupRefused(BackupError):
    """The backup cannot be written where asked (not absolute, not empty, not a directory)."""


class RestoreRefused(BackupError):
    """The backup is incomplete or damaged, or the target cannot take it; nothing changed."""


@dataclass(frozen=True)
class ManifestFile:
    """One file of a backup: ``path`` relative to the backup directory, ``/``-separated."""

    path: str
    kind: str  # "database", "tls", "blob"
    size: int
    sha256: str  # lower-case hex

    def to_json(self) -> dict[str, Any]:
        """The entry as it appears in ``files``."""
        return {"path": self.path, "kind": self.kind, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class Manifest:
    """The contents of MANIFEST.json."""

    format_version: int
    momedo_version: str
    created: str  # ISO-8601 UTC, e.g. 2026-12-01T03:00:00Z
    engine: str
    schema_version: int
    fingerprint: str | None  # the server's certificate fingerprint (text form) at backup time
    users: int
    devices: int
    mailbox_entries: int
    files: tuple[ManifestFile, ...]

    def to_json(self) -> dict[str, Any]:
        """The manifest object."""
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "momedo_version": self.momedo_version,
            "created": self.created,
            "engine": self.engine,
            "schema_version": self.schema_version,
            "fingerprint": self.fingerprint,
            "counts": {
                "users": self.users,
                "devices": self.devices,
                "mailbox_entries": self.mailbox_entries,
            },
            "files": [f.to_json() for f in self.files],
        }

    @property
    def database(self) -> ManifestFile:
        """The entry of the database file."""
        return next(f for f in self.files if f.path == DB_FILENAME)


@dataclass(frozen=True)
class BackupSummary:
    """What a finished backup holds: file count and bytes include MANIFEST.json."""

    dir: Path
    files: int
    bytes: int
    users: int
    devices: int
    mailbox_entries: int


@dataclass(frozen=True)
class RestoreResult:
    """What ``restore_backup`` did."""

    manifest: Manifest
    state_dir: Path
    moved_aside: Path | None  # where the previous state directory went
    owner: str | None  # the user the restored files were given (when run as root)


# --- small helpers -------------------------------------------------------------------------


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _sha256_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _copy_file(src: Path, dst: Path) -> tuple[int, str]:
    """Copy ``src`` to the new file ``dst`` (mode 0600), fsync it; return (size, sha256)."""
    digest = hashlib.sha256()
    size = 0
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
        while chunk := inp.read(_CHUNK):
            out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    return size, digest.hexdigest()


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _mkdir_hint(exc: OSError) -> str:
    if exc.errno == errno.EROFS:
        return (
            " (under systemd momedod may write only where its unit allows: add the directory"
            " to ReadWritePaths=)"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return " (the directory must be writable by the user momedod runs as)"
    return ""


# --- writing a backup ----------------------------------------------------------------------


def prepare_backup_dir(dest: Path) -> bool:
    """Make sure ``dest`` is a new or empty directory; create it (mode 0700) if missing.

    Returns True if it was created. Raises BackupRefused for a relative path or an existing
    non-empty directory or non-directory, BackupError if it cannot be created.
    """
    if not dest.is_absolute():
        raise BackupRefused(f"backup directory must be an absolute path, got {str(dest)!r}")
    try:
        dest.mkdir(mode=0o700, parents=True)
        return True
    except FileExistsError:
        pass
    except OSError as exc:
        raise BackupError(f"cannot create {dest}: {_why(exc)}{_mkdir_hint(exc)}") from exc
    if not dest.is_dir():
        raise BackupRefused(f"{dest} exists and is not a directory")
    try:
        if any(dest.iterdir()):
            raise BackupRefused(
                f"{dest} is not empty; give each backup a new directory (e.g. one per date)"
            )
    except OSError as exc:
        raise BackupError(f"cannot read {dest}: {_why(exc)}") from exc
    if not os.access(dest, os.W_OK | os.X_OK):
        raise BackupError(
            f"cannot write into {dest}: the directory must be writable by the user momedod runs as"
        )
    return False


def _copy_tls(state_dir: Path, dest: Path) -> list[str]:
    """Copy the regular files of STATE_DIR/tls to dest/tls (0700/0600); their paths."""
    src_dir = state_dir / TLS_DIR
    if not src_dir.is_dir():
        return []
    names = sorted(p.name for p in src_dir.iterdir() if p.is_file() and not p.name.endswith(".tmp"))
    if not names:
        return []
    out_dir = dest / TLS_DIR
    out_dir.mkdir(mode=0o700)
    for name in names:
        _copy_file(src_dir / name, out_dir / name)
    fsync_path(out_dir)
    return [f"{TLS_DIR}/{name}" for name in names]


def _copy_blobs(state_dir: Path, dest: Path) -> list[str]:
    """Link (else copy) into dest/blobs the complete blobs of the database copy in ``dest``;
    their paths. A blob collected since the snapshot is skipped (its row then names no file,
    which the server answers like an unknown blob)."""
    uri = (dest / DB_FILENAME).resolve().as_uri() + "?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        rows = conn.execute("SELECT blob_id FROM blobs WHERE complete = 1 ORDER BY blob_id")
        names = [bytes(row[0]).hex() for row in rows]
    paths: list[str] = []
    dirs: set[Path] = set()
    for name in names:
        rel = f"{BLOBS_DIR}/{name[:2]}/{name}"
        src, dst = state_dir / rel, dest / rel
        if not src.is_file():
            continue
        dst.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        dirs.update((dst.parent, dest / BLOBS_DIR))
        try:
            os.link(src, dst)
        except OSError as exc:  # another filesystem, or no hard links there
            if exc.errno == errno.ENOENT:
                continue
            _copy_file(src, dst)
        paths.append(rel)
    for directory in sorted(dirs, reverse=True):
        fsync_path(directory)
    return paths


def finish_backup(
    dest: Path,
    state_dir: Path,
    info: BackupInfo,
    *,
    fingerprint: str | None,
    created: datetime,
    momedo_version: str,
) -> BackupSummary:
    """Copy the TLS directory and write MANIFEST.json (last, atomically) into ``dest``.

    ``info`` is what ``Store.backup`` wrote there. Raises BackupError.
    """
    try:
        tls_files = _copy_tls(state_dir, dest)
        blob_files = _copy_blobs(state_dir, dest)
        entries = []
        for rel in (*info.files, *tls_files, *blob_files):
            size, sha = _sha256_file(dest / rel)
            kind = "database" if rel in info.files else "tls" if rel in tls_files else "blob"
            entries.append(ManifestFile(rel, kind, size, sha))
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            momedo_version=momedo_version,
            created=_iso(created),
            engine=info.engine,
            schema_version=info.schema_version,
            fingerprint=fingerprint,
            users=info.users,
            devices=info.devices,
            mailbox_entries=info.mailbox_entries,
            files=tuple(entries),
        )
        text = json.dumps(manifest.to_json(), indent=2) + "\n"
        tmp = dest / f"{MANIFEST_NAME}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, dest / MANIFEST_NAME)
        fsync_path(dest)
    except OSError as exc:
        where = exc.filename or dest
        raise BackupError(f"backup to {dest} failed: {where}: {_why(exc)}") from exc
    return BackupSummary(
        dir=dest,
        files=len(entries) + 1,
        bytes=sum(e.size for e in entries) + len(text.encode("utf-8")),
        users=info.users,
        devices=info.devices,
        mailbox_entries=info.mailbox_entries,
    )


def discard_backup(dest: Path, *, remove_dir: bool) -> None:
    """Remove what a failed backup attempt wrote into ``dest`` (known names only), and with
    ``remove_dir`` (it was created for the backup) ``dest`` itself if that leaves it empty.
    Best effort; never raises."""
    for name in (
        DB_FILENAME,
        f"{DB_FILENAME}-journal",
        f"{DB_FILENAME}-wal",
        f"{DB_FILENAME}-shm",
        MANIFEST_NAME,
        f"{MANIFEST_NAME}.tmp",
    ):
        with contextlib.suppress(OSError):
            (dest / name).unlink()
    for tree in (TLS_DIR, BLOBS_DIR):
        with contextlib.suppress(OSError):
            shutil.rmtree(dest / tree)
    if remove_dir:
        with contextlib.suppress(OSError):
            dest.rmdir()


# --- reading and verifying -----------------------------------------------------------------


def _refuse(backup_dir: Path, why: str) -> RestoreRefused:
    return RestoreRefused(f"{backup_dir}: {why}")


def _field(obj: dict[str, Any], name: str, kind: type, backup_dir: Path, where: str = "") -> Any:
    value = obj.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _refuse(backup_dir, f"{MANIFEST_NAME} is damaged: bad or missing {where}{name!r}")
    return value


def _safe_relpath(text: str) -> bool:
    if not text or "\\" in text or "\0" in text:
        return False
    path = PurePosixPath(text)
    return (
        not path.is_absolute()
        and all(part not in ("", ".", "..") for part in text.split("/"))
        and text != MANIFEST_NAME
    )


def read_manifest(backup_dir: Path) -> Manifest:
    """Read and check the shape of ``backup_dir/MANIFEST.json``; raise RestoreRefused."""
    path = backup_dir / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if not backup_dir.is_dir():
            raise RestoreRefused(f"{backup_dir}: no such directory") from None
        raise _refuse(
            backup_dir,
            f"no {MANIFEST_NAME}: not a momedo backup, or the backup did not finish",
        ) from None
    except OSError as exc:
        raise _refuse(backup_dir, f"cannot read {MANIFEST_NAME}: {_why(exc)}") from exc
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _refuse(backup_dir, f"{MANIFEST_NAME} is damaged (not valid JSON)") from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT_NAME:
        raise _refuse(backup_dir, f"{MANIFEST_NAME} is not a momedo backup manifest")
    version = _field(obj, "format_version", int, backup_dir)
    if version > FORMAT_VERSION:
        raise _refuse(
            backup_dir,
            f"made by a newer momedo (backup format {version}, this momedod reads up to "
            f"{FORMAT_VERSION}); restore it with that version",
        )
    counts = _field(obj, "counts", dict, backup_dir)
    fingerprint = obj.get("fingerprint")
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise _refuse(backup_dir, f"{MANIFEST_NAME} is damaged: bad 'fingerprint'")
    files: list[ManifestFile] = []
    seen: set[str] = set()
    raw_files = _field(obj, "files", list, backup_dir)
    for i, entry in enumerate(raw_files):
        if not isinstance(entry, dict):
            raise _refuse(backup_dir, f"{MANIFEST_NAME} is damaged: bad files[{i}]")
        where = f"files[{i}]."
        rel = _field(entry, "path", str, backup_dir, where)
        if not _safe_relpath(rel) or rel in seen:
            raise _refuse(backup_dir, f"{MANIFEST_NAME} lists an unsafe or repeated path {rel!r}")
        seen.add(rel)
        size = _field(entry, "size", int, backup_dir, where)
        sha = _field(entry, "sha256", str, backup_dir, where)
        if size < 0 or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise _refuse(backup_dir, f"{MANIFEST_NAME} is damaged: bad size or sha256 of {rel}")
        files.append(ManifestFile(rel, _field(entry, "kind", str, backup_dir, where), size, sha))
    manifest = Manifest(
        format_version=version,
        momedo_version=_field(obj, "momedo_version", str, backup_dir),
        created=_field(obj, "created", str, backup_dir),
        engine=_field(obj, "engine", str, backup_dir),
        schema_version=_field(obj, "schema_version", int, backup_dir),
        fingerprint=fingerprint,
        users=_field(counts, "users", int, backup_dir, "counts."),
        devices=_field(counts, "devices", int, backup_dir, "counts."),
        mailbox_entries=_field(counts, "mailbox_entries", int, backup_dir, "counts."),
        files=tuple(files),
    )
    if manifest.engine != "sqlite":
        raise _refuse(
            backup_dir, f"backup of a {manifest.engine!r} store; this momedod restores 'sqlite'"
        )
    if DB_FILENAME not in seen:
        raise _refuse(backup_dir, f"{MANIFEST_NAME} lists no database ({DB_FILENAME})")
    return manifest


def _walk_files(root: Path) -> Iterator[str]:
    """Relative ``/``-paths of everything below ``root`` that is not a directory (symlinks
    to directories included), skipping IGNORABLE names."""

    def onerror(exc: OSError) -> None:
        raise exc

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
        base = Path(dirpath).relative_to(root)
        links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        dirnames[:] = [d for d in dirnames if d not in IGNORABLE and d not in links]
        for name in (*filenames, *links):
            if name not in IGNORABLE:
                yield (base / name).as_posix()


def _check_database(backup_dir: Path, path: Path, manifest: Manifest) -> None:
    uri = path.resolve().as_uri() + "?mode=ro&immutable=1"
    failed = f"{DB_FILENAME} fails SQLite's integrity check"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            try:
                rows = conn.execute("PRAGMA integrity_check").fetchall()
            except sqlite3.DatabaseError as exc:
                if getattr(exc, "sqlite_errorcode", 0) & 0xFF == _SQLITE_NOTADB:
                    raise _refuse(backup_dir, f"{DB_FILENAME} is not an SQLite database") from exc
                raise _refuse(backup_dir, f"{failed}: {exc}") from exc
            if [tuple(r) for r in rows] != [("ok",)]:
                raise _refuse(backup_dir, f"{failed}: {rows[0][0] if rows else 'no answer'}")
            try:
                row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
            except sqlite3.OperationalError:
                row = None
    except sqlite3.Error as exc:
        raise _refuse(backup_dir, f"cannot open {DB_FILENAME}: {exc}") from exc
    version = 0 if row is None or row[0] is None else int(row[0])
    known = len(SQLITE_MIGRATIONS)
    if version < 1:
        raise _refuse(backup_dir, f"{DB_FILENAME} holds no momedo schema")
    if version > known:
        raise _refuse(
            backup_dir,
            f"database schema version {version} is newer than this momedod supports (up to "
            f"{known}); restore with momedo {manifest.momedo_version} or newer",
        )
    if version != manifest.schema_version:
        raise _refuse(
            backup_dir,
            f"database schema version {version} does not match the manifest's "
            f"{manifest.schema_version}",
        )


def verify_backup(backup_dir: Path) -> Manifest:
    """Check a backup completely without changing it; return its manifest.

    MANIFEST.json must parse; every listed file must exist as a regular file with exactly the
    listed size and SHA-256; no file may be there that the manifest does not list (except
    IGNORABLE names); the database must pass ``PRAGMA integrity_check`` and have a schema
    version this momedod knows. Raises RestoreRefused naming the first problem.
    """
    manifest = read_manifest(backup_dir)
    for entry in manifest.files:
        path = backup_dir / entry.path
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise _refuse(backup_dir, f"{entry.path} is missing") from None
        except OSError as exc:
            raise _refuse(backup_dir, f"cannot read {entry.path}: {_why(exc)}") from exc
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(backup_dir, f"{entry.path} is not a regular file")
        if st.st_size != entry.size:
            raise _refuse(
                backup_dir,
                f"{entry.path} is {st.st_size} bytes, the manifest says {entry.size}: "
                "the backup is truncated or damaged",
            )
    listed = {entry.path for entry in manifest.files} | {MANIFEST_NAME}
    try:
        extra = sorted(set(_walk_files(backup_dir)) - listed)
    except OSError as exc:
        raise _refuse(backup_dir, f"cannot list the backup: {_why(exc)}") from exc
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise _refuse(
            backup_dir,
            f"file(s) not in the manifest: {shown}; the backup was changed after it was made",
        )
    for entry in manifest.files:
        try:
            size, sha = _sha256_file(backup_dir / entry.path)
        except OSError as exc:
            raise _refuse(backup_dir, f"cannot read {entry.path}: {_why(exc)}") from exc
        if (size, sha) != (entry.size, entry.sha256):
            raise _refuse(
                backup_dir,
                f"{entry.path} does not match its SHA-256 in the manifest: the backup is damaged",
            )
    _check_database(backup_dir, backup_dir / DB_FILENAME, manifest)
    return manifest


# --- restoring -----------------------------------------------------------------------------


def daemon_running(admin_socket: Path) -> bool:
    """True if something answers on the admin socket; RestoreRefused if we cannot tell."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        try:
            sock.connect(os.fspath(admin_socket))
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            return False
        except TimeoutError:
            return True  # a full backlog: someone is listening
        except OSError as exc:
            raise RestoreRefused(
                f"cannot tell whether momedod is running: {admin_socket}: {_why(exc)}; "
                "run the restore as root or as the service user"
            ) from exc
    return True


def _restore_owner(state_dir: Path) -> tuple[int, int, str] | None:
    """(uid, gid, name) to give restored files when running as root, else None."""
    if os.geteuid() != 0:
        return None
    try:
        st = os.stat(state_dir)
        uid, gid = st.st_uid, st.st_gid
    except FileNotFoundError:
        try:
            entry = pwd.getpwnam(SERVICE_USER)
        except KeyError:
            return None
        uid, gid = entry.pw_uid, entry.pw_gid
    if uid == 0:
        return None
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return uid, gid, name


def _aside_path(state_dir: Path, now: datetime) -> Path:
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = state_dir.with_name(f"{state_dir.name}.before-restore-{stamp}")
    n = 2
    while aside.exists():
        aside = state_dir.with_name(f"{state_dir.name}.before-restore-{stamp}-{n}")
        n += 1
    return aside


def _check_target(state_dir: Path, force: bool) -> bool:
    """Refuse an occupied state directory unless ``force``; True if it exists non-empty."""
    try:
        entries = sorted(p.name for p in state_dir.iterdir())
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        raise RestoreRefused(f"{state_dir} exists and is not a directory") from None
    except OSError as exc:
        raise RestoreRefused(f"cannot read {state_dir}: {_why(exc)}") from exc
    if not entries:
        return False
    if not force:
        what = (
            f"already holds a database ({DB_FILENAME})"
            if DB_FILENAME in entries
            else f"is not empty ({', '.join(entries[:3])})"
        )
        raise RestoreRefused(
            f"state directory {state_dir} {what}; to replace it use --force "
            f"(the current state is then moved to {state_dir.name}.before-restore-TIME, "
            "not deleted)"
        )
    return True


def restore_backup(
    backup_dir: Path,
    state_dir: Path,
    *,
    admin_socket: Path,
    force: bool = False,
    now: datetime | None = None,
) -> RestoreResult:
    """Restore the backup in ``backup_dir`` as the state directory ``state_dir``.

    Refuses (RestoreRefused, nothing changed) a backup that fails :func:`verify_backup`, a
    running daemon (``admin_socket`` answers) and an occupied state directory unless
    ``force``, in which case that directory is renamed to
    ``STATE_DIR.before-restore-<UTC time>``. The files are copied into a temporary directory
    next to ``state_dir``, checked against the manifest again, fsynced and renamed into place
    with modes 0700 (directories) and 0600 (files); as root they get the owner of the old
    state directory (or of the user ``momedo``). Raises BackupError on I/O errors.
    """
    now = now or datetime.now(UTC)
    backup_dir = backup_dir.absolute()
    state_dir = state_dir.resolve()  # a symlinked state directory: restore where it points
    # The quick checks first, then the full verification (it reads every byte).
    if daemon_running(admin_socket):
        raise RestoreRefused(
            f"momedod is running (its admin socket {admin_socket} answers); stop it first, "
            "e.g. systemctl stop momedod"
        )
    occupied = _check_target(state_dir, force)
    manifest = verify_backup(backup_dir)
    owner = _restore_owner(state_dir)
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    tmp = state_dir.with_name(f".{state_dir.name}.restore-{stamp}-{os.getpid()}")
    try:
        state_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir(mode=0o700)
    except OSError as exc:
        raise BackupError(f"cannot create {tmp}: {_why(exc)}") from exc
    try:
        _copy_into(backup_dir, tmp, manifest)
        if owner is not None:
            uid, gid, _name = owner
            for path in (tmp, *sorted(tmp.rglob("*"))):
                os.chown(path, uid, gid, follow_symlinks=False)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BackupError(f"cannot prepare the restored state in {tmp}: {_why(exc)}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _swap_in(tmp, state_dir, occupied, now, manifest, owner)


def _copy_into(backup_dir: Path, tmp: Path, manifest: Manifest) -> None:
    dirs = {tmp}
    for entry in manifest.files:
        dst = tmp / entry.path
        for parent in reversed(dst.relative_to(tmp).parents[:-1]):
            if tmp / parent not in dirs:
                (tmp / parent).mkdir(mode=0o700)
                dirs.add(tmp / parent)
        try:
            got = _copy_file(backup_dir / entry.path, dst)
        except OSError as exc:
            raise BackupError(f"cannot copy {entry.path} to {tmp}: {_why(exc)}") from exc
        if got != (entry.size, entry.sha256):
            raise RestoreRefused(
                f"{backup_dir}: {entry.path} changed while it was restored; nothing was restored"
            )
    try:
        for directory in sorted(dirs, key=lambda d: len(d.parts), reverse=True):
            os.chmod(directory, 0o700)
            fsync_path(directory)
    except OSError as exc:
        raise BackupError(f"cannot sync {tmp}: {_why(exc)}") from exc


def _swap_in(
    tmp: Path,
    state_dir: Path,
    occupied: bool,
    now: datetime,
    manifest: Manifest,
    owner: tuple[int, int, str] | None,
) -> RestoreResult:
    aside: Path | None = None
    try:
        if occupied:
            aside = _aside_path(state_dir, now)
            os.rename(state_dir, aside)
        else:
            with contextlib.suppress(FileNotFoundError):
                state_dir.rmdir()  # an empty directory, e.g. made by systemd or make install
        try:
            os.rename(tmp, state_dir)
        except OSError:
            if aside is not None:
                with contextlib.suppress(OSError):
                    os.rename(aside, state_dir)
                aside = None
            raise
        fsync_path(state_dir.parent)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BackupError(
            f"cannot put the restored state in place at {state_dir}: {_why(exc)}"
        ) from exc
    return RestoreResult(
        manifest=manifest,
        state_dir=state_dir,
        moved_aside=aside,
        owner=None if owner is None else owner[2],
    )
