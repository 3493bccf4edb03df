"""The contact-pin store: who we trust with which identity key, and what changed.

Theory of operation (E2E.md section 4.4). Pure state, no I/O; the client saves it with its
profile as JSON (:meth:`TrustStore.to_json`). The caller verifies records first
(:mod:`.records`) and then reports what it saw:

* :meth:`~TrustStore.observe_identity` with a contact's newest identity FP. First sight pins
  it (TOFU, level UNVERIFIED) -> :class:`Pinned`. The pinned FP again -> :class:`Unchanged`.
  A different FP -> :class:`KeyChange`: a hard warning; the contact drops to UNVERIFIED and
  **sending is blocked** until :meth:`~TrustStore.accept` (or an in-person QR check of the new
  key). While a change is pending, every observation reports the KeyChange again.
* :meth:`~TrustStore.verify_qr` after scanning the contact's QR: a match with the pinned key
  makes it VERIFIED; a match with the pending key accepts it as VERIFIED; an unknown contact
  is pinned as VERIFIED straight away (key exchange without the server); anything else is a
  :class:`QrMismatch` and changes nothing. :meth:`~TrustStore.mark_verified` is the explicit
  "I checked the safety number" for the pinned key.
* :meth:`~TrustStore.observe_device_list` with the contact's newest verified device list
  (signed by the pinned UIK): new and removed devices are info events, accepted silently; the
  list's chain point is kept as the pin for the next :func:`.records.verify_device_list_chain`.
* Self-monitoring: :meth:`~TrustStore.note_own_device_added` records each device one of my
  devices added (including my first device), and :meth:`~TrustStore.check_own_devices` raises
  a :class:`RogueDevice` alarm for every device on my own device-list history that none of
  them added, or whose key changed.

Levels are ordered UNVERIFIED < VERIFIED (org-verified comes with OrgAttest, later).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from momedod.protocol.encoding import Writer

from .identity import FP_LEN
from .records import DeviceList, DeviceListPin

__all__ = [
    "Contact",
    "DeviceAdded",
    "DeviceEvent",
    "DeviceRemoved",
    "DeviceReplaced",
    "IdentityEvent",
    "KeyChange",
    "Pinned",
    "QrMismatch",
    "RogueDevice",
    "TrustLevel",
    "TrustStore",
    "Unchanged",
    "Verified",
    "check_own_devices",
]

STORE_FORMAT: Final = 1
"""The ``format`` number of the JSON form."""


class TrustLevel(StrEnum):
    """How much a pinned identity key is trusted."""

    UNVERIFIED = "unverified"
    """Pinned on first sight from the server (TOFU)."""
    VERIFIED = "verified"
    """Checked in person: QR scanned or safety number confirmed."""


@dataclass
class Contact:
    """What we pinned for one contact. ``pending_fp`` is a changed identity key seen but not
    accepted yet; while it is set, sending is blocked."""

    user_id: str
    fp: bytes
    level: TrustLevel = TrustLevel.UNVERIFIED
    pending_fp: bytes | None = None
    device_list: DeviceListPin | None = None
    devices: dict[int, bytes] = field(default_factory=dict)
    """device_id -> dk_pub of the devices on the last accepted device list."""

    @property
    def blocked(self) -> bool:
        """True while an identity key change waits for the user."""
        return self.pending_fp is not None


# -- events ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pinned:
    """First sight of a contact: ``fp`` is now pinned (UNVERIFIED)."""

    user_id: str
    fp: bytes


@dataclass(frozen=True)
class Unchanged:
    """The contact's identity key is the pinned one."""

    user_id: str


@dataclass(frozen=True)
class KeyChange:
    """Hard warning: the contact's identity key is not the pinned one. Sending is blocked until
    the user accepts ``new_fp``. ``was_verified`` says the old key had been verified."""

    user_id: str
    old_fp: bytes
    new_fp: bytes
    was_verified: bool


@dataclass(frozen=True)
class Verified:
    """The contact's key ``fp`` is now VERIFIED."""

    user_id: str
    fp: bytes


@dataclass(frozen=True)
class QrMismatch:
    """The scanned QR code names another key than the one pinned (``expected_fp``) or pending:
    possibly an attack; nothing was changed."""

    user_id: str
    scanned_fp: bytes
    expected_fp: bytes


@dataclass(frozen=True)
class DeviceAdded:
    """Info: a device signed by the contact's pinned identity key appeared."""

    user_id: str
    device_id: int


@dataclass(frozen=True)
class DeviceRemoved:
    """Info: a device left the contact's device list."""

    user_id: str
    device_id: int


@dataclass(frozen=True)
class DeviceReplaced:
    """Warning: a device ID kept its number but got another key (normal clients never do
    this: a re-linked device gets a new ID)."""

    user_id: str
    device_id: int


