"""Clients that know several server addresses and fail over (issue 10, client side).

One real daemon over TLS on loopback and, in front of it, two small TCP forwarders on their
own ports: two "nodes" serving the same store. The invite lists both forwarders
(``[server] public_addresses``); the tests stop a forwarder before or during a session.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import trio
from support import VENV_BIN, Server, make_config

from momedod.client import messenger as m
from momedod.client import transport
from momedod.client.profile import Profile, open_profile
from momedod.client.transport import (
    Backoff,
    ClientError,
    Credentials,
    PinMismatch,
    connect,
    connect_invite,
)
from momedod.protocol.invite import fingerprint_text, format_address, parse_invite_link
from momedod.protocol.userid import normalize
from momedod.server.daemon import serve

FAST = Backoff(0.05, 0.2)


@dataclass
class Forwarder:
    """A TCP forwarder to the daemon: one "node". ``kill()`` closes its listener and every
    connection through it at once, like a node that dies."""

    target: tuple[str, int]
    port: int = 0
    connections: int = 0
    total: int = 0
    _scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with self._scope:
            listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
            self.port = listeners[0].socket.getsockname()[1]
            task_status.started()
            async with listeners[0], trio.open_nursery() as nursery:
                while True:
                    stream = await listeners[0].accept()
                    nursery.start_soon(self._pipe, stream)

    async def _pipe(self, down: trio.SocketStream) -> None:
        self.connections += 1
        self.total += 1
        try:
            async with (
                down,
                await trio.open_tcp_stream(*self.target) as up,
                trio.open_nursery() as nursery,
            ):

                async def copy(src: trio.SocketStream, dst: trio.SocketStream) -> None:
                    try:
                        async for data in src:
                            await dst.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                    nursery.cancel_scope.cancel()

                nursery.start_soon(copy, down, up)
                nursery.start_soon(copy, up, down)
        except OSError:
            pass
        finally:
            self.connections -= 1

    def kill(self) -> None:
        self._scope.cancel()


def dead_port() -> int:
    """A loopback port nothing listens on (bound once, then closed)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    server: Server
    a: Forwarder
    b: Forwarder


@asynccontextmanager
async def cluster(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Cluster]:
    """A daemon behind two forwarders A and B, its invites listing [A, B]."""
    a, b = Forwarder(("127.0.0.1", 0)), Forwarder(("127.0.0.1", 0))
    await nursery.start(a.run)
    await nursery.start(b.run)
    config = make_config(tmp_path / "state")
    config = replace(
        config,
        server=replace(
            config.server, public_addresses=(f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}")
        ),
    )
    daemon = await nursery.start(serve, config)
    server = Server(daemon, config.server.state_dir)
    a.target = b.target = server.address
    yield Cluster(server, a, b)


async def enroll_profile(c: Cluster, tmp_path: Path, name: str) -> tuple[Profile, str]:
    user_id, link = await c.server.add_user(name)
    profile = open_profile(tmp_path / name.lower(), create=True)
    await m.enroll(profile, link, f"{name}-phone")
    return profile, normalize(user_id)


async def test_invite_lists_both_nodes_and_enrolls_when_the_first_is_down(tmp_path, nursery):
    async with cluster(tmp_path, nursery) as c:
        _uid, link = await c.server.add_user("Anna")
        inv = parse_invite_link(link)
        assert inv.addresses == (c.a.address, c.b.address)
        assert inv.fingerprints == (c.server.fingerprint,)
        assert link.startswith(
            f"momedo://127.0.0.1:{c.a.port},127.0.0.1:{c.b.port}/invite/{inv.code}#"
        )
        c.a.kill()
        async with connect_invite(link, "phone", backoff=FAST) as (client, creds):
            assert client.address == c.b.address
        assert creds.addresses == (c.a.address, c.b.address)
        assert creds.last_good == c.b.address
        assert c.b.total == 1

        # Saved and loaded again, the credentials keep every address; the next connection
        # goes to B first (the one that worked), without trying the dead A.
        path = tmp_path / "transport.json"
        creds.save(path)
        loaded = Credentials.load(path)
        assert loaded == creds
        transport._last_good.clear()  # as in a new process
        async with connect(loaded, backoff=FAST) as client:
            assert client.address == c.b.address
        assert c.b.total == 2


