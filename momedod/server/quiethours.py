"""The quiet-hours policies in force, and each user's state under them.

Policies come from the TOML (``[[quiet_hours]]``, read-only) and from the operator
(``momedoctl quiet ...``, in the store). A policy applies to the users it names and to the
members of the organisation groups it names; the user -> policies map is rebuilt on start,
after every operator change, and every ``REFRESH_SECONDS`` (group membership changes). The
hot path (:meth:`QuietHours.state`) is a dictionary lookup plus a time-zone calculation.
The clock is injected, so tests can stand at 19:00 and then at 07:00.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterable

import structlog
import trio

from momedod.config import QuietHoursConfig, quiet_policy
from momedod.quiet import DAY_NAMES, OPEN, QuietPolicy, QuietState, evaluate
from momedod.store import Store, StoreError

log = structlog.get_logger("momedod.quiet")

REFRESH_SECONDS = 60.0
USER_PREFIX = "user:"  # stored name of a user's own setting: "user:" + canonical user ID


def policy_from_spec(name: str, spec: str) -> QuietPolicy:
    """A stored policy (a JSON object of the ``[[quiet_hours]]`` keys): an operator's, or
    a user's own (named ``user:USERID``; it can only narrow, being one more policy)."""
    fields = json.loads(spec)
    fields["users"] = tuple(fields.get("users", ()))
    fields["groups"] = tuple(fields.get("groups", ()))
    source = "user" if name.startswith(USER_PREFIX) else "operator"
    return dataclasses.replace(quiet_policy(QuietHoursConfig(name=name, **fields)), source=source)


def user_spec(user_id: str, days: int, start: int, end: int, timezone: str, defer: bool) -> str:
    """The stored form of a user's own setting (QUIET_SET). Raises ValueError."""
    spec = {
        "days": ",".join(DAY_NAMES[d] for d in range(7) if days >> d & 1),
        "start": f"{start // 60:02d}:{start % 60:02d}",
        "end": f"{end // 60:02d}:{end % 60:02d}",
        "timezone": timezone,
        "defer_delivery": defer,
        "users": [user_id],
    }
    text = json.dumps(spec, sort_keys=True)
    policy_from_spec(USER_PREFIX + user_id, text)  # validates
    return text


class QuietHours:
    """Policies and the users they apply to."""

    def __init__(
        self,
        store: Store,
        config: Iterable[QuietHoursConfig],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.clock = clock
        self.configure(config)
        self.operator: list[QuietPolicy] = []
        self._by_user: dict[str, tuple[QuietPolicy, ...]] = {}

    def configure(self, config: Iterable[QuietHoursConfig]) -> None:
        """Take the TOML policies (validated by the config loader)."""
        self.from_config = [quiet_policy(qc) for qc in config]

    @property
    def policies(self) -> list[QuietPolicy]:
        """Every policy in force: the TOML ones first."""
        return [*self.from_config, *self.operator]

    def state(self, user_id: str) -> QuietState:
        """The user's state now."""
        policies = self._by_user.get(user_id)
        return OPEN if not policies else evaluate(policies, self.clock())

    async def refresh(self) -> None:
        """Reload the operator's policies and resolve group names to members."""
        operator = []
        for name, spec in await self.store.list_quiet_policies():
            try:
                operator.append(policy_from_spec(name, spec))
            except (ValueError, TypeError) as e:
                log.error("quiet.bad_policy", policy=name, error=str(e))
        self.operator = operator
        policies = self.policies
        wanted = {g for p in policies for g in p.groups}
        members: dict[str, list[str]] = {}
        if wanted:
            for summary in await self.store.list_conversations():
                if summary.name in wanted:
                    conv = await self.store.get_conversation(summary.conv_id)
                    if conv is not None:
                        members[summary.name] = [uid for uid, _role in conv.members]
        by_user: dict[str, list[QuietPolicy]] = {}
        for p in policies:
            users = set(p.users)
            for g in p.groups:
                users.update(members.get(g, ()))
            for uid in users:
                by_user.setdefault(uid, []).append(p)
        self._by_user = {uid: tuple(ps) for uid, ps in by_user.items()}

    async def run(self) -> None:
        """Refresh every REFRESH_SECONDS (the daemon refreshes once before it serves)."""
        while True:
            await trio.sleep(REFRESH_SECONDS)
            try:
                await self.refresh()
            except StoreError as e:
                log.warning("quiet.refresh_failed", error=str(e))
