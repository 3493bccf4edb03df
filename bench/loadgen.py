"""Multi-process load generator for the issue-7 benchmarks (library; see ``run_all.py``).

The daemon runs as a subprocess (``Daemon``); enrolled devices are cached as a copy of the
state directory plus their credentials (``prepare``), so a run with 10,000 devices does not
enroll them again. Load comes from ``Workers``: forked processes, each running trio and the
raw transport client (``momedod.client.transport``) for its share of the devices, driven by
commands over a pipe. The daemon's CPU time and RSS are read from ``/proc/PID``.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing as mp
import os
import random
import resource
import shutil
import socket
import struct
import subprocess
import sys
import time
from dataclasses import asdict, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).parent))

from bench_fanout import add_users
from bench_relay import admin_call

from momedod import config
from momedod.client.transport import Client, ClientError, Credentials, connect, connect_invite
from momedod.protocol import frames as f

_HAS_ABUSE = hasattr(config, "AbuseConfig")  # [abuse] limits (issue 7), if this build has them
CACHE = Path(os.environ.get("MOMEDO_BENCH_CACHE", "/tmp/momedo-bench-cache"))
TICKS = os.sysconf("SC_CLK_TCK")
STAMP = struct.Struct("<d")  # send time (CLOCK_MONOTONIC, shared by all processes) in payloads


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of process ``pid`` (all its threads) from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    """``momedod run`` as a subprocess on a state directory, tuned for load (no debug log)."""

    def __init__(self, work: Path, profile: str | None = None) -> None:
        self.work = work
        self.state = work / "state"
        self.socket = work / "admin.sock"
        self.port = free_port()
        self.profile = profile  # "cprofile:FILE" runs the daemon under cProfile (bench only)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cfg = self.work / "momedod.toml"
        cfg.write_text(
            f'[server]\nname = "bench"\nstate_dir = "{self.state}"\n'
            f'[[listener]]\naddress = "127.0.0.1"\nport = {self.port}\nmax_connections = 30000\n'
            f"[limits]\nmailbox_max_messages = 200000\nidle_timeout = 3600.0\n"
            f"handshake_timeout = 60.0\n"
            f'[admin]\nsocket = "{self.socket}"\n'
            f'[log]\nlevel = "warning"\nformat = "json"\n[metrics]\nenabled = false\n'
            # Every bench client comes from 127.0.0.1; real phones have their own addresses.
            + ("[abuse]\nconnections_per_address = 30000\n" if _HAS_ABUSE else "")
        )
        raise_nofile()
        exe = str(Path(sys.executable).parent / "momedod")
        cmd = [exe, "run", "-c", str(cfg)]
        if self.profile and self.profile.startswith("cprofile:"):
            cmd = [sys.executable, "-m", "cProfile", "-o", self.profile[9:], *cmd]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("STATE_DIRECTORY",))}
        log = open(self.work / "momedod.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, cwd=self.work)
        deadline = time.monotonic() + 60
        while True:
            try:
                admin_call(self.socket, "server.info")
                return
            except (OSError, ValueError, AssertionError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit("momedod did not start") from None
                time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        return rss_kib(self.pid)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def prepare(n: int, work: Path, workers: int = 4) -> tuple[Daemon, list[Credentials]]:
    """A started daemon in ``work`` whose state has >= n enrolled devices (cached)."""
    have = sorted(
        int(p.parent.name[1:]) for p in CACHE.glob("n*/creds.json") if int(p.parent.name[1:]) >= n
    )
    cache = CACHE / f"n{have[0] if have else n}"
    creds_file = cache / "creds.json"
    if not creds_file.exists():
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True)
        d = Daemon(cache)
        d.start()
        t0 = time.perf_counter()
        try:
            add_users(d.socket, n)
            links = [
                i["invite"]["link"]
                for i in admin_call(d.socket, "invite.bulk", scope="never_enrolled")["invites"]
            ]
            with Workers(workers, [], d.port) as w:
                creds = [c for part in w.call_split("enroll", links) for c in part]
        finally:
            d.stop()
        rows = [
            {
                **asdict(c),
                "fingerprint": c.fingerprint.hex(),
                "transport_seed": c.transport_seed.hex(),
            }
            for c in creds
        ]
        creds_file.write_text(json.dumps(rows))
        print(
            f"  (prepared {n} enrolled devices in {time.perf_counter() - t0:.0f} s,"
            f" cached in {cache})"
        )
    rows = json.loads(creds_file.read_text())
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    shutil.copytree(cache / "state", work / "state")
    d = Daemon(work)
    creds = [
        Credentials(
            **{
                **r,
                "fingerprint": bytes.fromhex(r["fingerprint"]),
                "transport_seed": bytes.fromhex(r["transport_seed"]),
            }
        )
        for r in rows
    ]
    return d, creds


# --- worker processes ------------------------------------------------------------------------


class Workers:
    """``count`` forked processes, each owning a slice of ``creds``."""

    def __init__(self, count: int, creds: list[Credentials], port: int) -> None:
        self.creds = [replace(c, port=port) for c in creds]
        ctx = mp.get_context("fork")
        self.pipes: list[Connection] = []
        self.procs = []
        for w in range(count):
            parent, child = ctx.Pipe()
            part = self.creds[w::count]
            p = ctx.Process(target=_worker_main, args=(child, part, port), daemon=True)
            p.start()
            self.pipes.append(parent)
            self.procs.append(p)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.pipes:
            with contextlib.suppress(OSError):
                p.send(("exit", None))
        for proc in self.procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()

    def call(self, cmd: str, arg: Any = None) -> list[Any]:
        for p in self.pipes:
            p.send((cmd, arg))
        return [self._reply(p) for p in self.pipes]

    def call_split(self, cmd: str, items: list[Any]) -> list[Any]:
        n = len(self.pipes)
        for i, p in enumerate(self.pipes):
            p.send((cmd, items[i::n]))
        return [self._reply(p) for p in self.pipes]

    @staticmethod
    def _reply(p: Connection) -> Any:
        kind, value = p.recv()
        if kind == "error":
            raise RuntimeError(f"worker: {value}")
        return value


def _worker_main(pipe: Connection, creds: list[Credentials], port: int) -> None:
    raise_nofile()
    trio.run(_Worker(pipe, creds, port).run)


class _Worker:
    def __init__(self, pipe: Connection, creds: list[Credentials], port: int) -> None:
        self.pipe = pipe
        self.creds = creds
        self.port = port
        self.clients: dict[int, Client] = {}
        self.latencies: list[float] = []
        self.delivered = 0
        self.errors = 0
        self.scopes: list[trio.CancelScope] = []
        self.connected = 0

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            while True:
                cmd, arg = await trio.to_thread.run_sync(self.pipe.recv)
                if cmd == "exit":
                    nursery.cancel_scope.cancel()
                    return
                try:
                    result = await getattr(self, "cmd_" + cmd)(arg)
                    self.pipe.send(("ok", result))
                except Exception as e:  # reported to the parent
                    self.pipe.send(("error", repr(e)))

    async def cmd_enroll(self, links: list[str]) -> list[Credentials]:
        out: list[Credentials] = []
        limit = trio.Semaphore(16)

        async def one(link: str) -> None:
            async with limit, connect_invite(link, "phone", timeout=300) as (_c, cred):
                out.append(cred)

        async with trio.open_nursery() as n:
            for link in links:
                n.start_soon(one, link)
        return out

    async def _device(self, i: int, ready: trio.Semaphore, backoff: bool) -> None:
        cred = self.creds[i]
        delay = 0.1
        scope = trio.CancelScope()
        self.scopes.append(scope)
        with scope:
            while True:
                try:
                    async with connect(cred, timeout=300) as c:
                        await self._serve(i, c, ready)
                    return
                except (ClientError, OSError, trio.BrokenResourceError, trio.TooSlowError):
                    self.errors += 1
                    if not backoff:
                        ready.release()
                        return
                    await trio.sleep(delay * random.random())
                    delay = min(delay * 2, 5.0)

    async def _serve(self, i: int, c: Client, ready: trio.Semaphore) -> None:
        inbox = c._inbox
        pending: list[int] = []
        signalled = False
        while True:
            ev = await c.receive()
            if isinstance(ev, f.Drained):
                if not signalled:
                    self.clients[i] = c
                    self.connected += 1
                    ready.release()
                    signalled = True
                continue
            pending.append(ev.seq)
            if len(ev.payload) >= 8:
                self.latencies.append(time.perf_counter() - STAMP.unpack_from(ev.payload)[0])
            self.delivered += 1
            if len(pending) >= 256 or inbox.statistics().current_buffer_used == 0:
                seqs, pending = pending, []
                await c.ack(seqs)

    async def cmd_connect(self, arg: tuple[int, bool]) -> tuple[int, int, float]:
        """Connect the first ``count`` devices (``concurrency`` at a time, 0 = all at once)."""
        concurrency, backoff = arg
        self.clients.clear()
        self.connected = 0
        self.errors = 0
        ready = trio.Semaphore(0)
        limit = trio.Semaphore(concurrency or len(self.creds) or 1)
        t0 = time.perf_counter()

        async def start(i: int) -> None:
            async with limit:
                self.nursery.start_soon(self._device, i, ready, backoff)
                await ready.acquire()

        async with trio.open_nursery() as n:
            for i in range(len(self.creds)):
                n.start_soon(start, i)
        return self.connected, self.errors, time.perf_counter() - t0

    async def cmd_drop(self, _arg: None) -> int:
        for scope in self.scopes:
            scope.cancel()
        self.scopes = []
        await trio.sleep(0.5)
        count, self.connected = len(self.clients), 0
        self.clients.clear()
        return count

    async def cmd_reset(self, _arg: None) -> None:
        self.latencies = []
        self.delivered = 0

    async def cmd_stats(self, _arg: None) -> tuple[int, list[float]]:
        return self.delivered, self.latencies

    async def cmd_send(self, arg: tuple[list[tuple[str, int]], int, int]) -> int:
        """Every connected device sends ``count`` messages (each waits for ACCEPTED) to
        random devices of ``targets``."""
        targets, count, size = arg
        filler = os.urandom(size - STAMP.size)

        async def sender(c: Client) -> None:
            for _ in range(count):
                uid, did = random.choice(targets)
                payload = STAMP.pack(time.perf_counter()) + filler
                await c.send(os.urandom(16), payload, [f.Recipient(uid, did, b"")])

        async with trio.open_nursery() as n:
            for c in list(self.clients.values()):
                n.start_soon(sender, c)
        return len(self.clients) * count

    async def cmd_rate(self, arg: tuple[list[tuple[str, int]], float, float, int]) -> int:
        """Send at a fixed ``rate`` msgs/s for ``seconds`` from random connected devices."""
        targets, rate, seconds, size = arg
        filler = os.urandom(size - STAMP.size)
        clients = list(self.clients.values())
        total = int(rate * seconds)

        async def one(c: Client) -> None:
            uid, did = random.choice(targets)
            payload = STAMP.pack(time.perf_counter()) + filler
            try:
                await c.send(os.urandom(16), payload, [f.Recipient(uid, did, b"")])
            except ClientError:
                self.errors += 1

        t0 = trio.current_time()
        async with trio.open_nursery() as n:
            for k in range(total):
                await trio.sleep_until(t0 + k / rate)
                n.start_soon(one, random.choice(clients))
        return total

    async def cmd_login(self, arg: tuple[int, int]) -> int:
        """Log in devices [0, count) ``concurrency`` at a time, then disconnect each."""
        count, concurrency = arg
        limit = trio.Semaphore(concurrency)
        done = 0

        async def one(cred: Credentials) -> None:
            nonlocal done
            async with limit, connect(cred, timeout=120):
                done += 1

        async with trio.open_nursery() as n:
            for cred in self.creds[:count]:
                n.start_soon(one, cred)
        return done

    async def cmd_drain(self, arg: int) -> tuple[int, float]:
        """Device 0 connects and takes (DELIVER + ACK) ``expect`` queued messages."""
        expect = arg
        got = 0
        async with connect(self.creds[0], timeout=300) as c:
            inbox = c._inbox
            t0 = time.perf_counter()
            seqs: list[int] = []
            while got < expect:
                ev = await c.receive()
                if isinstance(ev, f.Drained):
                    if got >= expect:
                        break
                    continue
                got += 1
                seqs.append(ev.seq)
                if len(seqs) >= 256 or inbox.statistics().current_buffer_used == 0:
                    await c.ack(seqs)
                    seqs = []
            if seqs:
                await c.ack(seqs)
            return got, time.perf_counter() - t0


def pct(values: list[float], p: float) -> float:
    if not values:
        return math.nan
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]