async def test_login_fails_over_and_remembers_the_working_address(tmp_path, nursery):
    async with cluster(tmp_path, nursery) as c:
        profile, _ = await enroll_profile(c, tmp_path, "Anna")
        creds = profile.credentials()
        assert creds.last_good is None  # the first address worked: nothing to record
        saved = json.loads(profile.credentials_path.read_text())
        assert saved["addresses"] == [format_address(*c.a.address), format_address(*c.b.address)]
        assert "last_good" not in saved

        c.a.kill()
        transport._last_good.clear()
        async with connect(profile.credentials(), backoff=FAST) as client:
            assert client.address == c.b.address
        # Recorded in the profile, so the next process starts with B.
        assert profile.credentials().last_good == c.b.address
        assert json.loads(profile.credentials_path.read_text())["last_good"] == (
            format_address(*c.b.address)
        )


async def test_no_address_answers_gives_one_error_naming_each(tmp_path, nursery):
    async with cluster(tmp_path, nursery) as c:
        profile, _ = await enroll_profile(c, tmp_path, "Anna")
        c.a.kill()
        c.b.kill()
        transport._last_good.clear()
        started = trio.current_time()
        with pytest.raises(ClientError) as info:
            async with connect(profile.credentials(), rounds=3, backoff=FAST):
                pass
        text = str(info.value)
        assert "no server address answered (3 rounds over 2 addresses)" in text
        assert format_address(*c.a.address) in text and format_address(*c.b.address) in text
        # Two back-off waits between the three rounds: 0.05 s and 0.1 s, each ±50 %.
        assert trio.current_time() - started >= 0.075


async def test_listening_client_reconnects_through_the_other_node_and_gets_the_message_once(
    tmp_path, nursery
):
    async with cluster(tmp_path, nursery) as c:
        alice, _ = await enroll_profile(c, tmp_path, "Alice")
        bob, bob_id = await enroll_profile(c, tmp_path, "Bob")
        transport._last_good.clear()
        events: list[m.Event] = []
        got = trio.Event()

        def on_event(event: m.Event) -> None:
            events.append(event)
            if isinstance(event, m.Message) and event.text == "while you were away":
                got.set()

        # Bob waits 1.5 s before reconnecting: Alice's message is sent while he is away.
        slow = Backoff(1.5, 1.5, 0.0)
        nursery.start_soon(lambda: m.receive(bob, on_event, wait=None, backoff=slow))
        with trio.fail_after(10):
            while c.a.connections == 0:  # Bob is connected through A
                await trio.sleep(0.01)
        await m.send_text(alice, bob_id, "before")
        with trio.fail_after(10):
            while not any(isinstance(e, m.Message) and e.text == "before" for e in events):
                await trio.sleep(0.01)

        c.a.kill()  # node A dies mid-session; Alice's send goes through B
        await m.send_text(alice, bob_id, "while you were away")
        assert not any(isinstance(e, m.Notice) and "reconnected" in e.text for e in events)
        with trio.fail_after(15):
            await got.wait()
        await trio.sleep(0.3)  # room for a duplicate to show up

        texts = [e.text for e in events if isinstance(e, m.Message)]
        assert texts == ["before", "while you were away"]
        notices = [e.text for e in events if isinstance(e, m.Notice)]
        assert any(n.startswith("connection lost") for n in notices), notices
        assert f"reconnected to {format_address(*c.b.address)}" in notices
        assert c.b.connections >= 1


async def test_wrong_pin_on_one_address_is_reported_naming_it(tmp_path, nursery):
    async with cluster(tmp_path, nursery) as c:
        # Another TLS server with another key stands in for a node that is not ours.
        other_config = make_config(tmp_path / "other")
        other = await nursery.start(serve, other_config)
        bad = other.listeners[0].bound[0]
        bad_text = format_address(*bad)
        profile, _ = await enroll_profile(c, tmp_path, "Anna")
        creds = profile.credentials()
        creds = replace(creds, addresses=(creds.addresses[0], bad), last_good=None, path=None)
        transport._last_good.clear()

        # The intercepted address is reported by name; the other one is used.
        warnings: list[str] = []
        prefer_bad = replace(creds, last_good=bad)
        async with connect(prefer_bad, backoff=FAST, on_warning=warnings.append) as client:
            assert client.address == c.a.address
            assert client.warnings == warnings
        assert len(warnings) == 1
        assert warnings[0].startswith(f"{bad_text} presented key ")
        assert fingerprint_text(other.fingerprint) in warnings[0]
        assert "intercepting" in warnings[0]

        # With no other address answering, it is an error naming that address, at once
        # (no further rounds: a wrong certificate is not a network hiccup).
        c.a.kill()
        transport._last_good.clear()
        with pytest.raises(PinMismatch) as info, trio.fail_after(4):
            async with connect(creds, rounds=5, backoff=Backoff(5, 5)):
                pass
        assert bad_text in str(info.value)
        assert info.value.addresses == (bad,)


