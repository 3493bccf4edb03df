"""The client's Seal replay guard under clock jumps (time is passed in, so jumps are explicit).

A backward jump cannot make a replay pass: the remembered msg_id is still there. A forward
jump beyond 35 days followed by a jump back cannot either: pruning at the far-future time
forgets the msg_id, but it raises the guard's floor, and back at the real time the replayed
Seal's ts_ms is below that floor (rejected as stale). The floor survives a save and restore.
"""

from __future__ import annotations

import pytest

from momedod.e2e.envelope import Addr
from momedod.e2e.errors import E2EError
from momedod.e2e.seal import DAY_MS, SealReplayGuard

NOW = 1_767_225_600_000
SENDER = Addr("M8N22HTR", 1)
MSG = b"\x01" * 16


@pytest.mark.parametrize("back_days", [1, 20, 40])
def test_replay_after_backward_jump_is_rejected(back_days: int) -> None:
    guard = SealReplayGuard()
    guard.accept(SENDER, MSG, NOW, NOW)
    guard.prune(NOW - back_days * DAY_MS)
    with pytest.raises(E2EError):
        guard.accept(SENDER, MSG, NOW, NOW - back_days * DAY_MS)


def test_replay_after_forward_then_backward_jump_is_rejected() -> None:
    guard = SealReplayGuard()
    guard.accept(SENDER, MSG, NOW, NOW)
    guard.prune(NOW + 36 * DAY_MS)  # the device's clock was set 36 days ahead for a while
    with pytest.raises(E2EError):
        guard.accept(SENDER, MSG, NOW, NOW)  # back at the real time: the server replays it


def test_floor_survives_save_and_restore() -> None:
    guard = SealReplayGuard()
    guard.accept(SENDER, MSG, NOW, NOW)
    guard.prune(NOW + 36 * DAY_MS)
    restored = SealReplayGuard.from_bytes(guard.to_bytes())
    with pytest.raises(E2EError):
        restored.accept(SENDER, MSG, NOW, NOW)


def test_steady_clock_floor_does_not_reject_fresh_messages() -> None:
    guard = SealReplayGuard()
    guard.accept(SENDER, MSG, NOW, NOW)
    later = NOW + 40 * DAY_MS
    guard.prune(later)
    guard.accept(SENDER, b"\x02" * 16, later - 29 * DAY_MS, later)
