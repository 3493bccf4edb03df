"""The organisation key file that momedoctl signs organisation rosters with.

The daemon never reads this file: it only stores the public OrgKeyRecords momedoctl hands it
(``org.key.put``) and verifies rosters against them. Location, first match wins:
``--org-key FILE``, ``$MOMEDO_ORG_KEY``, ``<dev state dir>/org.key`` with ``--dev``, else
``org.key`` next to the config file momedoctl uses (``-c FILE``, ``$MOMEDO_CONFIG``,
``/etc/momedo/momedod.toml``).

Format: one JSON object, mode 0600 (a file with any group/other permission is refused)::

    {"momedo_org_key": 1, "suite": 2, "seed": "<64 hex digits>",
     "fingerprint": "<52 base32 characters>", "chain": ["<base64 OrgKeyRecord v1>", ...]}

``seed`` is the private key (a 32-byte seed of a hybrid Ed25519 + ML-DSA-65 key, like a
user identity key), ``chain`` every OrgKeyRecord from version 1 to this key's (the key's
version is the chain's length), so the whole chain can be published to a daemon that lacks
it. Rotation keeps the previous file as ``org.key.N`` (N = its version).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import stat
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from momedod.config import find_config_file, load_config
from momedod.e2e.errors import E2EError
from momedod.e2e.identity import SEED_LEN, UserIdentityKey
from momedod.e2e.roster import ROLE_ADMIN, ROLE_MEMBER, current_org_key, make_org_key_record
from momedod.e2e.suites import SUITE_XWING
from momedod.protocol.invite import fingerprint_text

__all__ = [
    "ORG_KEY_FILE",
    "Change",
    "OrgKeyError",
    "OrgKeyFile",
    "change_roles",
    "create",
    "load",
    "locate",
    "missing_records",
    "rotate",
]

ORG_KEY_FILE = "org.key"
FORMAT = 1


class OrgKeyError(Exception):
    """The key file cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class OrgKeyFile:
    """The loaded key: private key, and the OrgKeyRecords from version 1 to its own."""

    path: Path
    key: UserIdentityKey
    chain: tuple[bytes, ...]

    @property
    def version(self) -> int:
        """The key's version (the number of records in the chain)."""
        return len(self.chain)

    @property
    def fingerprint(self) -> str:
        """The key's fingerprint in text form (52 base32 characters)."""
        return fingerprint_text(self.key.fp)


def locate(
    config: Path | None, dev: bool, explicit: Path | None, environ: dict[str, str] | None = None
) -> Path:
    """The key file for momedoctl's options (see the module docstring)."""
    env = dict(os.environ) if environ is None else environ
    if explicit is not None:
        return explicit
    if env.get("MOMEDO_ORG_KEY"):
        return Path(env["MOMEDO_ORG_KEY"])
    if dev:
        return load_config(config, dev=True).server.state_dir / ORG_KEY_FILE
    source = find_config_file(config, environ=env)
    directory = source.absolute().parent if source is not None else Path("/etc/momedo")
    return directory / ORG_KEY_FILE


