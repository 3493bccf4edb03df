"""Garbage-collector pauses on /metrics, the freeze after start-up, and no reference cycles
per relayed message (issue 7: p99 latency without GC pauses)."""

from __future__ import annotations

import gc
import secrets
from pathlib import Path

import trio
from support import DaemonProcess, admin_call, free_port
from test_metrics_scrape import parse, scrape, value

from momedod.client.transport import Client, Credentials, connect, connect_invite
from momedod.observability import metrics
from momedod.protocol import frames as f


def sample(name: str, generation: int) -> float:
    found = metrics.REGISTRY.get_sample_value(name, {"generation": str(generation)})
    return found or 0.0


def test_every_collection_is_timed_once_by_generation() -> None:
    metrics.install_gc_timer()
    metrics.install_gc_timer()  # idempotent: one callback, one observation per collection
    before = [sample("momedod_gc_pause_seconds_count", g) for g in range(3)]
    sum_before = sample("momedod_gc_pause_seconds_sum", 2)
    gc.collect(0)
    gc.collect()
    after = [sample("momedod_gc_pause_seconds_count", g) for g in range(3)]
    # Other threads' allocations may trigger extra young collections, never fewer.
    assert after[0] - before[0] >= 1 and after[2] - before[2] == 1
    assert sample("momedod_gc_pause_seconds_sum", 2) > sum_before
    assert sum(isinstance(cb, metrics._GCTimer) for cb in gc.callbacks) == 1


async def enroll(proc: DaemonProcess, name: str) -> Credentials:
    link = admin_call(proc.socket, "user.add", name=name)["invite"]["link"]
    async with connect_invite(link, f"{name}-phone") as (_client, creds):
        return creds


async def relay(a: Client, b: Client, bob: Credentials, n: int) -> None:
    """n messages a -> b, each: SEND, ACCEPTED, DELIVER, ACK, OK."""
    to = [f.Recipient(bob.user_id, bob.device_id, b"")]

    async def receive() -> None:
        got = 0
        while got < n:
            ev = await b.receive(30)
            if isinstance(ev, f.Deliver):
                got += 1
                await b.ack([ev.seq])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        for _ in range(n):
            await a.send(secrets.token_bytes(16), b"e" * 1536, to)


async def test_daemon_exports_gc_pauses_and_relays_without_reference_cycles(
    tmp_path: Path,
) -> None:
    proc = DaemonProcess(tmp_path, free_port())
    proc.start()
    try:
        samples = parse(await scrape(proc))
        for generation in "012":  # every series exists from the start
            assert (
                value(samples, "momedod_gc_pause_seconds_count", generation=generation) is not None
            )
        # The full collection that precedes gc.freeze() once start-up is done was timed.
        assert (value(samples, "momedod_gc_pause_seconds_count", generation="2") or 0) >= 1

        alice, bob = await enroll(proc, "Alice"), await enroll(proc, "Bob")
        async with connect(alice) as a, connect(bob) as b:
            assert isinstance(await b.receive(10), f.Drained)
            await relay(a, b, bob, 50)  # warm-up: first-use objects, caches
            before = parse(await scrape(proc))
            n = 500
            await relay(a, b, bob, n)
            after = parse(await scrape(proc))

        def freed(samples: dict) -> float:  # type: ignore[type-arg]
            return sum(
                value(samples, "python_gc_objects_collected_total", generation=g) or 0.0
                for g in "012"
            )

        # Objects only the cycle collector can free are garbage in reference cycles. One
        # cycle per message (e.g. a kept exception with its traceback) would be thousands.
        assert freed(after) - freed(before) < n / 5
    finally:
        proc.stop()
