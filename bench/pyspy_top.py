"""Summarise a py-spy ``--format raw`` (collapsed stacks) profile: top self and inclusive time.

.venv/bin/python bench/run_all.py cpu --py-spy /tmp/relay.txt
.venv/bin/python bench/pyspy_top.py /tmp/relay.txt [--top 25] [--idle]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

IDLE = ("epoll", "select (selectors", "_wait_for_op", "wait (threading", "get_events")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", type=Path)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--idle", action="store_true", help="keep samples of waiting threads")
    args = ap.parse_args()
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in args.file.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = [re.sub(r" \(/.*?([^/]+\.py):\d+\)", r" (\1)", fr) for fr in stack.split(";")]
        if not args.idle and any(k in frames[-1] for k in IDLE):
            continue
        n = int(count)
        total += n
        own[frames[-1]] += n
        for fr in {re.sub(r":\d+\)$", ")", fr) for fr in frames}:  # per function
            incl[fr] += n
    print(f"{total} busy samples")
    print("\nself time (leaf frame):")
    for fr, n in own.most_common(args.top):
        print(f"  {n / total * 100:5.1f}%  {fr}")
    print("\ninclusive time (per function):")
    for fr, n in incl.most_common(args.top):
        print(f"  {n / total * 100:5.1f}%  {fr}")


if __name__ == "__main__":
    main()
