"""The daemon's ClockWatch tells a wall-clock step from elapsed time (monotonic clock)."""

from __future__ import annotations

from momedod.server.daemon import CLOCK_STEP_MS, ClockWatch

T0 = 1_767_225_600_000


def test_steady_clock_and_ntp_slew_are_no_step() -> None:
    watch = ClockWatch(T0, 100.0)
    assert watch.step(T0 + 10_000, 110.0)[0] == 0
    step, _ = watch.step(T0 + 20_050, 120.0)  # 50 ms of slew
    assert abs(step) <= CLOCK_STEP_MS


def test_forward_step_is_measured_and_dated() -> None:
    watch = ClockWatch(T0, 100.0)
    jump = 365 * 86_400_000
    step, before = watch.step(T0 + 10_000 + jump, 110.0)
    assert step == jump
    assert before == T0 + 10_001  # stamps written before the step are below this
    assert watch.step(T0 + 20_000 + jump, 120.0)[0] == 0  # measured from the new time on


def test_backward_step_is_negative() -> None:
    watch = ClockWatch(T0, 100.0)
    assert watch.step(T0 - 3_600_000, 110.0)[0] == -3_610_000
