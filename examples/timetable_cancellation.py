#!/usr/bin/env python3
"""Case 1: the timetable system announces a cancelled lesson to a class channel.

    python3 examples/timetable_cancellation.py --group "Klasse 7b" \
        --text "Die erste Stunde fällt morgen aus."

Prints the message id once the momedo server has accepted the message.
"""

from __future__ import annotations

import argparse
import sys

from bridge_api import BridgeError, call


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--group", required=True, help="channel ID or title")
    p.add_argument("--text", required=True)
    p.add_argument("--lesson", help="timetable reference, sent as metadata")
    args = p.parse_args()
    body: dict[str, object] = {"group": args.group, "text": args.text}
    if args.lesson:
        body["metadata"] = {"source": "timetable", "lesson": args.lesson}
    try:
        sent = call("POST", "/v1/messages", body)
    except BridgeError as e:
        print(f"not sent: {e}", file=sys.stderr)
        return 1
    print(sent["id"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
