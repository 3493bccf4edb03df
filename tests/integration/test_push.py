"""Push wake-ups against the real daemon, with a local HTTP server as the push distributor."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from pathlib import Path
from zoneinfo import ZoneInfo

import h11
import pytest
import trio
from support import Server, make_config, new_message_id

from momedod.client.transport import ServerError, connect, open_client
from momedod.config import PushConfig, QuietHoursConfig
from momedod.e2e.envelope import Addr
from momedod.e2e.event import EVENT_HELD, is_conv_event, parse_conv_event
from momedod.e2e.identity import DeviceKey
from momedod.e2e.roster import KIND_CHANNEL, ROLE_ADMIN, ROLE_MEMBER, Roster, sign_roster_device
from momedod.observability import metrics
from momedod.protocol import frames as f
from momedod.protocol.errors import ErrorCode
from momedod.server.daemon import serve


@dataclass
class Receiver:
    """A push distributor on loopback: records each request, answers from ``statuses``."""

    port: int = 0
    requests: list[tuple[str, bytes]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)  # consumed in order; then 200
    delay: float = 0.0
    got: trio.Event = field(default_factory=trio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/up/abc123"

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        with trio.move_on_after(30):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    conn.receive_data(data)
                    if not data:
                        return
                    continue
                if isinstance(event, h11.Request):
                    target, body = event.target.decode(), b""
                    while not isinstance(ev := conn.next_event(), h11.EndOfMessage):
                        if ev is h11.NEED_DATA:
                            conn.receive_data(await stream.receive_some(65536))
                        elif isinstance(ev, h11.Data):
                            body += ev.data
                    self.requests.append((target, body))
                    self.got.set()
                    self.got = trio.Event()
                    await trio.sleep(self.delay)
                    status = self.statuses.pop(0) if self.statuses else 200
                    reply = b"{}"
                    await stream.send_all(
                        conn.send(
                            h11.Response(
                                status_code=status, headers=[("Content-Length", str(len(reply)))]
                            )
                        )
                        + conn.send(h11.Data(data=reply))
                        + conn.send(h11.EndOfMessage())
                    )
                    conn.start_next_cycle()
                    continue
                return

    async def wait(self, count: int, timeout: float = 5.0) -> None:
        with trio.fail_after(timeout):
            while len(self.requests) < count:
                await self.got.wait()


@pytest.fixture
async def receiver(nursery: trio.Nursery) -> Receiver:
    rec = Receiver()
    listeners = await nursery.start(partial(trio.serve_tcp, host="127.0.0.1"), rec.handle, 0)
    rec.port = listeners[0].socket.getsockname()[1]
    return rec


async def push_server(
    nursery: trio.Nursery, tmp_path: Path, receiver: Receiver, **push: object
) -> Server:
    settings: dict[str, object] = {
        "allowed_hosts": (f"http://127.0.0.1:{receiver.port}",),
        "coalesce_seconds": 2.0,
        "retry_seconds": 0.05,
        "retry_max_seconds": 0.2,
        "timeout": 2.0,
    }
    settings.update(push)
    config = replace(make_config(tmp_path / "state"), push=replace(PushConfig(), **settings))
    daemon = await nursery.start(serve, config)
    return Server(daemon, config.server.state_dir)


async def sleeping_phone(server: Server, name: str, target: str) -> object:
    creds = await server.enroll(name)
    async with connect(creds) as c:
        await c.push_set(f.PUSH_UNIFIEDPUSH, target, f.DEVICE_MOBILE)
    return creds


async def test_offline_message_wakes_the_device_once_and_without_content(
    nursery, tmp_path, receiver
):
    server = await push_server(nursery, tmp_path, receiver)
    alice = await server.enroll("Alice Sender")
    bob = await sleeping_phone(server, "Bob Phone", receiver.url)
    sent = [new_message_id() for _ in range(10)]
    async with connect(alice) as a:
        for i, mid in enumerate(sent):
            await a.send(
                mid, f"secret text {i}".encode(), [f.Recipient(bob.user_id, bob.device_id, b"")]
            )
    await receiver.wait(1)
    await trio.sleep(0.5)  # nothing else comes within the coalescing interval
    assert len(receiver.requests) == 1
    path, body = receiver.requests[0]
    assert path == "/up/abc123"
    doc = json.loads(body)
    assert list(doc) == ["momedo"] and len(doc["momedo"]) == 32  # a random id, nothing else
    for secret in (b"secret", b"Alice", b"Bob", alice.user_id.encode(), bob.user_id.encode()):
        assert secret not in body
    async with connect(bob) as b:
        got = []
        while len(got) < 10:
            frame = await b.receive(5)
            if isinstance(frame, f.Deliver):
                got.append(frame.message_id)
    assert got == sent


async def test_wakeups_are_retried_after_5xx_and_a_410_drops_the_target(
    nursery, tmp_path, receiver
):
    server = await push_server(nursery, tmp_path, receiver, coalesce_seconds=0.2)
    alice = await server.enroll("Alice")
    bob = await sleeping_phone(server, "Bob", receiver.url)
    retries = metrics.PUSH_RETRIES._value.get()
    receiver.statuses = [500, 503, 200]
    async with connect(alice) as a:
        to_bob = [f.Recipient(bob.user_id, bob.device_id, b"")]
        await a.send(new_message_id(), b"x", to_bob)
        await receiver.wait(3)
        assert metrics.PUSH_RETRIES._value.get() - retries == 2
        await trio.sleep(0.3)
        # A distributor that stalls does not hold up message acceptance.
        receiver.delay, receiver.statuses = 1.0, [410]
        start = trio.current_time()
        await a.send(new_message_id(), b"y", to_bob)
        assert trio.current_time() - start < 0.5
        await receiver.wait(4)
        receiver.delay = 0.0
        with trio.fail_after(5):  # the 410 answer arrives, the target is dropped
            while await server.daemon.store.get_push_target(bob.user_id, bob.device_id) is not None:
                await trio.sleep(0.02)
        await a.send(new_message_id(), b"z", to_bob)
        await trio.sleep(0.4)
        assert len(receiver.requests) == 4  # no target, no wake-up
    async with connect(bob) as b:
        await b.ping()
        assert b.push_dropped is not None and b.push_dropped.status == 410
    async with connect(bob) as b:  # reported once
        await b.ping()
        assert b.push_dropped is None


async def test_push_target_outside_allowed_hosts_is_refused_at_registration(
    nursery, tmp_path, receiver
):
    server = await push_server(nursery, tmp_path, receiver, allowed_hosts=("ntfy.example.org",))
    async with server.enrolled("Bob") as (bob, _creds):
        for url, words in [
            ("https://169.254.169.254/latest/meta-data", "not allowed"),
            ("http://localhost:8080/admin", "not allowed"),
            ("http://ntfy.example.org/up123", "https only"),
            ("https://user:pw@ntfy.example.org/up123", "user name"),
            ("file:///etc/passwd", "https://"),
        ]:
            with pytest.raises(ServerError) as info:
                await bob.push_set(f.PUSH_UNIFIEDPUSH, url)
            assert info.value.code == ErrorCode.FORBIDDEN and words in info.value.message, url
        with pytest.raises(ServerError) as info:
            await bob.push_set(f.PUSH_GATEWAY, "token-1")
        assert "no push gateway" in info.value.message
        await bob.push_set(f.PUSH_UNIFIEDPUSH, "https://ntfy.example.org/up123")
        await bob.push_set(f.PUSH_UNIFIEDPUSH, "https://NTFY.example.org:443/other")
        await bob.push_clear()


async def test_gateway_wakeup_carries_only_the_token_and_revocation_deletes_the_target(
    nursery, tmp_path, receiver
):
    gateway = f"http://127.0.0.1:{receiver.port}/_matrix/push/v1/notify"
    server = await push_server(nursery, tmp_path, receiver, allowed_hosts=(), gateway_url=gateway)
    alice = await server.enroll("Alice")
    bob = await server.enroll("Bob")
    async with connect(bob) as b:
        await b.push_set(f.PUSH_GATEWAY, "opaque-device-token")
    async with connect(alice) as a:
        await a.send(new_message_id(), b"hi", [f.Recipient(bob.user_id, bob.device_id, b"")])
        await receiver.wait(1)
    path, body = receiver.requests[0]
    assert path == "/_matrix/push/v1/notify"
    note = json.loads(body)["notification"]
    assert set(note) == {"event_id", "prio", "devices"}
    assert note["devices"] == [{"app_id": "momedo", "pushkey": "opaque-device-token"}]
    assert bob.user_id.encode() not in body
    await server.admin("device.revoke", user_id=bob.user_id, device_id=bob.device_id)
    targets, _ = await server.daemon.store.list_push_targets()
    assert targets == []


# --- quiet hours ---------------------------------------------------------------------------

BERLIN = ZoneInfo("Europe/Berlin")
DK = DeviceKey(b"\x07" * 32)  # the server does not check device signatures; clients do


class Clock:
    """The daemon's wall clock for quiet hours, moved by the test."""

    def __init__(self, when: datetime) -> None:
        self.now = when.timestamp()

    def set(self, when: datetime) -> None:
        self.now = when.timestamp()

    def __call__(self) -> float:
        return self.now


