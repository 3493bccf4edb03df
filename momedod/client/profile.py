"""The client profile directory: transport credentials and the end-to-end state.

Layout (every file mode 0600, written atomically: temporary file, fsync, rename):

* ``transport.json`` -- :class:`~momedod.client.transport.Credentials` (server, pin, address,
  transport key seed);
* ``e2e.json`` -- :class:`E2EState`: key seeds, prekey seeds, the trust store, the Seal replay
  guard, conversation chains, seen message IDs and a short message log (see
  docs/E2E.md, "The client");
* ``lock`` -- an empty file locked with ``flock`` while a command uses the profile.

The directory must not be accessible to other users (mode 0700); :func:`open_profile` refuses
one that is. Secrets are stored unencrypted: the protection is the file mode.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from momedod.client.files import write_private
from momedod.client.transport import Credentials
from momedod.e2e.identity import HybridPublicKey, UserIdentityKey
from momedod.e2e.seal import SealReplayGuard
from momedod.e2e.trust import TrustStore

CREDENTIALS = "transport.json"
STATE = "e2e.json"
LOCK = "lock"
STATE_FORMAT = 1
LOG_KEEP = 200


class ProfileError(Exception):
    """The profile directory is missing, unsafe, busy or corrupt."""


def default_profile() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "momedo"


@dataclass
class Prekey:
    """A private prekey: its KEM seed, suite and expiry (as published).

    ``created_ms`` is when the seed was generated (0: unknown, an older state; such an SPK is
    treated as due for rotation). ``published`` is False from generation until its KEY_PUT
    succeeded: an interrupted publication is retried at the next connect.
    """

    seed: bytes
    suite: int
    not_after_ms: int = 0
    created_ms: int = 0
    published: bool = True


@dataclass
class SendingState:
    """Our sending chain in one conversation and the devices that already hold it."""

    chain: bytes  # SendingChain.to_bytes()
    holders: list[str] = field(default_factory=list)  # "USERID/device" that got the ChainDist


@dataclass
class GroupState:
    """A group or channel as this device knows it: the newest *verified* roster.

    ``record`` is the RosterRecord of ``epoch`` (signature and chain checked by this client);
    ``kind``/``managed``/``mode``/``title`` are copies from it for listing. ``warnings`` are the
    current discrepancies between the server's membership and the roster (shown by
    ``momedo groups``); ``org_key_version`` is the version of the organisation key that signed
    ``record`` (0 for a user group); ``left`` is set once the server says we are no longer a
    member (a hint: sending stops, the roster is kept).
    """

    record: bytes
    epoch: int
    title: str
    kind: int
    managed: bool
    mode: int
    warnings: list[str] = field(default_factory=list)
    org_key_version: int = 0
    left: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "record": self.record.hex(),
            "epoch": self.epoch,
            "title": self.title,
            "kind": self.kind,
            "managed": self.managed,
            "mode": self.mode,
            "warnings": list(self.warnings),
            "org_key_version": self.org_key_version,
            "left": self.left,
        }

    @classmethod
    def from_json(cls, v: dict[str, Any]) -> GroupState:
        return cls(
            bytes.fromhex(v["record"]),
            int(v["epoch"]),
            str(v["title"]),
            int(v["kind"]),
            bool(v["managed"]),
            int(v["mode"]),
            [str(x) for x in v.get("warnings", [])],
            int(v.get("org_key_version", 0)),
            bool(v.get("left", False)),
        )


@dataclass
class E2EState:
    """Everything secret or stateful of the end-to-end layer (``e2e.json``)."""

    suite: int
    uik_seed: bytes | None  # None on a linked device that is not a manager
    dk_seed: bytes
    spk_id: int
    spks: dict[int, Prekey]
    otpks: dict[int, Prekey]
    next_key_id: int
    trust: TrustStore
    guard: SealReplayGuard
    # "CONVIDHEX:SUITEHEX" (e.g. "ab..ef:0003") -> our chain in that conversation and suite
    sending: dict[str, SendingState] = field(default_factory=dict)
    receiving: dict[str, bytes] = field(default_factory=dict)  # chain_id hex -> state bytes
    seen: dict[str, int] = field(default_factory=dict)  # message_id hex -> ts_ms processed
    log: list[dict[str, Any]] = field(default_factory=list)
    uik_pub: bytes = b""  # UIKPub; set on a linked device (else derived from uik_seed)
    suites: list[int] = field(default_factory=list)  # DeviceEntry.suites; empty: [suite]
    suite_pins: dict[str, int] = field(default_factory=dict)  # "USERID/device" -> suite
    org_fp: bytes | None = None  # pinned organisation key fingerprint
    org_source: str = ""  # "invite" (from the invite link) or "tofu" (first use)
    groups: dict[str, GroupState] = field(default_factory=dict)  # conv_id hex -> group

    @property
    def device_suites(self) -> tuple[int, ...]:
        """The suites this device supports (and lists), highest first."""
        return tuple(sorted(set(self.suites or [self.suite]), reverse=True))

    def uik_public(self) -> HybridPublicKey:
        """The user's identity public key (derived from the seed on a manager device)."""
        if self.uik_seed is not None:
            return UserIdentityKey(self.uik_seed, self.suite).public
        return HybridPublicKey.parse(self.uik_pub)

    def to_json(self) -> bytes:
        doc = {
            "format": STATE_FORMAT,
            "suite": self.suite,
            "suites": sorted(self.device_suites),
            "suite_pins": dict(sorted(self.suite_pins.items())),
            "uik_seed": self.uik_seed.hex() if self.uik_seed is not None else None,
            "uik_pub": self.uik_pub.hex(),
            "dk_seed": self.dk_seed.hex(),
            "spk_id": self.spk_id,
            "spks": {str(k): _prekey_json(v) for k, v in sorted(self.spks.items())},
            "otpks": {str(k): _prekey_json(v) for k, v in sorted(self.otpks.items())},
            "next_key_id": self.next_key_id,
            "trust": json.loads(self.trust.to_json()),
            "replay_guard": self.guard.to_bytes().hex(),
            "sending": {
                c: {"chain": s.chain.hex(), "holders": sorted(s.holders)}
                for c, s in sorted(self.sending.items())
            },
            "receiving": {c: s.hex() for c, s in sorted(self.receiving.items())},
            "seen": dict(sorted(self.seen.items())),
            "log": self.log[-LOG_KEEP:],
            "org": (
                {"fp": self.org_fp.hex(), "source": self.org_source}
                if self.org_fp is not None
                else None
            ),
            "groups": {c: g.to_json() for c, g in sorted(self.groups.items())},
        }
        return json.dumps(doc, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> E2EState:
        try:
            doc = json.loads(data)
            if doc["format"] != STATE_FORMAT:
                raise ValueError(f"unsupported state format {doc['format']!r}")
            suite = int(doc["suite"])
            sending = {}
            for c, st in doc["sending"].items():
                # Chains are per (conversation, suite); an older state keyed by conversation
                # only holds a chain of its single suite.
                key = c if ":" in c else f"{c}:{suite:04x}"
                sending[key] = SendingState(bytes.fromhex(st["chain"]), list(st["holders"]))
            return cls(
                suite=suite,
                suites=[int(x) for x in doc.get("suites", [suite])],
                suite_pins={str(k): int(v) for k, v in doc.get("suite_pins", {}).items()},
                uik_seed=bytes.fromhex(doc["uik_seed"]) if doc["uik_seed"] is not None else None,
                uik_pub=bytes.fromhex(doc.get("uik_pub", "")),
                dk_seed=bytes.fromhex(doc["dk_seed"]),
                spk_id=int(doc["spk_id"]),
                spks={int(k): _prekey_from(v) for k, v in doc["spks"].items()},
                otpks={int(k): _prekey_from(v) for k, v in doc["otpks"].items()},
                next_key_id=int(doc["next_key_id"]),
                trust=TrustStore.from_json(json.dumps(doc["trust"])),
                guard=SealReplayGuard.from_bytes(bytes.fromhex(doc["replay_guard"])),
                sending=sending,
                receiving={c: bytes.fromhex(s) for c, s in doc["receiving"].items()},
                seen={str(k): int(v) for k, v in doc["seen"].items()},
                log=list(doc["log"]),
                org_fp=bytes.fromhex(doc["org"]["fp"]) if doc.get("org") else None,
                org_source=str(doc["org"]["source"]) if doc.get("org") else "",
                groups={str(c): GroupState.from_json(g) for c, g in doc.get("groups", {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProfileError(f"corrupt end-to-end state: {exc}") from None


def _prekey_json(p: Prekey) -> dict[str, Any]:
    return {
        "seed": p.seed.hex(),
        "suite": p.suite,
        "not_after_ms": p.not_after_ms,
        "created_ms": p.created_ms,
        "published": p.published,
    }


def _prekey_from(v: dict[str, Any]) -> Prekey:
    return Prekey(
        bytes.fromhex(v["seed"]),
        int(v["suite"]),
        int(v["not_after_ms"]),
        int(v.get("created_ms", 0)),
        bool(v.get("published", True)),
    )


class Profile:
    """An opened profile directory. Use :meth:`locked` around every read-modify-write."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def credentials_path(self) -> Path:
        return self.path / CREDENTIALS

    @property
    def state_path(self) -> Path:
        return self.path / STATE

    def enrolled(self) -> bool:
        return self.credentials_path.exists()

    def has_e2e(self) -> bool:
        return self.state_path.exists()

    def credentials(self) -> Credentials:
        try:
            return Credentials.load(self.credentials_path)
        except FileNotFoundError:
            raise ProfileError(f"no enrolled device in {self.path}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ProfileError(f"corrupt {self.credentials_path}: {exc}") from None

    def save_credentials(self, creds: Credentials) -> None:
        creds.save(self.credentials_path)
        os.chmod(self.credentials_path, 0o600)

    def load_state(self) -> E2EState:
        try:
            data = self.state_path.read_bytes()
        except FileNotFoundError:
            raise ProfileError(
                f"{self.path} has no end-to-end keys (enrolled with an older client?)"
            ) from None
        return E2EState.from_json(data)

    def save_state(self, state: E2EState) -> None:
        write_private(self.state_path, state.to_json())

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the profile lock (exclusive, non-blocking: a second process gets an error)."""
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ProfileError(
                    f"{self.path} is in use by another momedo process (e.g. `momedo listen`)"
                ) from None
            yield
        finally:
            os.close(fd)


def open_profile(path: Path, *, create: bool = False) -> Profile:
    """Open (or create, mode 0700) a profile directory; refuse one others can access."""
    if create:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.is_dir():
        raise ProfileError(f"no profile at {path} — enroll first: momedo enroll LINK")
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        raise ProfileError(f"{path} is accessible by other users; run: chmod 700 {path}")
    for name in (CREDENTIALS, STATE):
        p = path / name
        if p.exists() and stat.S_IMODE(p.stat().st_mode) & 0o077:
            raise ProfileError(f"{p} is readable by other users; run: chmod 600 {p}")
    return Profile(path)
