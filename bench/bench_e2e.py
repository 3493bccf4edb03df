"""E2E crypto cost: Seal, Chain and Multi messages for suites 0x0002 and 0x0003, attachments.

Measures seal + open of a 1 KiB message (HPKE to one prekey, Ed25519 signature), encrypt
+ decrypt of a 1 KiB chain message, a Multi message to 10 devices (encrypt) and one open,
and prints the envelope sizes; then encrypts and decrypts a 20 MiB attachment (whole buffer
and streaming, MiB/s). Run:
``.venv/bin/python bench/bench_e2e.py [--rounds N]``. This measures; it is not a test.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from momedod.e2e.attachment import (
    AttachmentDecryptor,
    AttachmentEncryptor,
    decrypt_attachment,
    encrypt_attachment,
)
from momedod.e2e.chain import ReceivingChain, SendingChain
from momedod.e2e.envelope import Addr, ContentType
from momedod.e2e.multi import multi_encrypt, multi_open
from momedod.e2e.seal import open_seal, seal
from momedod.e2e.suites import ALL_SUITES, kem_keypair_from_seed

NOW = 1_767_225_600_000
SENDER = Addr("M8N22HTR", 1)
RECIPIENT = Addr("49K49JAC", 2)
CONTENT = bytes(1024)
SHORT = b"ok"
DK = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)
DK_PUB = DK.public_key().public_bytes_raw()


def per_op(rounds: int, fn: Callable[[int], object]) -> float:
    """Microseconds per call of ``fn(i)``, best of three runs (i counts on across runs)."""
    best = float("inf")
    for run in range(3):
        start = time.perf_counter()
        for i in range(run * rounds, (run + 1) * rounds):
            fn(i)
        best = min(best, time.perf_counter() - start)
    return best / rounds * 1e6


def bench_suite(suite_id: int, rounds: int) -> None:
    suite = ALL_SUITES[suite_id]
    private, public = kem_keypair_from_seed(suite, bytes(32))

    def make_seal(content: bytes, i: int = 0) -> bytes:
        return seal(
            suite, SENDER, DK, RECIPIENT, 1, 1, public, NOW, i.to_bytes(16, "big"),
            ContentType.TEXT, content,
        )  # fmt: skip

    def open_(data: bytes) -> object:
        return open_seal(data, RECIPIENT, lambda *_: private, lambda _a: DK_PUB)

    sealed = make_seal(CONTENT)
    seal_us = per_op(rounds, lambda i: make_seal(CONTENT, i))
    open_us = per_op(rounds, lambda _i: open_(sealed))

    sending = SendingChain.new(suite, SENDER, bytes(16), 1, NOW)
    dist = sending.to_dist()
    envelopes: list[bytes] = []

    def encrypt(i: int) -> None:
        envelopes.append(sending.encrypt(DK, NOW, i.to_bytes(16, "big"), bytes(16), 1, CONTENT))

    count = 3 * rounds
    encrypt_us = per_op(rounds, encrypt)
    receiving = ReceivingChain.from_dist(dist, SENDER, suite_id)
    decrypt_us = per_op(rounds, lambda i: receiving.decrypt(envelopes[i], DK_PUB, NOW))
    assert len(envelopes) == count

    short_seal = len(make_seal(SHORT))
    short_chain = len(sending.encrypt(DK, NOW, bytes(16), bytes(16), 1, SHORT))
    print(f"suite 0x{suite_id:04x} ({suite.name})")
    print(f"  seal 1 KiB         {seal_us:8.1f} µs/op   envelope {len(sealed):5} B")
    print(f"  open 1 KiB         {open_us:8.1f} µs/op   (short text seal: {short_seal} B)")
    print(f"  chain encrypt 1 KiB{encrypt_us:8.1f} µs/op   envelope {len(envelopes[0]):5} B")
    print(f"  chain decrypt 1 KiB{decrypt_us:8.1f} µs/op   (short text chain: {short_chain} B)")

    devices = [Addr(RECIPIENT.user_id, d) for d in range(1, 11)]
    rcpts = [(a, 1, 1, public) for a in devices]

    def multi(i: int) -> tuple[bytes, dict[Addr, bytes]]:
        return multi_encrypt(
            suite, SENDER, DK, bytes(16), 1, NOW, i.to_bytes(16, "big"), bytes(16), 1,
            CONTENT, rcpts,
        )  # fmt: skip

    payload, wraps = multi(0)
    multi_us = per_op(max(1, rounds // 10), multi)
    mopen_us = per_op(
        rounds,
        lambda _i: multi_open(
            payload, wraps[devices[0]], devices[0], lambda *_: private, lambda _a: DK_PUB
        ),
    )
    wrap = len(wraps[devices[0]])
    print(
        f"  multi 1 KiB to 10  {multi_us:8.1f} µs/op   payload {len(payload):5} B + {wrap} B/device"
    )
    print(f"  multi open 1 KiB   {mopen_us:8.1f} µs/op")


def bench_attachment(mib: int) -> None:
    """Whole-buffer and streaming encrypt/decrypt of a random ``mib`` MiB file."""
    data = os.urandom(mib * 1024 * 1024)

    def rate(fn: Callable[[], object]) -> float:
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        return mib / best

    ct, key, sha = encrypt_attachment(data)
    enc = rate(lambda: encrypt_attachment(data))
    dec = rate(lambda: decrypt_attachment(ct, key, sha, len(data)))
    piece = 256 * 1024

    def stream_encrypt() -> None:
        e = AttachmentEncryptor(len(data), key)
        for i in range(0, len(data), piece):
            e.update(data[i : i + piece])
        e.finish()

    def stream_decrypt() -> None:
        d = AttachmentDecryptor(key, len(data), sha)
        for i in range(0, len(ct), piece):
            d.update(ct[i : i + piece])
        d.finish()

    s_enc, s_dec = rate(stream_encrypt), rate(stream_decrypt)
    print(f"attachment {mib} MiB (ciphertext {len(ct)} B, Padmé + 16 B per 64 KiB)")
    print(f"  encrypt whole      {enc:8.1f} MiB/s   decrypt whole  {dec:8.1f} MiB/s")
    print(f"  encrypt streaming  {s_enc:8.1f} MiB/s   decrypt stream {s_dec:8.1f} MiB/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--attachment-mib", type=int, default=20)
    args = parser.parse_args()
    for suite_id in (2, 3):
        bench_suite(suite_id, args.rounds)
    bench_attachment(args.attachment_mib)


if __name__ == "__main__":
    main()