@dataclass(frozen=True)
class RogueDevice:
    """Alarm (self-monitoring): a device on my own device list that none of my devices added
    (``reason`` "not added by me"), or whose key changed ("key changed")."""

    device_id: int
    version: int
    dk_pub: bytes
    reason: str


IdentityEvent = Pinned | Unchanged | KeyChange
"""What :meth:`TrustStore.observe_identity` returns."""
DeviceEvent = DeviceAdded | DeviceRemoved | DeviceReplaced
"""What :meth:`TrustStore.observe_device_list` returns."""


# -- self-monitoring -------------------------------------------------------------------------


def check_own_devices(history: Sequence[DeviceList], added: Collection[int]) -> list[RogueDevice]:
    """Return an alarm for every device on my device-list ``history`` (verified, oldest first)
    that is not in ``added`` (the devices my own devices added), once per device, at the first
    version where it appears; and for every listed device whose key changed between versions."""
    alarms: list[RogueDevice] = []
    keys: dict[int, bytes] = {}
    for dl in history:
        for entry in dl.entries:
            known = keys.get(entry.device_id)
            if known is None:
                keys[entry.device_id] = entry.dk_pub
                if entry.device_id not in added:
                    alarms.append(
                        RogueDevice(entry.device_id, dl.version, entry.dk_pub, "not added by me")
                    )
            elif known != entry.dk_pub:
                keys[entry.device_id] = entry.dk_pub
                alarms.append(RogueDevice(entry.device_id, dl.version, entry.dk_pub, "key changed"))
    return alarms


# -- the store -------------------------------------------------------------------------------


def _check_fp(fp: bytes) -> None:
    if len(fp) != FP_LEN:
        raise ValueError(f"a fingerprint is {FP_LEN} bytes, got {len(fp)}")


def _check_user_id(user_id: str) -> None:
    Writer().user_id(user_id)  # ValueError unless 8 Crockford base32 characters


