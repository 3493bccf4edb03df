"""Store hand-off cost: trivial transactions through the SQLite engine (a benchmark, not a test).

    .venv/bin/python bench/bench_handoff.py [--ops 3000]

Runs ``SELECT 1`` as a write (writer thread, group commit) and as a read (reader threads),
from 1 and from 100 concurrent trio tasks, and prints the process CPU per operation and the
rate: what the trio <-> store thread hand-off costs apart from any real SQL.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from momedod.store import open_store


async def main(ops: int) -> None:
    with tempfile.TemporaryDirectory(prefix="momedo-bench-handoff-") as tmp:
        async with open_store("sqlite", Path(tmp) / "state") as store:

            def one(tx: Any) -> object:
                return tx.one("SELECT 1")

            calls: list[tuple[str, Callable[..., Awaitable[object]]]] = [
                ("write", store._write),  # type: ignore[attr-defined]
                ("read", store._read),  # type: ignore[attr-defined]
            ]
            for name, fn in calls:
                for conc in (1, 100):
                    await fn(one)
                    c0, t0 = time.process_time(), time.perf_counter()

                    async def worker(k: int, fn: Any = fn, conc: int = conc) -> None:
                        for _ in range(k, ops, conc):
                            await fn(one)

                    async with trio.open_nursery() as n:
                        for k in range(conc):
                            n.start_soon(worker, k)
                    cpu, dt = time.process_time() - c0, time.perf_counter() - t0
                    print(
                        f"{name:5} from {conc:3} tasks: {cpu / ops * 1e6:6.1f} us CPU/op,"
                        f" {ops / dt:7.0f} ops/s"
                    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=3000)
    trio.run(main, ap.parse_args().ops)
