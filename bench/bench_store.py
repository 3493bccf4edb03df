"""Store throughput: enqueue with 1 and 100 concurrent senders, then fetch + ack.

Measures the SQLite engine as the daemon uses it (WAL, synchronous=FULL, group commit) on
a real file. Run: ``.venv/bin/python bench/bench_store.py [--messages N] [--dir DIR]``.
This measures; it is not a test.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from momedod.store import Recipient, Store, open_store

NOW = 1_700_000_000_000
DAY = 86_400_000
PAYLOAD = os.urandom(1024)
PART = os.urandom(64)
DEVICES = 100


async def timed(label: str, count: int, work: Callable[[], Awaitable[None]]) -> None:
    start = time.perf_counter()
    await work()
    elapsed = time.perf_counter() - start
    print(f"{label:<44} {count:>7} in {elapsed:6.2f} s = {count / elapsed:>9,.0f}/s")


async def run_concurrently(tasks: int, count: int, one: Callable[[int], Awaitable[None]]) -> None:
    async def worker(w: int) -> None:
        for i in range(w, count, tasks):
            await one(i)

    async with trio.open_nursery() as nursery:
        for w in range(tasks):
            nursery.start_soon(worker, w)


async def bench(state_dir: Path, messages: int) -> None:
    async with open_store("sqlite", state_dir) as store:
        sender, invite = await store.create_user("sender", NOW, DAY)
        await store.redeem_invite(invite.code, b"k" * 32, "sender", NOW)
        user, invite = await store.create_user("recipient", NOW, DAY)
        for _ in range(DEVICES):
            await store.redeem_invite(invite.code, b"k" * 32, "device", NOW)
            invite = await store.new_invite(user.user_id, NOW, DAY)
        uid, sid = user.user_id, (sender.user_id, 1)
        counter = iter(range(10**9))

        async def send(i: int, fanout: int = 1) -> None:
            first = i % DEVICES
            to = [Recipient(uid, (first + k) % DEVICES + 1, PART) for k in range(fanout)]
            mid = next(counter).to_bytes(16, "big")
            await store.enqueue(sid, mid, PAYLOAD, to, NOW, 10**9)

        async def one_sender() -> None:
            for i in range(messages // 10):
                await send(i)

        await timed("enqueue, 1 sender (1 KiB, 1 recipient)", messages // 10, one_sender)
        await timed(
            "enqueue, 100 concurrent senders",
            messages,
            lambda: run_concurrently(100, messages, send),
        )
        await timed(
            "enqueue, 100 senders, 10 recipients each",
            messages // 10,
            lambda: run_concurrently(100, messages // 10, lambda i: send(i, 10)),
        )
        total = (await store.stats()).mailbox_entries
        await timed(
            "fetch+ack 100/batch, 100 devices at once", total, lambda: drain_all(store, uid)
        )
        stats = await store.stats()
        assert stats.mailbox_entries == 0 and stats.payloads == 0, stats


async def drain_all(store: Store, uid: str) -> None:
    async def drain(device_id: int) -> None:
        while entries := await store.fetch(uid, device_id, 0, 100):
            await store.ack(uid, device_id, [e.seq for e in entries])

    async with trio.open_nursery() as nursery:
        for d in range(1, DEVICES + 1):
            nursery.start_soon(drain, d)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--dir", type=Path, help="where to put the database (default: a tmp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print(f"database in {tmp}, {os.cpu_count()} CPUs")
        trio.run(bench, Path(tmp) / "state", args.messages)


if __name__ == "__main__":
    main()
