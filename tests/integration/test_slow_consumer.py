"""A device that logs in and then never reads, while a flood of messages is queued to it.

The daemon runs as a real process so its memory can be read from /proc. Three things must
hold, and each is what an operator would notice if it broke:

* memory stays bounded: the daemon's RSS grows by at most BOUND_MIB during the flood. Per
  slow session the daemon holds at most LIVE_MAX (1024) offered mailbox entries, the
  DELIVERY_WINDOW (256) delivered-but-unacked frames in its outbox/TLS buffer and whatever
  the kernel socket buffers take; everything else waits in the store. With 32 KiB messages
  that is ~40 MiB; the bound adds slack for SQLite's page cache and the allocator;
* other clients are unaffected: a second pair keeps exchanging messages with normal latency;
* the slow device is dropped once a write has been stuck for ``write_timeout`` seconds, and
  nothing queued to it is lost: its mailbox still holds every message.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import pytest
import trio
from support import DaemonProcess, admin_call, free_port, raw_connect

from momedod.client.transport import Credentials, connect, connect_invite
from momedod.protocol import frames as f
from momedod.protocol.auth import auth_message
from momedod.server.session import DELIVERY_WINDOW, LIVE_MAX

WRITE_TIMEOUT = 2.0
PAYLOAD = 32 * 1024
BOUND_MIB = 96  # see the module docstring: (LIVE_MAX + DELIVERY_WINDOW) * 32 KiB + slack


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def enroll(proc: DaemonProcess, name: str) -> Credentials:
    link = admin_call(proc.socket, "user.add", name=name)["invite"]["link"]
    async with connect_invite(link, name) as (_client, creds):
        return creds


async def log_in_and_stop_reading(creds: Credentials):  # type: ignore[no-untyped-def]
    """Authenticate over a raw TLS stream, then never read again."""
    raw = await raw_connect(creds.host, creds.port)
    await raw.send(f.Hello(1, 1, 1, "slow-consumer"))
    welcome = await raw.next_frame()
    assert isinstance(welcome, f.Welcome)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.from_private_bytes(creds.transport_seed)
    cert_fp = creds.fingerprint
    sig = key.sign(auth_message(welcome.nonce, cert_fp, creds.user_id, creds.device_id))
    await raw.send(f.Auth(2, creds.user_id, creds.device_id, sig))
    assert isinstance(await raw.next_frame(), f.AuthOk)
    return raw


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("flood_factor", [4, pytest.param(16, marks=pytest.mark.long)])
async def test_slow_consumer_is_bounded_isolated_and_dropped(
    tmp_path: Path, flood_factor: int
) -> None:
    proc = DaemonProcess(
        tmp_path,
        free_port(),
        f"[limits]\nwrite_timeout = {WRITE_TIMEOUT}\nidle_timeout = 120\n"
        "mailbox_max_messages = 100000\n",
    )
    proc.start()
    try:
        slow, flooder, alice, bob = [await enroll(proc, n) for n in ("Slow", "Flood", "A", "B")]
        assert proc.proc is not None
        pid = proc.proc.pid
        raw = await log_in_and_stop_reading(slow)
        await trio.sleep(0.5)
        baseline = peak = rss_bytes(pid)
        to_slow = [f.Recipient(slow.user_id, slow.device_id, b"")]
        flood_done = trio.Event()
        sent_to_slow = 0
        latencies: list[float] = []

        async def flood() -> None:
            nonlocal sent_to_slow
            async with connect(flooder) as c:
                # Several times what the session may hold, and on past the write timeout.
                started = trio.current_time()
                while (
                    sent_to_slow < flood_factor * LIVE_MAX
                    or trio.current_time() - started < 2 * WRITE_TIMEOUT
                ):
                    await c.send(secrets.token_bytes(16), os.urandom(PAYLOAD), to_slow)
                    sent_to_slow += 1
            flood_done.set()

        async def chat() -> None:
            to_bob = [f.Recipient(bob.user_id, bob.device_id, b"")]
            async with connect(alice) as a, connect(bob) as b:
                assert isinstance(await b.receive(5), f.Drained)
                while not flood_done.is_set():
                    t0 = time.monotonic()
                    await a.send(secrets.token_bytes(16), b"hello bob", to_bob)
                    got = await b.receive(10)
                    assert isinstance(got, f.Deliver)
                    latencies.append(time.monotonic() - t0)
                    await b.ack([got.seq])
                    await trio.sleep(0.05)

        async def watch_memory() -> None:
            nonlocal peak
            while not flood_done.is_set():
                peak = max(peak, rss_bytes(pid))
                await trio.sleep(0.05)

        with trio.fail_after(120):
            async with trio.open_nursery() as n:
                n.start_soon(flood)
                n.start_soon(chat)
                n.start_soon(watch_memory)

        growth_mib = (peak - baseline) / 2**20
        flood_mib = sent_to_slow * PAYLOAD / 2**20
        assert growth_mib < BOUND_MIB, f"RSS grew {growth_mib:.0f} MiB for {flood_mib:.0f} MiB"
        assert growth_mib < flood_mib / 2  # not simply proportional to what was queued

        latencies.sort()
        assert len(latencies) >= 10
        p99 = latencies[int(0.99 * (len(latencies) - 1))]
        assert p99 < 1.0, f"other clients slowed down: p99 {p99 * 1000:.0f} ms"

        deadline = time.monotonic() + WRITE_TIMEOUT + 10
        while "connection.write_timeout" not in proc.log_path.read_text():
            assert time.monotonic() < deadline, "the slow consumer was never dropped"
            await trio.sleep(0.1)

        devices = admin_call(proc.socket, "device.list", user_id=slow.user_id)["devices"]
        assert devices[0]["mailbox"] == sent_to_slow  # dropped, but nothing lost
        await raw.aclose()
        print(  # shown with -s: the figures behind the bound
            f"\nslow consumer: {sent_to_slow} x {PAYLOAD // 1024} KiB = {flood_mib:.0f} MiB, "
            f"RSS +{growth_mib:.0f} MiB (bound {BOUND_MIB}), other pair p99 {p99 * 1000:.0f} ms, "
            f"window {DELIVERY_WINDOW}"
        )
    finally:
        proc.stop()
