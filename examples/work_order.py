#!/usr/bin/env python3
"""Case 2: facility management sends a work order; the janitor's "erledigt" closes the ticket.

    # after a repair is approved: send the work order to the janitor
    python3 examples/work_order.py send --to M8N2-2HTR --ticket FM-4711 \
        --text "Heizung Raum 204 entlüften"
    # the webhook receiver (start the bridge with --webhook http://127.0.0.1:8090/momedo)
    python3 examples/work_order.py webhook --port 8090 --tickets tickets.json

The receiver verifies the signature, matches a reply to the work order by ``in_reply_to``
(the original message id and its metadata, kept by the bridge) and marks the ticket done in
``tickets.json`` when the reply says "erledigt" (or "done").
"""

from __future__ import annotations

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bridge_api import BridgeError, call, verify_webhook

DONE_WORDS = ("erledigt", "done")


def send(args: argparse.Namespace) -> int:
    body = {"to": args.to, "text": args.text, "metadata": {"ticket": args.ticket}}
    try:
        sent = call("POST", "/v1/messages", body)
    except BridgeError as e:
        print(f"not sent: {e}", file=sys.stderr)
        return 1
    print(sent["id"])
    return 0


def update_ticket(tickets: Path, message: dict[str, Any]) -> str | None:
    """Mark the ticket of the answered work order done; returns the ticket number."""
    original = message.get("in_reply_to") or {}
    ticket = (original.get("metadata") or {}).get("ticket")
    if not ticket or not any(w in message["text"].lower() for w in DONE_WORDS):
        return None
    state = json.loads(tickets.read_text()) if tickets.exists() else {}
    state[ticket] = {
        "status": "done",
        "work_order_message": original["id"],
        "reply_message": message["id"],
        "by": message["from"]["user_id"],
        "text": message["text"],
    }
    tmp = tickets.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, ensure_ascii=False))
    tmp.replace(tickets)
    return str(ticket)


def webhook(args: argparse.Namespace) -> int:
    tickets = Path(args.tickets)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if not verify_webhook(self.headers, body):
                self.send_response(401)
                self.end_headers()
                return
            event = json.loads(body)
            ticket = update_ticket(tickets, event["message"])
            if ticket:
                print(f"ticket {ticket} done", flush=True)
            self.send_response(204)  # 2xx: the bridge will not send this message again
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"listening on http://{args.host}:{server.server_address[1]}/", flush=True)
    server.serve_forever()
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("send", help="send a work order")
    s.add_argument("--to", required=True, help="the janitor's user ID")
    s.add_argument("--ticket", required=True)
    s.add_argument("--text", required=True)
    w = sub.add_parser("webhook", help="receive replies and update tickets")
    w.add_argument("--host", default="127.0.0.1")
    w.add_argument("--port", type=int, default=8090)
    w.add_argument("--tickets", default="tickets.json")
    args = p.parse_args()
    return send(args) if args.cmd == "send" else webhook(args)


if __name__ == "__main__":
    sys.exit(main())