async def nothing_for(client, seconds: float) -> None:
    with trio.move_on_after(seconds):
        while isinstance(frame := await client.receive(), f.Drained):
            pass
        raise AssertionError(f"unexpected {frame}")


async def next_deliver(client, timeout: float = 5.0, *, event: bool = False) -> f.Deliver:
    """The next message (or with ``event``: server event), acknowledged."""
    while True:
        frame = await client.receive(timeout)
        if isinstance(frame, f.Deliver):
            await client.ack([frame.seq])
            if is_conv_event(frame.payload) == event:
                return frame


async def test_quiet_hours_hold_phone_wakeups_and_deliveries_urgent_passes(
    nursery, tmp_path, receiver
):
    clock = Clock(datetime(2026, 11, 30, 19, 0, tzinfo=BERLIN))  # a Monday evening
    settings = {"allowed_hosts": (f"http://127.0.0.1:{receiver.port}",), "coalesce_seconds": 0.2}
    config = replace(make_config(tmp_path / "state"), push=replace(PushConfig(), **settings))
    daemon = await nursery.start(partial(serve, config, clock=clock))
    server = Server(daemon, config.server.state_dir)
    alice = await server.enroll("Alice")
    phone = await server.enroll("Bob")
    async with connect(phone) as p:
        await p.push_set(f.PUSH_UNIFIEDPUSH, receiver.url, f.DEVICE_MOBILE)
        code, _ = await p.link_invite(600)
    async with open_client(*server.address, server.fingerprint) as c:
        _uid, did, seed = await c.enroll(code, "office desktop")
    desktop = replace(phone, device_id=did, transport_seed=seed)
    bob = [f.Recipient(phone.user_id, d, b"") for d in (phone.device_id, did)]
    # The operator: Bob's working window, and an emergency channel that may send urgent.
    result = await server.admin(
        "quiet.set",
        name="staff",
        window="Mon-Fri 07:00-18:00 Europe/Berlin",
        defer_delivery=True,
        users=[phone.user_id],
    )
    assert result["policy"]["window"] == "Mon-Fri 07:00-18:00 Europe/Berlin"
    listed = await server.admin("quiet.list")
    assert [(x["name"], x["open_now"]) for x in listed["policies"]] == [("staff", False)]
    conv_id = secrets.token_bytes(16)
    members = {alice.user_id: ROLE_ADMIN, phone.user_id: ROLE_MEMBER}
    roster = Roster.first(conv_id, KIND_CHANNEL, members, "Notfall")
    record = sign_roster_device(roster, Addr(alice.user_id, alice.device_id), DK)
    async with connect(alice) as a:
        await a.request(f.ConvPut(a.next_id(), conv_id, record))
    await server.admin("urgent.set", group=conv_id.hex(), allowed=True)

    async with connect(alice) as a, connect(desktop) as d:
        async with connect(phone) as p:
            # 19:00: the desktop gets a normal message, the phone does not.
            m1 = new_message_id()
            await a.send(m1, b"tomorrow's meeting", bob)
            assert (await next_deliver(d)).message_id == m1
            await nothing_for(p, 0.8)
            # The sender is told (a status, not content): delivered after quiet hours.
            event = parse_conv_event((await next_deliver(a, event=True)).payload)
            assert event.what == EVENT_HELD and event.conv_id == m1
            assert event.epoch == datetime(2026, 12, 1, 7, 0, tzinfo=BERLIN).timestamp() * 1000
            # An urgent post in the allowed channel reaches the phone at once.
            u1 = new_message_id()
            await a.conv_send(u1, conv_id, b"water pipe burst", [], urgent=True)
            got = await next_deliver(p)
            assert isinstance(got, f.DeliverUrgent) and got.message_id == u1
        # The phone sleeps: a normal message wakes nothing, an urgent one does.
        m2 = new_message_id()
        await a.send(m2, b"minutes attached", bob)
        await trio.sleep(0.8)
        assert receiver.requests == []
        u2 = new_message_id()
        await a.conv_send(u2, conv_id, b"school closed tomorrow", [], urgent=True)
        await receiver.wait(1)
        # An urgent flag from a sender nobody allowed is refused.
        with pytest.raises(ServerError) as info:
            await a.send(new_message_id(), b"urgent?!", bob, urgent=True)
        assert info.value.code == ErrorCode.FORBIDDEN
    # 07:00 on Tuesday: the held wake-up goes out, and the phone gets everything.
    clock.set(datetime(2026, 12, 1, 7, 0, tzinfo=BERLIN))
    await receiver.wait(2, timeout=3)
    async with connect(phone) as p:
        got_ids = set()
        while not {m1, m2, u2} <= got_ids:
            got_ids.add((await next_deliver(p)).message_id)
    assert len(receiver.requests) == 2
    assert (await server.admin("quiet.list"))["policies"][0]["open_now"] is True


