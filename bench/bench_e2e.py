"""E2E crypto cost: Seal and Chain messages for suites 0x0002 and 0x0003.

Measures seal + open of a 1 KiB message (HPKE to one prekey, Ed25519 signature) and encrypt
+ decrypt of a 1 KiB chain message, and prints the envelope sizes. Run:
``.venv/bin/python bench/bench_e2e.py [--rounds N]``. This measures; it is not a test.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from momedod.e2e.chain import ReceivingChain, SendingChain
from momedod.e2e.envelope import Addr, ContentType
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=500)
    args = parser.parse_args()
    for suite_id in (2, 3):
        bench_suite(suite_id, args.rounds)


if __name__ == "__main__":
    main()
