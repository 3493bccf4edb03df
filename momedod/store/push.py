"""Transaction functions for push targets, the urgent allow-lists and the operator's
quiet-hours policies (migration version 5).

Kept apart from :mod:`momedod.store.txn`: nothing there touches these tables except device
revocation and user deletion, which delete a device's push target with its other state.
"""

from __future__ import annotations

from momedod.store.base import NotFound, PushTarget, display_device
from momedod.store.txn import MAX_INT64, Tx

_ACTIVE = (
    "SELECT p.device_pk FROM push_targets p JOIN devices d ON d.pk = p.device_pk"
    " JOIN users u ON u.user_id = d.user_id"
    " WHERE d.revoked_ms IS NULL AND u.deleted = 0 AND u.disabled = 0"
)


def _live_device_pk(tx: Tx, user_id: str, device_id: int) -> int:
    if not 0 <= device_id <= MAX_INT64:
        raise NotFound(f"no device {display_device(user_id, device_id)}")
    row = tx.one(
        "SELECT d.pk FROM devices d JOIN users u ON u.user_id = d.user_id"
        " WHERE d.user_id = ? AND d.device_id = ? AND d.revoked_ms IS NULL AND u.deleted = 0",
        (user_id, device_id),
    )
    if row is None:
        raise NotFound(f"no device {display_device(user_id, device_id)}")
    return int(row[0])


def set_push_target(
    tx: Tx, user_id: str, device_id: int, kind: int, device_kind: int, target: str, now_ms: int
) -> None:
    """Store the device's target, replacing an earlier one (and a pending drop report)."""
    pk = _live_device_pk(tx, user_id, device_id)
    tx.execute(
        "INSERT INTO push_targets (device_pk, kind, device_kind, target, created_ms)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (device_pk) DO UPDATE SET kind = excluded.kind,"
        " device_kind = excluded.device_kind, target = excluded.target,"
        " created_ms = excluded.created_ms, dropped_ms = NULL, drop_status = NULL",
        (pk, kind, device_kind, target, now_ms),
    )


def clear_push_target(tx: Tx, user_id: str, device_id: int) -> bool:
    """Forget the device's target (and a pending drop report); True if there was one."""
    pk = _live_device_pk(tx, user_id, device_id)
    return tx.execute("DELETE FROM push_targets WHERE device_pk = ?", (pk,)) > 0


_COLS = "d.user_id, d.device_id, p.kind, p.device_kind, p.target, p.created_ms"


def _target(row: tuple[object, ...]) -> PushTarget:
    return PushTarget(
        str(row[0]),
        int(str(row[1])),
        int(str(row[2])),
        int(str(row[3])),
        str(row[4]),
        int(str(row[5])),
    )


def get_push_target(tx: Tx, user_id: str, device_id: int) -> PushTarget | None:
    """The device's target, unless it was dropped or the device may not receive."""
    row = tx.one(
        f"SELECT {_COLS} FROM push_targets p JOIN devices d ON d.pk = p.device_pk"
        f" WHERE p.device_pk IN ({_ACTIVE}) AND d.user_id = ? AND d.device_id = ?"
        " AND p.target IS NOT NULL",
        (user_id, device_id),
    )
    return None if row is None else _target(row)


def list_push_targets(tx: Tx) -> tuple[list[PushTarget], list[tuple[str, int]]]:
    """Every usable target, and the devices with a drop report waiting."""
    rows = tx.all(
        f"SELECT {_COLS}, p.dropped_ms FROM push_targets p JOIN devices d ON d.pk = p.device_pk"
        f" WHERE p.device_pk IN ({_ACTIVE})"
    )
    targets = [_target(r) for r in rows if r[4] is not None]
    dropped = [(str(r[0]), int(r[1])) for r in rows if r[6] is not None]
    return targets, dropped


def drop_push_target(
    tx: Tx, user_id: str, device_id: int, target: str, status: int, now_ms: int
) -> bool:
    """Give up on ``target`` (if it is still the device's target); True if it was."""
    return (
        tx.execute(
            "UPDATE push_targets SET target = NULL, dropped_ms = ?, drop_status = ?"
            " WHERE target = ? AND device_pk ="
            " (SELECT pk FROM devices WHERE user_id = ? AND device_id = ?)",
            (now_ms, status, target, user_id, device_id),
        )
        > 0
    )


def take_push_dropped(tx: Tx, user_id: str, device_id: int) -> tuple[int, int, int] | None:
    """The pending drop report ``(kind, status, dropped_ms)`` of the device, deleting it."""
    row = tx.one(
        "DELETE FROM push_targets WHERE dropped_ms IS NOT NULL AND device_pk ="
        " (SELECT pk FROM devices WHERE user_id = ? AND device_id = ?)"
        " RETURNING kind, drop_status, dropped_ms",
        (user_id, device_id),
    )
    return None if row is None else (int(row[0]), int(row[1]), int(row[2]))


# -- urgent allow-lists and operator quiet-hours policies --------------------------------------


def set_urgent(tx: Tx, user_id: str | None, conv_id: bytes | None, allowed: bool) -> None:
    """Add or remove a user or conversation on the urgent allow-list."""
    table, key = ("urgent_users", user_id) if conv_id is None else ("urgent_convs", conv_id)
    column = "user_id" if conv_id is None else "conv_id"
    if allowed:
        tx.execute(f"INSERT INTO {table} ({column}) VALUES (?) ON CONFLICT DO NOTHING", (key,))
    else:
        tx.execute(f"DELETE FROM {table} WHERE {column} = ?", (key,))


def may_send_urgent(tx: Tx, user_id: str, conv_id: bytes | None) -> bool:
    """True if the user or the conversation is on the allow-list."""
    if tx.one("SELECT 1 FROM urgent_users WHERE user_id = ?", (user_id,)) is not None:
        return True
    return (
        conv_id is not None
        and tx.one("SELECT 1 FROM urgent_convs WHERE conv_id = ?", (conv_id,)) is not None
    )


def list_urgent(tx: Tx) -> tuple[list[str], list[bytes]]:
    """Allowed users and conversations."""
    users = [str(r[0]) for r in tx.all("SELECT user_id FROM urgent_users ORDER BY user_id")]
    convs = [bytes(r[0]) for r in tx.all("SELECT conv_id FROM urgent_convs ORDER BY conv_id")]
    return users, convs


def put_quiet_policy(tx: Tx, name: str, spec: str, now_ms: int) -> None:
    """Insert or replace a policy."""
    tx.execute(
        "INSERT INTO quiet_policies (name, spec, created_ms) VALUES (?, ?, ?)"
        " ON CONFLICT (name) DO UPDATE SET spec = excluded.spec",
        (name, spec, now_ms),
    )


def delete_quiet_policy(tx: Tx, name: str) -> bool:
    """Delete a policy; True if it existed."""
    return tx.execute("DELETE FROM quiet_policies WHERE name = ?", (name,)) > 0


def list_quiet_policies(tx: Tx) -> list[tuple[str, str]]:
    """All policies by name."""
    return [
        (str(r[0]), str(r[1]))
        for r in tx.all("SELECT name, spec FROM quiet_policies ORDER BY name")
    ]