async def test_deferred_messages_reach_a_connected_phone_when_the_window_opens(
    nursery, tmp_path, receiver
):
    clock = Clock(datetime(2026, 12, 4, 17, 59, tzinfo=BERLIN))  # Friday, just before 18:00
    quiet = QuietHoursConfig(name="all", days="Mon-Fri", defer_delivery=True)
    config = replace(
        make_config(tmp_path / "state"),
        push=replace(PushConfig(), **{"allowed_hosts": (f"http://127.0.0.1:{receiver.port}",)}),
    )
    daemon = await nursery.start(partial(serve, config, clock=clock))
    server = Server(daemon, config.server.state_dir)
    alice_creds = await server.enroll("Alice")
    phone = await server.enroll("Bob")
    daemon.quiet.configure([replace(quiet, users=(phone.user_id,))])
    await daemon.quiet_refresh()
    async with connect(alice_creds) as a, connect(phone) as p:
        await p.push_set(f.PUSH_UNIFIEDPUSH, receiver.url, f.DEVICE_MOBILE)
        to_phone = [f.Recipient(phone.user_id, phone.device_id, b"")]
        m1 = new_message_id()
        await a.send(m1, b"before six", to_phone)
        assert (await next_deliver(p)).message_id == m1
        clock.set(datetime(2026, 12, 4, 18, 0, tzinfo=BERLIN))
        m2 = new_message_id()
        await a.send(m2, b"after six", to_phone)
        await nothing_for(p, 0.8)
        clock.set(datetime(2026, 12, 7, 7, 0, tzinfo=BERLIN))  # Monday morning
        assert (await next_deliver(p, timeout=3)).message_id == m2


