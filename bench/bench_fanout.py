"""Channel fan-out over real TLS on loopback: one post to N online devices (a benchmark, not a
test).

Starts ``momedod`` as a subprocess with a fresh state directory, enrolls a teacher and N pupils
(one device each), connects every pupil, and makes a channel of all of them (CONV_PUT). Then,
``--runs`` times, the teacher posts once (CONV_SEND) and the benchmark waits until every pupil
has its DELIVER. Prints per post: the time to ACCEPTED (the fan-out committed: one payload row,
N mailbox rows), the time until the last device got it, and the daemon's CPU seconds for it
(from /proc/PID/stat: user + system time of the whole daemon process).

    .venv/bin/python bench/bench_fanout.py [--devices 1000] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).parent))

from bench_blobs import cpu_seconds
from bench_relay import admin_call, enroll, start_daemon

from momedod.client.transport import Client, Credentials, connect, connect_invite
from momedod.e2e.envelope import Addr
from momedod.e2e.event import is_conv_event
from momedod.e2e.identity import DeviceKey
from momedod.e2e.roster import KIND_CHANNEL, ROLE_ADMIN, ROLE_MEMBER, Roster, sign_roster_device
from momedod.protocol import frames as f


def add_users(sock: Path, n: int, chunk: int = 500) -> None:
    """n user.add requests pipelined over one admin connection, ``chunk`` at a time (all at
    once would deadlock: both sides block writing once the socket buffers are full)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(60)
        s.connect(str(sock))
        with s.makefile("rwb") as stream:
            for start in range(0, n, chunk):
                end = min(n, start + chunk)
                for i in range(start, end):
                    req = {"id": i, "cmd": "user.add", "args": {"name": f"pupil {i}"}}
                    stream.write(json.dumps(req).encode() + b"\n")
                stream.flush()
                for _ in range(start, end):
                    assert json.loads(stream.readline())["ok"]


async def enroll_all(sock: Path, n: int) -> list[Credentials]:
    await trio.to_thread.run_sync(add_users, sock, n)
    bulk = admin_call(sock, "invite.bulk", scope="never_enrolled")
    creds: list[Credentials] = []
    limit = trio.Semaphore(32)

    async def one(link: str) -> None:
        async with limit, connect_invite(link, "phone", timeout=120) as (_c, cred):
            creds.append(cred)

    async with trio.open_nursery() as nursery:
        for item in bulk["invites"]:
            nursery.start_soon(one, item["invite"]["link"])
    return creds


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="momedo-bench-fanout-"))
    proc, sock = start_daemon(work)
    try:
        teacher = await enroll(sock, "teacher")
        t0 = time.perf_counter()
        pupils = await enroll_all(sock, args.devices)
        print(f"enrolled {len(pupils)} devices in {time.perf_counter() - t0:.1f} s")
        got: list[float] = []  # arrival times of the current post
        waiting = trio.Event()
        current = b""
        connected = trio.Semaphore(0)

        async def pupil(cred: Credentials) -> None:
            nonlocal waiting
            async with connect(cred, timeout=120) as c:
                connected.release()
                while True:
                    ev = await c.receive()
                    if isinstance(ev, f.Deliver) and not is_conv_event(ev.payload):
                        assert ev.payload == current
                        got.append(time.perf_counter())
                        if len(got) == len(pupils):
                            waiting.set()

        async with trio.open_nursery() as nursery:
            limit = trio.Semaphore(32)

            async def start(cred: Credentials) -> None:
                async with limit:
                    nursery.start_soon(pupil, cred)
                    await connected.acquire()

            t0 = time.perf_counter()
            async with trio.open_nursery() as starters:
                for cred in pupils:
                    starters.start_soon(start, cred)
            print(f"connected {len(pupils)} devices in {time.perf_counter() - t0:.1f} s")
            async with connect(teacher, timeout=120) as t:
                conv_id = await make_channel(t, teacher, pupils)
                await trio.sleep(2)  # let the roster events reach every device
                accepted, delivered, cpu = [], [], []
                for _ in range(args.runs):
                    got.clear()
                    waiting = trio.Event()
                    current = secrets.token_bytes(args.size)
                    cpu0, start_t = cpu_seconds(proc.pid), time.perf_counter()
                    reply = await t.request(
                        f.ConvSend(t.next_id(), secrets.token_bytes(16), conv_id, current, ())
                    )
                    assert isinstance(reply, f.Accepted)
                    accepted.append(time.perf_counter() - start_t)
                    with trio.fail_after(120):
                        await waiting.wait()
                    delivered.append(max(got) - start_t)
                    cpu.append(cpu_seconds(proc.pid) - cpu0)
                    await trio.sleep(0.5)
            nursery.cancel_scope.cancel()
        print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")
        print(f"one post of {args.size} bytes to {len(pupils)} online devices, {args.runs} runs")
        for name, values in (
            ("accepted (fan-out committed)", accepted),
            ("delivered to every device", delivered),
            ("daemon CPU per post", cpu),
        ):
            print(
                f"{name:>29}: median {statistics.median(values) * 1000:7.1f} ms"
                f" (min {min(values) * 1000:.1f}, max {max(values) * 1000:.1f})"
            )
    finally:
        proc.terminate()
        proc.wait(15)
        shutil.rmtree(work, ignore_errors=True)


async def make_channel(t: Client, teacher: Credentials, pupils: list[Credentials]) -> bytes:
    members = {teacher.user_id: ROLE_ADMIN, **{p.user_id: ROLE_MEMBER for p in pupils}}
    roster = Roster.first(secrets.token_bytes(16), KIND_CHANNEL, members, "bench")
    dk = DeviceKey(secrets.token_bytes(32))  # the server does not check it; clients would
    record = sign_roster_device(roster, Addr(teacher.user_id, teacher.device_id), dk)
    await t.request(f.ConvPut(t.next_id(), roster.conv_id, record))
    return roster.conv_id


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000, help="pupil devices (1000)")
    parser.add_argument("--runs", type=int, default=5, help="posts to time (5)")
    parser.add_argument("--size", type=int, default=1500, help="payload bytes (1500)")
    trio.run(main, parser.parse_args())
