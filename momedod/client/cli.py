"""``momedo``: the reference client's command line (transport commands for now).

The end-to-end layer (chats, contacts, verification) adds its commands on top; until then the
client can enroll a device from an invite link and check that it can log in.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import stat
import sys
from pathlib import Path

import trio

from momedod.client.transport import ClientError, Credentials, connect, connect_invite
from momedod.protocol.frames import Drained
from momedod.protocol.invite import InvalidInviteLink, fingerprint_text
from momedod.protocol.userid import display

CREDENTIALS = "transport.json"


def default_profile() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "momedo"


def _profile_dir(path: Path, create: bool) -> Path:
    if create:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.is_dir():
        raise SystemExit(f"momedo: no profile at {path} — enroll first: momedo enroll LINK")
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        raise SystemExit(f"momedo: {path} is readable by other users; run: chmod 700 {path}")
    return path


async def _enroll(profile: Path, link: str, name: str) -> Credentials:
    async with connect_invite(link, name) as (_client, creds):
        creds.save(profile / CREDENTIALS)
        return creds


async def _status(creds: Credentials) -> dict[str, object]:
    # Counts without acknowledging, so at most one delivery window can be seen.
    pending = 0
    async with connect(creds) as client:
        assert client.welcome is not None
        window = client.welcome.delivery_window
        while pending < window:
            ev = await client.receive(timeout=30)
            if isinstance(ev, Drained):
                break
            pending += 1
    shown = f"{pending} or more" if pending >= window else str(pending)
    return {
        "user_id": display(creds.user_id),
        "device_id": creds.device_id,
        "server": f"{creds.host}:{creds.port}",
        "login": "ok",
        "waiting_messages": shown,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="momedo", description="momedo reference client")
    parser.add_argument(
        "--profile",
        type=Path,
        default=default_profile(),
        help="profile directory (default: %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("enroll", help="enroll this device with an invite link")
    p.add_argument("link")
    p.add_argument("--name", default=socket.gethostname(), help="device name")
    sub.add_parser("whoami", help="show this device's user ID and server")
    sub.add_parser("status", help="log in and count waiting messages (without taking them)")
    args = parser.parse_args(argv)

    try:
        if args.cmd == "enroll":
            profile = _profile_dir(args.profile, create=True)
            if (profile / CREDENTIALS).exists():
                print(f"momedo: {profile} already holds an enrolled device", file=sys.stderr)
                return 1
            creds = trio.run(_enroll, profile, args.link, args.name)
            out: dict[str, object] = {
                "user_id": display(creds.user_id),
                "device_id": creds.device_id,
                "server": f"{creds.host}:{creds.port}",
            }
        else:
            profile = _profile_dir(args.profile, create=False)
            creds = Credentials.load(profile / CREDENTIALS)
            if args.cmd == "whoami":
                out = {
                    "user_id": display(creds.user_id),
                    "device_id": creds.device_id,
                    "server": f"{creds.host}:{creds.port}",
                    "fingerprint": fingerprint_text(creds.fingerprint),
                }
            else:
                out = trio.run(_status, creds)
    except InvalidInviteLink as e:
        print(f"momedo: invalid invite link: {e}", file=sys.stderr)
        return 1
    except ClientError as e:
        print(f"momedo: {e}", file=sys.stderr)
        return 1
    except FileNotFoundError:
        print(f"momedo: no enrolled device in {args.profile}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key.replace('_', ' ')}: {value}")
    return 0