async def test_status_shows_every_address(tmp_path, nursery):
    async with cluster(tmp_path, nursery) as c:
        profile, _ = await enroll_profile(c, tmp_path, "Anna")
        cmd = [str(VENV_BIN / "momedo"), "--profile", str(profile.path), "--json", "status"]
        res = await trio.to_thread.run_sync(
            lambda: subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        )
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        both = [format_address(*c.a.address), format_address(*c.b.address)]
        assert out["server"] == both[0]
        assert out["servers"] == both
        assert out["connected_to"] == both[0]


async def test_old_single_address_profile_still_logs_in(server, tmp_path):
    creds = await server.enroll("Anna")
    host, port = server.address
    # transport.json as older clients wrote it: only host, port and fingerprint.
    old = {
        "host": host,
        "port": port,
        "fingerprint": server.fingerprint.hex(),
        "user_id": creds.user_id,
        "device_id": creds.device_id,
        "transport_seed": creds.transport_seed.hex(),
    }
    path = tmp_path / "transport.json"
    path.write_text(json.dumps(old))
    loaded = Credentials.load(path)
    assert loaded.addresses == ((host, port),)
    assert loaded.fingerprints == (server.fingerprint,)
    async with connect(loaded) as client:
        assert client.user_id == creds.user_id
        await client.ping()
    # Saving a single-address profile writes exactly the older form (older clients read it).
    loaded.save(path)
    assert json.loads(path.read_text()) == old


def test_backoff_doubles_with_jitter_within_bounds():
    b = Backoff(0.5, 30.0, 0.5)
    for n, base in enumerate([0.5, 1, 2, 4, 8, 16, 30, 30, 30]):
        delays = [b.delay(n) for _ in range(200)]
        assert all(base * 0.5 <= d <= min(30.0, base * 1.5) for d in delays), (n, delays[:5])
        assert max(delays) - min(delays) > base * 0.2  # jittered, not a fixed wait
    assert b.delay(10_000) <= 30.0


async def test_bridge_reconnects_through_the_other_node(tmp_path, nursery):
    from momedod.client.bridge.run import BridgeOptions, run_bridge

    async with cluster(tmp_path, nursery) as c:
        alice, _ = await enroll_profile(c, tmp_path, "Alice")
        bot, bot_id = await enroll_profile(c, tmp_path, "Bot")
        transport._last_good.clear()
        running = await nursery.start(run_bridge, bot, BridgeOptions("127.0.0.1:0"))
        bridge = running.bridge
        bridge.backoff = FAST
        with trio.fail_after(10):
            while not (bridge.connected and c.a.connections):
                await trio.sleep(0.01)

        c.a.kill()
        await m.send_text(alice, bot_id, "work order 17")
        with trio.fail_after(15):
            while not bridge.inbox.after(0, 10):
                await trio.sleep(0.05)
        await trio.sleep(0.3)
        rows = bridge.inbox.after(0, 10)
        assert len(rows) == 1 and "work order 17" in json.dumps(rows)
        assert bridge.connected and c.b.connections >= 1


async def test_link_device_invite_carries_every_address(tmp_path, nursery):
    from momedod.client import linking
    from momedod.e2e.link import parse_link_string

    async with cluster(tmp_path, nursery) as c:
        anna, _ = await enroll_profile(c, tmp_path, "Anna")
        codes: list[str] = []
        with trio.CancelScope() as scope, trio.fail_after(10):

            def on_code(code: str) -> None:
                codes.append(code)
                scope.cancel()  # the new device would take it from here

            await linking.link_new(anna, on_code, lambda e: None, wait=5)
        link, _secret = parse_link_string(codes[0])
        inv = parse_invite_link(link)
        assert inv.addresses == (c.a.address, c.b.address)
        assert inv.fingerprints == (c.server.fingerprint,)
