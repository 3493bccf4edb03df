"""Relay throughput and latency over real TLS on loopback (a benchmark, not a test).

Starts ``momedod`` as a subprocess with a fresh state directory, enrolls N sender and N
receiver devices, and has every sender send M messages (waiting for each ACCEPTED, as a phone
would) to its receiver, which is online and acknowledges in batches. Prints accepted
messages/s, delivered messages/s, send->deliver latency percentiles, and offline drain speed.

    .venv/bin/python bench/bench_relay.py [--pairs 20] [--messages 500] [--size 1500]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from momedod import config
from momedod.client.transport import Credentials, connect, connect_invite
from momedod.protocol import frames as f


def admin_call(sock: Path, cmd: str, **args: object) -> dict:  # type: ignore[type-arg]
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock))
        s.sendall(json.dumps({"id": 1, "cmd": cmd, "args": args}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            buf += s.recv(65536)
    reply = json.loads(buf)
    assert reply["ok"], reply
    return reply["result"]  # type: ignore[no-any-return]


def start_daemon(work: Path) -> tuple[subprocess.Popen[bytes], Path]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sock = work / "admin.sock"
    cfg = work / "momedod.toml"
    cfg.write_text(
        f'[server]\nstate_dir = "{work / "state"}"\n[[listener]]\naddress = '
        f'"127.0.0.1"\nport = {port}\n[admin]\nsocket = "{sock}"\n'
        f'[log]\nlevel = "warning"\nformat = "json"\n'
        # All bench clients share 127.0.0.1; lift the per-address cap of builds that have it.
        + ("[abuse]\nconnections_per_address = 30000\n" if hasattr(config, "AbuseConfig") else "")
    )
    bin_dir = Path(sys.executable).parent
    proc = subprocess.Popen(
        [str(bin_dir / "momedod"), "run", "-c", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            admin_call(sock, "server.info")
            return proc, sock
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("momedod did not start") from None
            time.sleep(0.05)


async def enroll(sock: Path, name: str) -> Credentials:
    link = admin_call(sock, "user.add", name=name)["invite"]["link"]
    async with connect_invite(link, name) as (_c, creds):
        return creds


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


async def run(pairs: int, messages: int, size: int, sock: Path) -> None:
    senders = [await enroll(sock, f"s{i}") for i in range(pairs)]
    receivers = [await enroll(sock, f"r{i}") for i in range(pairs)]
    payload = secrets.token_bytes(size)
    sent_at: dict[bytes, float] = {}
    latencies: list[float] = []
    total = pairs * messages
    done = trio.Event()

    async def receiver(creds: Credentials, ready: trio.Event) -> None:
        async with connect(creds) as c:
            pending: list[int] = []
            while not isinstance(await c.receive(), f.Drained):
                pass
            ready.set()
            while len(latencies) < total:
                with trio.move_on_after(0.05):
                    ev = await c.receive()
                    assert isinstance(ev, f.Deliver)
                    latencies.append(time.perf_counter() - sent_at[ev.message_id])
                    pending.append(ev.seq)
                if pending and (len(pending) >= 64 or len(latencies) >= total):
                    await c.ack(pending)
                    pending = []
            if pending:
                await c.ack(pending)
        done.set()

    async def sender(creds: Credentials, to: Credentials) -> None:
        rcpt = [f.Recipient(to.user_id, to.device_id, b"")]
        async with connect(creds) as c:
            for _ in range(messages):
                mid = secrets.token_bytes(16)
                sent_at[mid] = time.perf_counter()
                await c.send(mid, payload, rcpt)

    async with trio.open_nursery() as n:
        readies = []
        for r in receivers:
            ready = trio.Event()
            readies.append(ready)
            n.start_soon(receiver, r, ready)
        for ready in readies:
            await ready.wait()
        t0 = time.perf_counter()
        async with trio.open_nursery() as sn:
            for s, r in zip(senders, receivers, strict=True):
                sn.start_soon(sender, s, r)
        t_accept = time.perf_counter() - t0
    t_deliver = time.perf_counter() - t0
    print(f"online relay: {pairs} sender->receiver pairs x {messages} msgs of {size} B")
    print(f"  accepted  {total / t_accept:9.0f} msgs/s  ({total} in {t_accept:.2f} s)")
    print(f"  delivered {total / t_deliver:9.0f} msgs/s")
    ms = [x * 1000 for x in latencies]
    print(
        f"  send->deliver latency ms: p50 {statistics.median(ms):.1f}  p90 {pct(ms, 90):.1f}"
        f"  p99 {pct(ms, 99):.1f}  max {max(ms):.1f}"
    )

    # Offline: fill one mailbox, then time how fast a reconnecting device drains it.
    target = receivers[0]
    rcpt = [f.Recipient(target.user_id, target.device_id, b"")]

    async def fill(creds: Credentials, count: int) -> None:
        async with connect(creds) as c:
            for _ in range(count):
                await c.send(secrets.token_bytes(16), payload, rcpt)

    backlog = 5000
    async with trio.open_nursery() as n:
        for s in senders:
            n.start_soon(fill, s, backlog // pairs)
    async with connect(target) as c:
        t0 = time.perf_counter()
        got = 0
        seqs: list[int] = []
        while not isinstance(ev := await c.receive(), f.Drained):
            got += 1
            seqs.append(ev.seq)
            if len(seqs) == 256:
                await c.ack(seqs)
                seqs = []
        if seqs:
            await c.ack(seqs)
        dt = time.perf_counter() - t0
    print(f"offline drain: {got} queued msgs delivered+acked in {dt:.2f} s ({got / dt:.0f} msgs/s)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--messages", type=int, default=500)
    ap.add_argument("--size", type=int, default=1500)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="momedo-bench-", dir="/tmp"))
    proc, sock = start_daemon(work)
    try:
        print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")
        trio.run(run, args.pairs, args.messages, args.size, sock)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