class TrustStore:
    """Pinned contacts and the self-monitoring set of the local user (see the module doc)."""

    def __init__(self, contacts: Iterable[Contact] = (), own_added: Iterable[int] = ()) -> None:
        """Create a store (empty, or from saved contacts and added-device IDs)."""
        self._contacts: dict[str, Contact] = {c.user_id: c for c in contacts}
        self._own_added: set[int] = set(own_added)

    # contacts

    def contact(self, user_id: str) -> Contact | None:
        """Return the pin of ``user_id``, or None if never seen."""
        return self._contacts.get(user_id)

    @property
    def contacts(self) -> list[Contact]:
        """All pinned contacts, by user ID."""
        return [self._contacts[u] for u in sorted(self._contacts)]

    def can_send(self, user_id: str) -> bool:
        """True if ``user_id`` is pinned and no identity key change is pending."""
        c = self._contacts.get(user_id)
        return c is not None and not c.blocked

    def _get(self, user_id: str) -> Contact:
        c = self._contacts.get(user_id)
        if c is None:
            raise KeyError(f"no pinned contact {user_id}")
        return c

    def observe_identity(self, user_id: str, fp: bytes) -> IdentityEvent:
        """Report the newest verified identity FP of ``user_id`` (see the module doc)."""
        _check_user_id(user_id)
        _check_fp(fp)
        c = self._contacts.get(user_id)
        if c is None:
            self._contacts[user_id] = Contact(user_id, fp)
            return Pinned(user_id, fp)
        if c.pending_fp is not None:
            if fp != c.fp:
                c.pending_fp = fp
            return KeyChange(user_id, c.fp, c.pending_fp, was_verified=False)
        if fp == c.fp:
            return Unchanged(user_id)
        was_verified = c.level is TrustLevel.VERIFIED
        c.pending_fp = fp
        c.level = TrustLevel.UNVERIFIED
        return KeyChange(user_id, c.fp, fp, was_verified)

    def accept(self, user_id: str) -> bytes:
        """Accept the pending identity key of ``user_id`` (UNVERIFIED) and unblock sending.

        Returns the newly pinned FP; ValueError if no change is pending.
        """
        c = self._get(user_id)
        if c.pending_fp is None:
            raise ValueError(f"no identity key change pending for {user_id}")
        c.fp, c.pending_fp, c.level = c.pending_fp, None, TrustLevel.UNVERIFIED
        return c.fp

    def verify_qr(self, user_id: str, fp: bytes) -> Verified | QrMismatch:
        """Apply a scanned QR pin (``user_id``, ``fp``), e.g. from :func:`.safety.parse_qr`."""
        _check_user_id(user_id)
        _check_fp(fp)
        c = self._contacts.get(user_id)
        if c is None:
            self._contacts[user_id] = Contact(user_id, fp, TrustLevel.VERIFIED)
            return Verified(user_id, fp)
        if fp == c.pending_fp:
            c.fp, c.pending_fp = fp, None
        elif fp != c.fp:
            return QrMismatch(user_id, fp, c.fp)
        c.level = TrustLevel.VERIFIED
        return Verified(user_id, fp)

    def mark_verified(self, user_id: str) -> Verified:
        """Mark the pinned key VERIFIED (the user compared the safety number).

        ValueError while a key change is pending: accept it (or scan the QR) first.
        """
        c = self._get(user_id)
        if c.pending_fp is not None:
            raise ValueError(f"identity key of {user_id} changed: accept the new key first")
        c.level = TrustLevel.VERIFIED
        return Verified(user_id, c.fp)

    def observe_device_list(self, device_list: DeviceList) -> list[DeviceEvent]:
        """Report a contact's newest verified device list; returns the info events.

        The list must be signed by the pinned UIK or by the pending one (then only the chain
        pin moves: its devices are reported once the key is accepted). ValueError if it is
        signed by another key or older than the pinned list.
        """
        c = self._get(device_list.user_id)
        if device_list.signer_fp not in (c.fp, c.pending_fp):
            raise ValueError("device list is not signed by the pinned or pending identity key")
        if c.device_list is not None and device_list.version < c.device_list.version:
            raise ValueError("device list is older than the pinned one")
        c.device_list = device_list.pin
        if device_list.signer_fp != c.fp:
            return []
        new = {e.device_id: e.dk_pub for e in device_list.entries}
        events: list[DeviceEvent] = []
        for device_id in sorted(new.keys() | c.devices.keys()):
            old_key, new_key = c.devices.get(device_id), new.get(device_id)
            if old_key is None:
                events.append(DeviceAdded(c.user_id, device_id))
            elif new_key is None:
                events.append(DeviceRemoved(c.user_id, device_id))
            elif old_key != new_key:
                events.append(DeviceReplaced(c.user_id, device_id))
        c.devices = new
        return events

    def device_list_pin(self, user_id: str) -> DeviceListPin | None:
        """The chain point to pass to :func:`.records.verify_device_list_chain`."""
        c = self._contacts.get(user_id)
        return c.device_list if c else None

    # self-monitoring

    @property
    def own_added(self) -> frozenset[int]:
        """The IDs of the devices my own devices added."""
        return frozenset(self._own_added)

    def note_own_device_added(self, device_id: int) -> None:
        """Record that one of my devices added ``device_id`` to my device list."""
        if not 1 <= device_id <= 0xFFFF_FFFF:
            raise ValueError(f"device_id out of range: {device_id}")
        self._own_added.add(device_id)

    def check_own_devices(self, history: Sequence[DeviceList]) -> list[RogueDevice]:
        """Alarms for my own device-list history (see :func:`check_own_devices`)."""
        return check_own_devices(history, self._own_added)

    # JSON

    def to_json(self) -> str:
        """Return the store as JSON (fingerprints and keys in lower-case hex)."""
        contacts: dict[str, Any] = {}
        for c in self.contacts:
            pin = c.device_list
            contacts[c.user_id] = {
                "fp": c.fp.hex(),
                "level": c.level.value,
                "pending_fp": c.pending_fp.hex() if c.pending_fp else None,
                "device_list": {"version": pin.version, "hash": pin.list_hash.hex()}
                if pin
                else None,
                "devices": {str(d): k.hex() for d, k in sorted(c.devices.items())},
            }
        doc = {"format": STORE_FORMAT, "contacts": contacts, "own_added": sorted(self._own_added)}
        return json.dumps(doc, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrustStore:
        """Load a store saved by :meth:`to_json`; ValueError if it is not one."""
        try:
            doc = json.loads(text)
            if doc["format"] != STORE_FORMAT:
                raise ValueError(f"unsupported trust store format {doc['format']!r}")
            contacts = [_contact_from(uid, c) for uid, c in doc["contacts"].items()]
            own = [_int(d) for d in doc["own_added"]]
            store = cls(contacts, own)
            for d in own:
                store.note_own_device_added(d)  # range check
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a trust store: {exc!r}") from None
        return store


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def _hex(value: object, length: int) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"expected hex, got {value!r}")
    data = bytes.fromhex(value)
    if len(data) != length:
        raise ValueError(f"expected {length} bytes of hex, got {len(data)}")
    return data


def _contact_from(user_id: str, c: dict[str, Any]) -> Contact:
    _check_user_id(user_id)
    pin = c["device_list"]
    pending = c["pending_fp"]
    devices = {_int(int(d)): _hex(k, 32) for d, k in c["devices"].items()}
    return Contact(
        user_id,
        _hex(c["fp"], FP_LEN),
        TrustLevel(c["level"]),
        _hex(pending, FP_LEN) if pending is not None else None,
        DeviceListPin(_int(pin["version"]), _hex(pin["hash"], FP_LEN)) if pin else None,
        devices,
    )
