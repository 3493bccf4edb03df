"""Every benchmark figure of issue 7, with one command (a benchmark, not a test).

    .venv/bin/python bench/run_all.py            # everything (N up to 10,000; ~15 min)
    .venv/bin/python bench/run_all.py --quick    # smaller run (N up to 2,000)
    .venv/bin/python bench/run_all.py cpu        # one figure: cpu | conns | drain | fanout | store
    .venv/bin/python bench/run_all.py conns --n 200 2000   # memory, login, latency, storm at N

``momedod`` runs as a subprocess on a copy of a cached, prepared state directory (enrolled
devices; ``/tmp/momedo-bench-cache``, ``MOMEDO_BENCH_CACHE``). Load comes from several forked
worker processes using the raw transport client over TLS on loopback (``loadgen.py``). Server
cost is the daemon process's user+system CPU time from /proc/PID/stat, divided by the work.
``cpu --py-spy FILE`` samples the daemon with py-spy during the measured phase (collapsed
stacks; with ``conns``: the 500 msg/s phase, to FILE.nN; with ``drain``: the drain, to
FILE.drain); ``cpu --profile FILE`` runs
that daemon under cProfile instead (bench only).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).parent))

from loadgen import Daemon, Workers, cpu_split, pct, prepare

from momedod.store import Recipient, open_store

RESULTS: list[tuple[str, str, str]] = []


def report(figure: str, target: str, measured: str) -> None:
    RESULTS.append((figure, target, measured))
    print(f"  {figure}: {measured}   [target {target}]", flush=True)


def wait_delivered(w: Workers, total: int, timeout: float) -> tuple[int, list[float]]:
    deadline = time.monotonic() + timeout
    while True:
        stats = w.call("stats")
        got = sum(s[0] for s in stats)
        if got >= total or time.monotonic() > deadline:
            return got, [x for s in stats for x in s[1]]
        time.sleep(0.1)


def start_spy(args: argparse.Namespace, d: Daemon, suffix: str) -> subprocess.Popen[bytes] | None:
    """py-spy sampling the daemon (collapsed stacks to ``--py-spy FILE``) until stop_spy."""
    if not args.py_spy:
        return None
    exe = str(Path(sys.executable).parent / "py-spy")
    out = args.py_spy + suffix
    cmd = [exe, "record", "--pid", str(d.pid), "--rate", "250", "--format", "raw", "-o", out]
    cmd += os.environ.get("PYSPY_ARGS", "").split()  # e.g. PYSPY_ARGS=--gil
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    return spy


def stop_spy(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)


def fig_cpu(args: argparse.Namespace) -> None:
    n, per = 200, (10 if args.quick else 50)
    print(f"== server CPU per delivered 1:1 message ({n} online devices, {per} msgs each)")
    with tempfile.TemporaryDirectory(prefix="momedo-bench-") as tmp:
        d, creds = prepare(max(n, args.cache_n), Path(tmp))
        d.profile = args.profile and f"cprofile:{args.profile}"
        creds = creds[:n]
        d.start()
        try:
            with Workers(args.workers, creds, d.port) as w:
                w.call("connect", (32, False))
                targets = [(c.user_id, c.device_id) for c in creds]
                w.call("reset")
                spy = start_spy(args, d, "")
                split0 = cpu_split(d.pid)
                cpu0, t0 = d.cpu(), time.perf_counter()
                sent = sum(w.call("send", (targets, per, 1536)))
                got, lat = wait_delivered(w, sent, 300)
                cpu, dt = d.cpu() - cpu0, time.perf_counter() - t0
                user, system = (b - a for a, b in zip(split0, cpu_split(d.pid), strict=True))
                stop_spy(spy)
        finally:
            d.stop()
    print(
        f"  {got}/{sent} delivered+acked in {dt:.1f} s ({got / dt:.0f} msgs/s),"
        f" daemon CPU {cpu:.2f} s"
    )
    print(
        f"  daemon CPU split: user {user / got * 1e6:.0f} us/msg,"
        f" system {system / got * 1e6:.0f} us/msg"
    )
    print(
        f"  latency under saturation: p50 {pct(lat, 50) * 1000:.1f} ms,"
        f" p99 {pct(lat, 99) * 1000:.1f} ms"
    )
    report(
        "server CPU per delivered 1:1 message",
        "<= 100 us",
        f"{cpu / got * 1e6:.0f} us ({got / dt:.0f} msgs/s)",
    )


def fig_conns(args: argparse.Namespace) -> None:
    sizes = args.n or ([200, 2000] if args.quick else [200, 2000, 10000])
    seconds = 5.0 if args.quick else 15.0
    with tempfile.TemporaryDirectory(prefix="momedo-bench-") as tmp:
        d, creds = prepare(max(max(sizes), args.cache_n), Path(tmp))
        for n in sizes:
            print(f"== {n} connected devices")
            d.start()
            try:
                with Workers(args.workers, creds[:n], d.port) as w:
                    time.sleep(1)
                    idle = d.rss()
                    cpu0, t0 = d.cpu(), time.perf_counter()
                    res = w.call("connect", (64, False))
                    cpu, dt = d.cpu() - cpu0, time.perf_counter() - t0
                    ok, errs = sum(r[0] for r in res), sum(r[1] for r in res)
                    print(
                        f"  connected {ok}/{n} ({errs} errors) in {dt:.1f} s; idle RSS {idle} KiB"
                    )
                    report(
                        f"login cost (TLS + AUTH, N={n})",
                        "<= 5 ms",
                        f"{cpu / max(ok, 1) * 1000:.2f} ms CPU/login",
                    )
                    time.sleep(2)
                    held = d.rss()
                    if n >= 2000:
                        report(
                            f"memory per idle TLS connection (N={n})",
                            "<= 40 KiB",
                            f"{(held - idle) / max(ok, 1):.1f} KiB (RSS {idle}->{held} KiB)",
                        )
                    targets = [(c.user_id, c.device_id) for c in creds[:n]]
                    cpu0 = d.cpu()
                    time.sleep(3)
                    idle_cpu = (d.cpu() - cpu0) / 3
                    print(
                        f"  daemon CPU with {ok} idle connections: {idle_cpu * 100:.0f}% of a core"
                    )
                    w.call("reset")
                    rate = 500 / args.workers
                    spy = start_spy(args, d, f".n{n}")
                    cpu0 = d.cpu()
                    sent = sum(w.call("rate", (targets, rate, seconds, 1536)))
                    got, lat = wait_delivered(w, sent, 60)
                    cpu = d.cpu() - cpu0
                    stop_spy(spy)
                    report(
                        f"delivery latency at 500 msg/s, N={n}",
                        "p99 <= 10 ms",
                        f"p50 {pct(lat, 50) * 1000:.1f} ms, p99 {pct(lat, 99) * 1000:.1f} ms"
                        f" ({got}/{sent} delivered,"
                        f" daemon CPU {cpu / seconds * 100:.0f}% of a core)",
                    )
                    if n >= 10000 or (args.quick and n == max(sizes)):
                        held_count = sum(w.call("drop"))
                        time.sleep(1)
                        t0 = time.perf_counter()
                        res = w.call("connect", (0, True))
                        dt = time.perf_counter() - t0
                        ok, errs = sum(r[0] for r in res), sum(r[1] for r in res)
                        report(
                            f"hold {n} then reconnect storm",
                            "all served; absorbed <= 60 s",
                            f"held {held_count}; {ok}/{n} back in {dt:.1f} s,"
                            f" {errs} failed attempts (retried with back-off)",
                        )
            finally:
                d.stop()


def fig_drain(args: argparse.Namespace) -> None:
    count = 20_000 if args.quick else 100_000
    print(f"== mailbox drain ({count} queued for one device)")
    with tempfile.TemporaryDirectory(prefix="momedo-bench-") as tmp:
        d, creds = prepare(max(2, args.cache_n), Path(tmp))
        rcpt, sender = creds[0], creds[1]
        t0 = time.perf_counter()
        trio.run(fill_mailbox, d.state, sender, rcpt, count)
        print(f"  queued {count} in {time.perf_counter() - t0:.1f} s (store API, daemon stopped)")
        d.start()
        try:
            with Workers(1, [rcpt], d.port) as w:
                spy = start_spy(args, d, ".drain")
                cpu0 = d.cpu()
                got, dt = w.call("drain", count)[0]
                cpu = d.cpu() - cpu0
                stop_spy(spy)
        finally:
            d.stop()
    report(
        f"mailbox drain ({count} queued)",
        ">= 20,000 msgs/s",
        f"{got / dt:.0f} msgs/s delivered+acked ({got} in {dt:.1f} s;"
        f" {cpu / got * 1e6:.0f} us CPU/msg)",
    )


async def fill_mailbox(state: Path, sender: object, rcpt: object, count: int) -> None:
    payload = os.urandom(1536)
    now = int(time.time() * 1000)
    to = [Recipient(rcpt.user_id, rcpt.device_id, b"")]  # type: ignore[attr-defined]
    sid = (sender.user_id, sender.device_id)  # type: ignore[attr-defined]
    async with open_store("sqlite", state) as store:

        async def worker(k: int) -> None:
            for i in range(k, count, 64):
                await store.enqueue(sid, i.to_bytes(16, "big"), payload, to, now, 10**9)

        async with trio.open_nursery() as n:
            for k in range(64):
                n.start_soon(worker, k)


def fig_fanout(args: argparse.Namespace) -> None:
    devices = 300 if args.quick else 1000
    print(f"== channel fan-out (bench_fanout.py, {devices} devices)")
    out = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).parent / "bench_fanout.py"),
            "--devices",
            str(devices),
            "--runs",
            "3",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    print("  " + out.strip().replace("\n", "\n  "))
    m = re.search(
        r"delivered to every device: median\s+([\d.]+) ms \(min ([\d.]+), max ([\d.]+)\)", out
    )
    c = re.search(r"daemon CPU per post: median\s+([\d.]+) ms", out)
    measured = f"{m.group(1)} ms median (min {m.group(2)}, max {m.group(3)})" if m else "?"
    if c:
        measured += f", daemon CPU {c.group(1)} ms/post"
    report(f"channel fan-out to {devices} online devices", "<= 500 ms", measured)


class BatchObserver:
    def __init__(self) -> None:
        self.sizes: Counter[int] = Counter()

    def operation(self, name: str, seconds: float) -> None:
        pass

    def batch(self, size: int) -> None:
        self.sizes[size] += 1


def fig_store(args: argparse.Namespace) -> None:
    count = 5000 if args.quick else 20000
    print(f"== group commit (synchronous=FULL, {count} sends from 100 concurrent senders)")
    obs = BatchObserver()
    with tempfile.TemporaryDirectory(prefix="momedo-bench-store-") as tmp:
        rate = trio.run(store_bench, Path(tmp), count, obs)
    batches = sorted(obs.sizes.elements())
    buckets = Counter()
    for s in batches:
        buckets[next(b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256, 10**9) if s <= b)] += 1
    dist = ", ".join(f"<={b if b < 10**9 else 'inf'}: {c}" for b, c in sorted(buckets.items()))
    print(f"  batch sizes (commits per bucket): {dist}")
    report(
        "group-commit throughput (synchronous=FULL)",
        "reported, with batch sizes",
        f"{rate:.0f} sends/s; {len(batches)} commits, batch p50 {pct(batches, 50)},"
        f" p99 {pct(batches, 99)}, max {max(batches)}",
    )


async def store_bench(tmp: Path, count: int, obs: BatchObserver) -> float:
    now, day = int(time.time() * 1000), 86_400_000
    payload = os.urandom(1536)
    async with open_store("sqlite", tmp / "state", observer=obs) as store:
        sender, invite = await store.create_user("sender", now, day)
        await store.redeem_invite(invite.code, b"k" * 32, "s", now)
        user, invite = await store.create_user("rcpt", now, day)
        await store.redeem_invite(invite.code, b"k" * 32, "r", now)
        obs.sizes.clear()
        to = [Recipient(user.user_id, 1, b"")]
        t0 = time.perf_counter()

        async def worker(k: int) -> None:
            for i in range(k, count, 100):
                await store.enqueue(
                    (sender.user_id, 1), i.to_bytes(16, "big"), payload, to, now, 10**9
                )

        async with trio.open_nursery() as n:
            for k in range(100):
                n.start_soon(worker, k)
        return count / (time.perf_counter() - t0)


FIGURES = {
    "cpu": fig_cpu,
    "conns": fig_conns,
    "drain": fig_drain,
    "fanout": fig_fanout,
    "store": fig_store,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("figures", nargs="*", help=f"default: all of {', '.join(FIGURES)}")
    ap.add_argument("--quick", action="store_true", help="smaller run")
    ap.add_argument("--n", type=int, nargs="+", help="conns: connection counts")
    ap.add_argument("--workers", type=int, default=4, help="load-generator processes (4)")
    ap.add_argument("--cache-n", type=int, default=0, help="prepare at least this many devices")
    ap.add_argument("--profile", help="cpu: write a cProfile of the daemon to this file")
    ap.add_argument(
        "--py-spy",
        help="cpu, conns, drain: write py-spy profiles (collapsed stacks) to FILE[.nN|.drain]",
    )
    args = ap.parse_args()
    names = args.figures or list(FIGURES)
    if bad := [n for n in names if n not in FIGURES]:
        ap.error(f"unknown figure {bad}")
    with open("/proc/loadavg") as fh:
        load0 = fh.read().split()[:3]
    print(
        f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, load {' '.join(load0)}"
    )
    for name in names:
        try:
            FIGURES[name](args)
        except Exception as e:  # one failing figure must not hide the others
            print(f"  {name} FAILED: {e!r}", flush=True)
            RESULTS.append((name, "-", f"FAILED: {e!r}"))
    with open("/proc/loadavg") as fh:
        load1 = fh.read().split()[:3]
    print(f"\nload average before {' '.join(load0)}, after {' '.join(load1)}")
    print("\n| figure | target | measured |\n|---|---|---|")
    for fig, target, measured in RESULTS:
        print(f"| {fig} | {target} | {measured} |")


if __name__ == "__main__":
    main()
