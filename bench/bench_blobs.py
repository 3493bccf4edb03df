"""Attachment upload and download throughput over real TLS on loopback (a benchmark, not a test).

Starts ``momedod`` as a subprocess with a fresh state directory, enrolls one device, and
uploads a random blob (BLOB_START, pipelined 256 KiB BLOB_CHUNKs, BLOB_FINISH with the
SHA-256 check, fsync and rename) and downloads it again (pipelined BLOB_GETs), ``--runs``
times each. Prints MiB/s per direction and the daemon's CPU seconds per MiB (from
/proc/PID/stat, so user + system time of the whole daemon process).

    .venv/bin/python bench/bench_blobs.py [--mib 20] [--runs 5] [--window 8]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).parent))

from bench_relay import enroll, start_daemon

from momedod.client.blobs import download_blob, upload_blob
from momedod.client.transport import connect

MIB = 1 << 20


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="momedo-bench-blobs-"))
    proc, sock = start_daemon(work)
    try:
        creds = await enroll(sock, "bench")
        data = secrets.token_bytes(args.mib * MIB)
        up: list[float] = []
        down: list[float] = []
        cpu_up: list[float] = []
        cpu_down: list[float] = []
        async with connect(creds, timeout=120) as client:
            for _ in range(args.runs):
                blob_id = secrets.token_bytes(16)
                cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
                await upload_blob(client, blob_id, data, window=args.window)
                cpu1, t1 = cpu_seconds(proc.pid), time.perf_counter()
                got = await download_blob(client, blob_id, len(data), window=args.window)
                cpu2, t2 = cpu_seconds(proc.pid), time.perf_counter()
                assert got == data
                up.append(args.mib / (t1 - t0))
                down.append(args.mib / (t2 - t1))
                cpu_up.append((cpu1 - cpu0) / args.mib * 1000)
                cpu_down.append((cpu2 - cpu1) / args.mib * 1000)
        print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")
        print(f"blob {args.mib} MiB, {args.runs} runs, window {args.window} x 256 KiB")
        for name, rates, cpu in (("upload", up, cpu_up), ("download", down, cpu_down)):
            print(
                f"{name:>8}: median {statistics.median(rates):6.1f} MiB/s"
                f" (min {min(rates):.1f}, max {max(rates):.1f});"
                f" daemon CPU {statistics.median(cpu):.1f} ms/MiB"
            )
    finally:
        proc.terminate()
        proc.wait(15)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=20, help="blob size in MiB (default 20)")
    parser.add_argument("--runs", type=int, default=5, help="uploads/downloads (default 5)")
    parser.add_argument("--window", type=int, default=8, help="requests in flight (default 8)")
    trio.run(main, parser.parse_args())
