"""Coverage-guided fuzzing of the frame and envelope parsers (``make fuzz``).

    python fuzz/fuzz_parsers.py frames|envelopes [SECONDS]

With atheris installed (``make fuzz`` installs it on demand) this is a libFuzzer run over
the instrumented momedod.protocol and momedod.e2e packages, seeded with valid encodings.
Without atheris it falls back to a plain-Python loop that feeds random and mutated seeds for
the same time: far weaker, but it runs anywhere. Either way an input that raises anything
other than the parser's documented exception stops the run, is written to
``.fuzz/crash-<target>-<sha>`` and should become a regression test in tests/fuzz/.

Targets:

* ``frames``: the input is a byte stream for FrameDecoder (split in two at a point the first
  byte chooses), then the body for decode_frame of every frame type; only ProtocolError.
* ``envelopes``: the first byte chooses an opener or parser of momedod.e2e (Seal, Chain,
  Multi, records, rosters, org keys, events, attachment pointers and ciphertexts, link
  messages, chain state); the rest is its input, and for the encrypted ones also a plaintext
  that is correctly encrypted for the opener, so its inner parser is reached. Only E2EError
  (RECORD_INVALID ProtocolError for the wire record parser).
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

try:
    import atheris
except ImportError:  # the plain-Python fallback below needs nothing
    atheris = None

OUT = Path(__file__).resolve().parent.parent / ".fuzz"


def _import_targets() -> tuple[Callable[[bytes], None], list[bytes]]:
    """Import the code under test (instrumented when atheris is there) and the targets."""
    import fuzz_targets

    return fuzz_targets.TARGETS[sys.argv[1]], fuzz_targets.seeds(sys.argv[1])


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        pos = rng.randint(0, len(buf))
        op = rng.randrange(5)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] ^= rng.randint(1, 255)
        elif op == 1 and len(buf) >= 4:
            i = min(pos, len(buf) - 4)
            value = rng.choice((0, 1, 0x7F, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, len(buf)))
            buf[i : i + 4] = value.to_bytes(4, "big")
        elif op == 2:
            buf[pos:pos] = os.urandom(rng.randint(1, 16))
        elif op == 3:
            del buf[pos : pos + rng.randint(1, 16)]
        else:
            del buf[pos:]
    return bytes(buf)


def _report(target: str, data: bytes, exc: BaseException) -> None:
    OUT.mkdir(exist_ok=True)
    path = OUT / f"crash-{target}-{hashlib.sha256(data).hexdigest()[:12]}"
    path.write_bytes(data)
    print(f"CRASH in {target}: {type(exc).__name__}: {exc}\n  input saved to {path}")


def fallback(target: str, seconds: float) -> int:
    one_input, seeds = _import_targets()
    rng = random.Random()
    runs, deadline = 0, time.monotonic() + seconds
    print(f"atheris is not installed: plain-Python fuzzing of {target} for {seconds:g} s")
    while time.monotonic() < deadline:
        if rng.random() < 0.2 or not seeds:
            data = os.urandom(rng.randint(0, 512))
        else:
            data = _mutate(rng, rng.choice(seeds))
        try:
            one_input(data)
        except Exception as exc:
            _report(target, data, exc)
            return 1
        runs += 1
    print(f"{target}: {runs} inputs, no crash")
    return 0


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("frames", "envelopes"):
        print(__doc__)
        return 2
    target = sys.argv[1]
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 60.0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if atheris is None:
        return fallback(target, seconds)
    with atheris.instrument_imports(include=["momedod.protocol", "momedod.e2e"]):
        one_input, seeds = _import_targets()
    corpus = OUT / f"corpus-{target}"
    corpus.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        (corpus / hashlib.sha256(seed).hexdigest()[:16]).write_bytes(seed)

    def test_one_input(data: bytes) -> None:
        try:
            one_input(data)
        except Exception as exc:
            _report(target, data, exc)
            raise

    args = [sys.argv[0], f"-max_total_time={int(seconds)}", f"-artifact_prefix={OUT}/", str(corpus)]
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