def load(path: Path) -> OrgKeyFile | None:
    """Read the key file; None if it does not exist. Raises OrgKeyError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise OrgKeyError(f"cannot read the organisation key {path}: {e.strerror or e}") from None
    with os.fdopen(fd, "rb") as fh:
        mode = stat.S_IMODE(os.fstat(fh.fileno()).st_mode)
        if mode & 0o077:
            raise OrgKeyError(
                f"{path} is accessible by other users (mode {mode:04o}); "
                f"it holds the organisation's private key: run chmod 600 {path}"
            )
        raw = fh.read()
    try:
        obj = json.loads(raw.decode("utf-8"))
        if not isinstance(obj, dict) or obj.get("momedo_org_key") != FORMAT:
            raise ValueError("not a momedo organisation key file")
        seed = bytes.fromhex(_str(obj, "seed"))
        if len(seed) != SEED_LEN:
            raise ValueError(f"seed must be {SEED_LEN} bytes")
        suite = obj.get("suite")
        if not isinstance(suite, int):
            raise ValueError("suite must be a number")
        chain = obj.get("chain")
        if not isinstance(chain, list) or not chain:
            raise ValueError("chain must be a non-empty list")
        records = tuple(base64.b64decode(_text(r), validate=True) for r in chain)
        key = UserIdentityKey(seed, suite)
        if current_org_key(records, None).fp != key.fp:
            raise ValueError("the chain does not end with this key")
    except (UnicodeDecodeError, ValueError, E2EError) as e:
        raise OrgKeyError(f"{path}: damaged organisation key file ({e})") from None
    return OrgKeyFile(path, key, records)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _str(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    return value


def _write(path: Path, key: UserIdentityKey, chain: tuple[bytes, ...]) -> OrgKeyFile:
    """Write the key file atomically (temporary file, fsync, rename), mode 0600."""
    obj = {
        "momedo_org_key": FORMAT,
        "suite": key.suite,
        "seed": key.seed.hex(),
        "fingerprint": fingerprint_text(key.fp),
        "chain": [base64.b64encode(r).decode("ascii") for r in chain],
    }
    data = (json.dumps(obj, indent=2) + "\n").encode()
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OrgKeyError(f"cannot write {path}: {e.strerror or e}") from None
    return OrgKeyFile(path, key, chain)


def create(path: Path) -> OrgKeyFile:
    """Make a new organisation key (version 1) in ``path``, which must not exist."""
    if path.exists():
        raise OrgKeyError(f"{path} exists already")
    key = UserIdentityKey(secrets.token_bytes(SEED_LEN), SUITE_XWING)
    return _write(path, key, (make_org_key_record(1, key, None),))


def rotate(current: OrgKeyFile) -> OrgKeyFile:
    """Replace the key with a new one (version + 1, its record signed by the old key); the
    old file stays as ``<path>.<old version>``."""
    backup = current.path.with_name(f"{current.path.name}.{current.version}")
    if backup.exists():
        raise OrgKeyError(f"{backup} exists already; move it away before rotating again")
    _write(backup, current.key, current.chain)
    key = UserIdentityKey(secrets.token_bytes(SEED_LEN), SUITE_XWING)
    record = make_org_key_record(current.version + 1, key, current.key)
    return _write(current.path, key, (*current.chain, record))


def missing_records(
    stored: Sequence[bytes], key: OrgKeyFile, fingerprint: str | None
) -> tuple[bytes, ...]:
    """The records of ``key``'s chain that momedod (holding ``stored``) lacks, to publish
    with ``org.key.put`` in order.

    Raises OrgKeyError if momedod knows another chain or a newer key than this file's.
    """
    if tuple(stored[: key.version]) != key.chain[: len(stored)]:
        raise OrgKeyError(
            f"momedod knows organisation key {fingerprint} (version {len(stored)}), but "
            f"{key.path} holds {key.fingerprint} (version {key.version}) of another chain: "
            "is this the organisation's key file? (choose one with --org-key FILE)"
        )
    if len(stored) > key.version:
        raise OrgKeyError(
            f"{key.path} holds version {key.version} of the organisation key, momedod already "
            f"has version {len(stored)} ({fingerprint}): use the newest key file "
            "(--org-key FILE)"
        )
    return key.chain[len(stored) :]


Change = Literal["add", "remove", "admin", "member"]
"""An operator's change of users in a group: add as members, remove, make admins (adding
them if needed), make admins members again."""


def change_roles(
    roles: Mapping[str, int],
    change: Change,
    users: Sequence[str],
    drop: Collection[str] = (),
) -> dict[str, int]:
    """The members (canonical user ID -> role) after ``change`` of ``users``; members in
    ``drop`` (deleted users, who cannot be in a new roster) are left out on the way. The
    rules of ``momedoctl group members|admins`` and the TUI's groups screen."""
    wanted = {uid: role for uid, role in roles.items() if uid not in drop}
    for uid in users:
        if change == "add":
            wanted.setdefault(uid, ROLE_MEMBER)
        elif change == "remove":
            wanted.pop(uid, None)
        elif change == "admin":
            wanted[uid] = ROLE_ADMIN
        elif uid in wanted:
            wanted[uid] = ROLE_MEMBER
    return wanted