async def test_a_users_own_quiet_hours_only_narrow_the_operators(nursery, tmp_path):
    clock = Clock(datetime(2026, 12, 1, 17, 0, tzinfo=BERLIN))  # Tuesday 17:00
    config = make_config(tmp_path / "state")
    daemon = await nursery.start(partial(serve, config, clock=clock))
    server = Server(daemon, config.server.state_dir)
    bob = await server.enroll("Bob")
    window = "Mon-Fri 07:00-18:00 Europe/Berlin"
    await server.admin("quiet.set", name="staff", window=window, users=[bob.user_id])
    assert not daemon.quiet.state(bob.user_id).quiet
    async with connect(bob) as b:
        await b.quiet_set(0b11111, 8 * 60, 16 * 60, "Europe/Berlin")  # Mon-Fri 08:00-16:00
        state = daemon.quiet.state(bob.user_id)
        assert (
            state.quiet and state.opens_at == datetime(2026, 12, 2, 8, 0, tzinfo=BERLIN).timestamp()
        )
        await b.quiet_set(0b1111111, 0, 24 * 60, "Europe/Berlin")  # "always": cannot widen
        clock.set(datetime(2026, 12, 1, 19, 0, tzinfo=BERLIN))
        assert daemon.quiet.state(bob.user_id).quiet  # the operator's 18:00 still holds
        with pytest.raises(ServerError) as info:
            await b.quiet_set(1, 10 * 60, 9 * 60, "Europe/Berlin")
        assert info.value.code == ErrorCode.BAD_REQUEST and "earlier" in info.value.message
        listed = (await server.admin("quiet.list"))["policies"]
        assert [(p["name"], p["source"]) for p in listed] == [
            ("staff", "operator"),
            (f"user:{bob.user_id}", "user"),
        ]
        await b.quiet_set(0, 0, 0, "")
    assert [p["name"] for p in (await server.admin("quiet.list"))["policies"]] == ["staff"]
    with pytest.raises(Exception, match="own settings"):
        await server.admin("quiet.set", name=f"user:{bob.user_id}", window=window)
