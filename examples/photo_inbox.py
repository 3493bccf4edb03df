#!/usr/bin/env python3
"""Case 3: photos with location sent to the office's bot land in the back office's system.

    python3 examples/photo_inbox.py --out /srv/inbox            # poll every 5 s
    python3 examples/photo_inbox.py --out /srv/inbox --once     # one pass (cron)

For every received message with attachments, each file is downloaded (decrypted by the
bridge) into ``--out`` next to a JSON file with sender, time, text and coordinates: what an
upload to e.g. SAP would pick up. The cursor is kept in ``--out/.cursor``, so nothing is
fetched twice and nothing is missed across restarts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bridge_api import call, download


def one_pass(out: Path) -> int:
    cursor_file = out / ".cursor"
    after = int(cursor_file.read_text()) if cursor_file.exists() else 0
    saved = 0
    while True:
        page = call("GET", f"/v1/messages?after={after}&limit=100")
        for msg in page["messages"]:
            for att in msg["attachments"]:
                if not att["url"]:
                    continue
                name = f"{msg['id']}-{Path(att['name'] or 'file').name}"
                (out / name).write_bytes(download(att["url"]))
                record = {
                    "file": name,
                    "mime": att["mime"],
                    "from": msg["from"]["user_id"],
                    "sent_ms": msg["sent_ms"],
                    "text": msg["text"],
                    "location": att["location"] or msg["location"],
                    "metadata": msg["metadata"],
                }
                (out / f"{name}.json").write_text(json.dumps(record, ensure_ascii=False))
                print(f"saved {name} {record['location']}", flush=True)
                saved += 1
        if page["next"] == after:
            return saved
        after = page["next"]
        cursor_file.write_text(str(after))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--once", action="store_true")
    p.add_argument("--interval", type=float, default=5.0)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    while True:
        one_pass(args.out)
        if args.once:
            return 0
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
