"""Frame codec micro-benchmark (a benchmark, not a test): µs per frame, in-process.

For each hot frame: ``encode`` = :func:`encode_frame`; ``decode`` = one ``FrameDecoder.feed``
of the frame's bytes and ``next_frame``; ``conn`` = the server's path, a ``Connection`` in
READY receiving the frame (``receive_data`` + ``next_event``) or sending it (``send``);
``batch`` = decoding 64 frames that arrived in one read. Prints the best of ``--repeat``
runs (the machine is shared, the minimum is the least disturbed figure).

    .venv/bin/python bench/bench_codec.py [--number 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import timeit
from collections.abc import Callable

from momedod.protocol import frames as f
from momedod.protocol.connection import Connection, Role

PAYLOAD = os.urandom(1536)  # an opaque 1.5 KiB envelope, as in bench/run_all.py cpu
MSG_ID = bytes(range(16))


def ready(role: Role) -> Connection:
    """A connection of ``role`` after HELLO/WELCOME/AUTH/AUTH_OK."""
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    steps: list[tuple[Connection, Connection, f.Frame]] = [
        (client, server, f.Hello(1, 1, 1, "bench")),
        (server, client, f.Welcome(1, 1, "b", bytes(32), 1 << 20, 60_000, 100, 256)),
        (client, server, f.Auth(2, "ABCDEFGH", 1, bytes(64))),
        (server, client, f.AuthOk(2, "ABCDEFGH", 1, 0)),
    ]
    for sender, receiver, frame in steps:
        receiver.receive_data(sender.send(frame))
        assert receiver.next_event() == frame
    return server if role is Role.SERVER else client


FRAMES: dict[str, tuple[f.Frame, Role]] = {
    # frame, the role that receives it
    "SEND 1.5 KiB": (
        f.Send(7, MSG_ID, PAYLOAD, (f.Recipient("ABCDEFGH", 2, b""),)),
        Role.SERVER,
    ),
    "ACCEPTED": (f.Accepted(7, MSG_ID, 1_700_000_000_000, False), Role.CLIENT),
    "DELIVER 1.5 KiB": (f.Deliver(0, 42, MSG_ID, 1_700_000_000_000, PAYLOAD, b""), Role.CLIENT),
    "ACK (1 seq)": (f.Ack(8, (42,)), Role.SERVER),
    "OK": (f.Ok(8), Role.CLIENT),
    "PING": (f.Ping(9, 12345), Role.SERVER),
}


def per_call(fn: Callable[[], object], number: int, repeat: int) -> float:
    """Best µs per call of ``fn``."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--number", type=int, default=20_000, help="calls per timing run")
    ap.add_argument("--repeat", type=int, default=5, help="timing runs (best is printed)")
    args = ap.parse_args()
    n, rep = args.number, args.repeat

    print(f"{'frame':<16} {'encode':>8} {'decode':>8} {'conn rx':>8} {'conn tx':>8} {'batch':>8}")
    total = 0.0
    for name, (frame, receiver_role) in FRAMES.items():
        data = f.encode_frame(frame)
        decoder = f.FrameDecoder()

        def decode(data: bytes = data, decoder: f.FrameDecoder = decoder) -> object:
            decoder.feed(data)
            return decoder.next_frame()

        rx = ready(receiver_role)

        def conn_rx(data: bytes = data, conn: Connection = rx) -> object:
            conn.receive_data(data)
            return conn.next_event()

        sender_role = Role.CLIENT if receiver_role is Role.SERVER else Role.SERVER
        tx = ready(sender_role)
        burst = data * 64
        batch_decoder = f.FrameDecoder()

        def batch(burst: bytes = burst, decoder: f.FrameDecoder = batch_decoder) -> None:
            decoder.feed(burst)
            while decoder.next_frame() is not None:
                pass

        assert decode() == frame and conn_rx() == frame and tx.send(frame) == data
        enc = per_call(lambda frame=frame: f.encode_frame(frame), n, rep)  # type: ignore[misc]
        dec = per_call(decode, n, rep)
        crx = per_call(conn_rx, n, rep)
        ctx = per_call(lambda frame=frame, tx=tx: tx.send(frame), n, rep)  # type: ignore[misc]
        bat = per_call(batch, max(1, n // 64), rep) / 64
        total += crx + ctx
        print(f"{name:<16} {enc:8.2f} {dec:8.2f} {crx:8.2f} {ctx:8.2f} {bat:8.2f}")
    print(f"sum of conn rx + conn tx over the frames above: {total:.2f} µs")


if __name__ == "__main__":
    main()
