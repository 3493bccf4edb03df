"""``momedo``: the reference client's command line, a thin layer over
:mod:`momedod.client.messenger`, :mod:`momedod.client.groups` and
:mod:`momedod.client.attachments` (end-to-end encrypted chats, groups and files).

Commands: enroll, whoami, status, send (``--group G``, ``--file PATH``), recv, listen
(``--save-dir DIR``), group create|add|remove, groups, contacts, verify, trust, devices
(``devices remove ID``), link new, link accept, bridge (a bot's local HTTP API and webhooks:
:mod:`momedod.client.bridge`).
``--profile DIR`` selects the profile (default ``~/.local/share/momedo``); ``--json`` prints
machine-readable output (``recv``/``listen``: one JSON object per line).
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from momedod.client import attachments, groups, linking
from momedod.client import messenger as m
from momedod.client.profile import Profile, ProfileError, default_profile, open_profile
from momedod.client.transport import ClientError, Credentials, connect
from momedod.e2e.errors import E2EError
from momedod.e2e.safety import parse_qr, qr_string
from momedod.e2e.trust import QrMismatch
from momedod.protocol.frames import Drained
from momedod.protocol.invite import Address, InvalidInviteLink, fingerprint_text, format_address
from momedod.protocol.userid import InvalidUserId, display, normalize
from momedod.quiet import parse_days, parse_time, parse_window

Out = dict[str, Any]


def _err(text: str) -> None:
    print(f"momedo: {text}", file=sys.stderr)


async def _quiet(creds: Credentials, args: argparse.Namespace) -> Out:
    if args.quiet_cmd == "clear":
        days, start, end, tz, window = 0, 0, 0, "", None
    else:
        try:
            spec = parse_window(args.window)
            days = sum(1 << d for d in parse_days(spec["days"]))
            start, end = parse_time(spec["start"]), parse_time(spec["end"])
        except ValueError as e:
            raise m.MessengerError(str(e)) from None
        tz, window = spec["timezone"], args.window
    async with connect(creds) as client:
        await client.quiet_set(days, start, end, tz, defer=getattr(args, "defer", False))
    return {"quiet_hours": window or "cleared"}


async def _status(creds: Credentials) -> Out:
    # Counts without acknowledging, so at most one delivery window can be seen.
    pending = 0
    async with connect(creds) as client:
        address = client.address
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
        **_servers(creds, address),
        "login": "ok",
        "waiting_messages": shown,
    }


def _servers(creds: Credentials, connected: Address | None = None) -> Out:
    """``server`` (the first address, as before) and, for a server with several nodes,
    ``servers`` (all of them) and ``connected_to``."""
    out: Out = {"server": format_address(creds.host, creds.port)}
    if len(creds.addresses) > 1:
        out["servers"] = [format_address(h, p) for h, p in creds.addresses]
        if connected is not None:
            out["connected_to"] = format_address(*connected)
    return out


def _suites_arg(text: str) -> tuple[int, ...]:
    try:
        suites = tuple(sorted({int(x, 0) for x in text.split(",") if x.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of suite numbers: {text!r}") from None
    bad = [x for x in suites if x not in m.SUPPORTED_SUITES]
    if not suites or bad:
        ok = ",".join(str(x) for x in m.SUPPORTED_SUITES)
        raise argparse.ArgumentTypeError(f"suites must be some of {ok}, got {text!r}")
    return suites


def _print(out: Out, as_json: bool) -> None:
    if as_json:
        print(json.dumps(out))
        return
    for key, value in out.items():
        if key == "notices":
            for line in value:
                print(line, file=sys.stderr)
            continue
        if isinstance(value, list):
            print(f"{key.replace('_', ' ')}:")
            for item in value:
                print(f"  {item}")
        else:
            print(f"{key.replace('_', ' ')}: {value}")


def _notices(notices: list[m.Notice]) -> list[str]:
    return [n.line() for n in notices]


def _whoami(profile: Profile) -> Out:
    creds = profile.credentials()
    out: Out = {
        "user_id": display(creds.user_id),
        "device_id": creds.device_id,
        **_servers(creds),
        "server_fingerprint": fingerprint_text(creds.fingerprint),
    }
    if len(creds.fingerprints) > 1:
        out["server_fingerprints"] = [fingerprint_text(x) for x in creds.fingerprints]
    if profile.has_e2e():
        state = profile.load_state()
        uik = state.uik_public()
        out["identity_fingerprint"] = uik.fp.hex()
        out["qr"] = qr_string(creds.user_id, uik.fp)
        out["manager"] = state.uik_seed is not None
        out["suite"] = f"0x{state.suite:04x}"
        out["suites"] = " ".join(f"0x{x:04x}" for x in sorted(state.device_suites))
        if state.org_fp is not None:
            how = "invite link" if state.org_source == "invite" else "first use"
            out["organisation_key"] = f"{fingerprint_text(state.org_fp)} (pinned from the {how})"
    return out


async def _contacts(msgr: m.Messenger) -> Out:
    rows = []
    for c in msgr.trust.contacts:
        if c.user_id == msgr.me.user_id:
            continue
        rows.append(
            {
                "user_id": display(c.user_id),
                "level": c.level.value,
                "key_changed": c.blocked,
                "fingerprint": c.fp.hex(),
                "devices": sorted(c.devices),
            }
        )
    return {"contacts": rows}


def _contacts_text(out: Out) -> None:
    if not out["contacts"]:
        print("no contacts yet")
    for c in out["contacts"]:
        flag = "  KEY CHANGED — run: momedo trust " + c["user_id"] if c["key_changed"] else ""
        devs = ", ".join(str(d) for d in c["devices"])
        print(f"{c['user_id']}  {c['level']}  devices {devs}  fp {c['fingerprint'][:16]}…{flag}")


async def _trust(msgr: m.Messenger, user_id: str, qr: str | None) -> Out:
    notices = [n.line() for n in (await msgr.fetch_user(user_id)).notices]
    c = msgr.trust.contact(user_id)
    assert c is not None
    lowered = msgr.accept_suites(user_id)  # a suite downgrade is accepted by `trust` too
    lowered_text = "accepted the lower suite of device " + ", ".join(str(d) for d in lowered)
    if qr is not None:
        try:
            q_uid, q_fp = parse_qr(qr)
        except ValueError as e:
            raise m.MessengerError(f"not a momedo QR string: {e}") from None
        if q_uid != user_id:
            raise m.MessengerError(f"the QR code is for {display(q_uid)}, not {display(user_id)}")
        result = msgr.trust.verify_qr(user_id, q_fp)
        if isinstance(result, QrMismatch):
            msgr.save()
            raise m.MessengerError(
                f"the QR code names ANOTHER key than the one the server shows for "
                f"{display(user_id)}: nothing changed"
            )
        action = "verified by QR code"
    elif c.blocked:
        msgr.trust.accept(user_id)
        action = "accepted the new identity key (unverified; compare: momedo verify)"
    elif lowered:
        action = lowered_text
    else:
        msgr.trust.mark_verified(user_id)
        action = "marked verified (you compared the safety number)"
    if lowered and action != lowered_text:
        action += "; " + lowered_text
    msgr.save()
    c = msgr.trust.contact(user_id)
    assert c is not None
    return {
        "user_id": display(user_id),
        "action": action,
        "level": c.level.value,
        "fingerprint": c.fp.hex(),
        "notices": notices,
    }


async def _devices(msgr: m.Messenger) -> Out:
    keys = await msgr.fetch_user(msgr.me.user_id)
    msgr.save()
    dl = keys.device_list
    rows = [
        {
            "device_id": e.device_id,
            "this_device": e.device_id == msgr.me.device_id,
            "manager": bool(e.flags & 1),
            "suites": [f"0x{s:04x}" for s in e.suites],
            "added_ms": e.added_ms,
            "key": e.dk_pub.hex(),
        }
        for e in dl.entries
    ]
    return {
        "user_id": display(msgr.me.user_id),
        "device_list_version": dl.version,
        "signed_by_my_identity": dl.signer_fp == msgr.uik_pub.fp,
        "devices": rows,
        "notices": _notices(keys.notices),
    }


def _devices_text(out: Out) -> None:
    for line in out["notices"]:
        print(line, file=sys.stderr)
    print(f"device list of {out['user_id']}, version {out['device_list_version']} (verified)")
    if not out["signed_by_my_identity"]:
        print("WARNING: not signed by this device's identity key", file=sys.stderr)
    for d in out["devices"]:
        tags = [t for t, on in (("this device", d["this_device"]), ("manager", d["manager"])) if on]
        extra = f" ({', '.join(tags)})" if tags else ""
        print(f"  device {d['device_id']}{extra}  suites {' '.join(d['suites'])}")


def _printer(as_json: bool) -> Callable[[m.Event], None]:
    def show(event: m.Event) -> None:
        if as_json:
            print(json.dumps(event.json()), flush=True)
            return
        if isinstance(event, m.Message):
            for w in event.warnings:
                print(f"warning: {w}", file=sys.stderr)
            print(event.line(), flush=True)
        else:
            print(event.line(), file=sys.stderr, flush=True)

    return show


def _uid(text: str) -> str:
    try:
        return normalize(text)
    except InvalidUserId as e:
        raise m.MessengerError(f"not a user ID: {text!r} ({e})") from None


def _groups_text(rows: list[Out], notices: list[m.Notice]) -> None:
    for n in notices:
        print(n.line(), file=sys.stderr)
    if not rows:
        print("no groups yet")
    for g in rows:
        flags = [g["kind"], g["mode"], "organisation" if g["managed"] else "user group"]
        if g["left"]:
            flags.append("LEFT")
        print(
            f"{g['id']}  {g['title']}  ({', '.join(flags)})  {g['members']} members  "
            f"epoch {g['epoch']}"
        )
        for w in g["warnings"]:
            print(f"  WARNING: {w}")


def _group_cmd(profile: Profile, args: argparse.Namespace, as_json: bool) -> int:
    uids = [_uid(u) for u in args.user_ids]
    if args.group_cmd == "create":
        conv_id, notices = trio.run(
            lambda: groups.create_group(
                profile, args.name, uids, channel=args.channel, multi=args.asymmetric
            )
        )
        out: Out = {"group": conv_id.hex(), "name": args.name, "notices": _notices(notices)}
    else:
        add = uids if args.group_cmd == "add" else []
        remove = uids if args.group_cmd == "remove" else []
        conv_id, notices = trio.run(lambda: groups.change_group(profile, args.group, add, remove))
        out = {"group": conv_id.hex(), "notices": _notices(notices)}
    state = profile.load_state()
    g = state.groups.get(conv_id.hex())
    if g is not None:
        out["epoch"] = g.epoch
        out["members"] = len(groups.Groups.roster(g).members)
    if as_json:
        _print(out, True)
    else:
        for line in out["notices"]:
            print(line, file=sys.stderr)
        print(f"{out['group']}  epoch {out.get('epoch')}  {out.get('members')} members")
    return 0


def _location(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        lat_s, lon_s = text.split(",")
        lat, lon = float(lat_s), float(lon_s)
    except ValueError:
        raise m.MessengerError(f"--location takes LAT,LON in degrees, got {text!r}") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise m.MessengerError(f"--location out of range: {text!r}")
    return lat, lon


def _reply_to(text: str | None) -> bytes:
    if text is None:
        return b""
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 16:
        raise m.MessengerError(f"--reply-to takes a msg_id (32 hex characters), got {text!r}")
    return raw


def _send_other(profile: Profile, args: argparse.Namespace, as_json: bool) -> int:
    """``send --group G TEXT`` and ``send USER_ID|--group G --file PATH [CAPTION]``."""
    rest: list[str] = list(args.args)
    to: str | None = None
    if args.group is None:
        if not rest:
            _err("usage: momedo send USER_ID --file PATH [CAPTION]")
            return 2
        to = _uid(rest.pop(0))
    if len(rest) > 1:
        _err("give the text (or caption) as one argument, quoted")
        return 2
    text = rest[0] if rest else ""
    if args.file is None:
        if not text:
            _err("usage: momedo send --group G TEXT")
            return 2
        if args.location is not None:
            _err("--location goes with --file")
            return 2
        reply = _reply_to(args.reply_to)
        sent, notices = trio.run(
            lambda: groups.send_group_text(
                profile, args.group, text, reply_to=reply, urgent=args.urgent
            )
        )
        out: Out = {
            "group": sent.conv_id.hex(),
            "group_name": sent.name,
            "msg_id": sent.message_id.hex(),
            "devices": list(sent.devices),
            "notices": _notices(notices),
        }
        shown = f'"{sent.name}" ({len(sent.devices)} device(s))'
    else:
        if args.reply_to is not None or args.urgent:
            _err("--reply-to and --urgent go with a text message, not --file")
            return 2
        loc = _location(args.location)
        res = trio.run(
            lambda: attachments.send_file(
                profile, args.file, to=to, group=args.group, caption=text, location=loc
            )
        )
        out = {**res.json(), "notices": _notices(res.notices)}
        shown = f"{res.target} ({res.devices} device(s)): {res.name}, {res.size} bytes"
    if as_json:
        _print(out, True)
    else:
        for line in out["notices"]:
            print(line, file=sys.stderr)
        print(f"sent to {shown}")
    return 0


def _run_with(profile: Profile, fn: Callable[[m.Messenger], Awaitable[Out]]) -> Out:
    result: Out = trio.run(m.with_messenger, profile, fn)
    return result


def _parser() -> argparse.ArgumentParser:
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
    p.add_argument(
        "--suites",
        type=_suites_arg,
        default=(m.SUPPORTED_SUITES[0],),
        help="suites this device lists, e.g. 2,3 or 3 (default: 2); the identity key uses "
        "the highest",
    )
    sub.add_parser("whoami", help="this device's user ID, server and identity fingerprint")
    sub.add_parser(
        "status",
        help="log in and count waiting messages (without taking them); shows the server addresses",
    )
    p = sub.add_parser(
        "quiet", help="your own quiet hours: they can only add quiet time to the operator's"
    )
    qsub = p.add_subparsers(dest="quiet_cmd", required=True)
    qp = qsub.add_parser(
        "set", help="your working window, e.g. 'Mon-Fri 08:00-16:00 Europe/Berlin'"
    )
    qp.add_argument("window")
    qp.add_argument("--defer", action="store_true", help="phones get work messages only then too")
    qsub.add_parser("clear", help="remove your own setting (the operator's policies stay)")
    p = sub.add_parser(
        "send",
        help="send an end-to-end encrypted message",
        usage="momedo send USER_ID TEXT | --group G TEXT | USER_ID|--group G --file PATH "
        "[--location LAT,LON] [CAPTION]",
    )
    p.add_argument("args", nargs="*", metavar="USER_ID TEXT")
    p.add_argument("--group", metavar="G", help="send to a group or channel (ID, prefix, name)")
    p.add_argument("--file", type=Path, metavar="PATH", help="send a file (encrypted)")
    p.add_argument("--location", metavar="LAT,LON", help="attach a location to the file")
    p.add_argument("--reply-to", metavar="MSG_ID", help="answer this message (its msg_id)")
    p.add_argument(
        "--urgent",
        action="store_true",
        help="pass the recipients' quiet hours (only if the operator allowed you or the group)",
    )
    p = sub.add_parser("recv", help="print waiting messages and exit")
    p.add_argument(
        "--wait", type=float, default=0.0, help="keep listening this many seconds after catch-up"
    )
    p.add_argument("--save-dir", type=Path, metavar="DIR", help="save received attachments here")
    p = sub.add_parser(
        "listen",
        help="print messages as they arrive until interrupted (reconnects, to any of the "
        "server's addresses, when the connection breaks)",
    )
    p.add_argument("--save-dir", type=Path, metavar="DIR", help="save received attachments here")
    p = sub.add_parser("group", help="create a group or channel, add or remove members")
    gsub = p.add_subparsers(dest="group_cmd", required=True)
    gp = gsub.add_parser("create", help="create a group (you are its admin)")
    gp.add_argument("name")
    gp.add_argument("user_ids", nargs="*", metavar="USER_ID")
    gp.add_argument("--channel", action="store_true", help="only admins post (announcements)")
    gp.add_argument(
        "--asymmetric", action="store_true", help="per-device wraps instead of sender chains"
    )
    for what in ("add", "remove"):
        gp = gsub.add_parser(what, help=f"{what} members (admins of user groups)")
        gp.add_argument("group", metavar="G")
        gp.add_argument("user_ids", nargs="+", metavar="USER_ID")
    sub.add_parser("groups", help="known groups and channels (verified rosters)")
    sub.add_parser("contacts", help="pinned contacts and their trust level")
    p = sub.add_parser("verify", help="safety number and QR string for a contact")
    p.add_argument("user_id")
    p = sub.add_parser("trust", help="accept a changed identity key, or mark a contact verified")
    p.add_argument("user_id")
    p.add_argument("--qr", help="the contact's scanned QR string (MOMEDO1:…)")
    p = sub.add_parser("devices", help="your user's device list as the server has it (verified)")
    dsub = p.add_subparsers(dest="devices_cmd")
    dp = dsub.add_parser("remove", help="publish a device list without DEVICE_ID (manager)")
    dp.add_argument("device_id", type=int)
    p = sub.add_parser("link", help="link a further device to your user")
    lsub = p.add_subparsers(dest="link_cmd", required=True)
    lp = lsub.add_parser("new", help="on an existing device: print a link string and wait")
    lp.add_argument(
        "--wait",
        type=float,
        default=linking.LINK_WAIT_S,
        help="seconds to wait for the new device (default %(default)s)",
    )
    lp = lsub.add_parser("accept", help="on the new device: link with the string from `link new`")
    lp.add_argument("code")
    lp.add_argument("--name", default=socket.gethostname(), help="device name")
    lp.add_argument(
        "--wait",
        type=float,
        default=linking.LINK_WAIT_S,
        help="seconds to wait for the existing device (default %(default)s)",
    )
    p = sub.add_parser(
        "bridge",
        help="run this profile as a bot: local HTTP API and webhooks (docs/INTEGRATIONS.md)",
    )
    p.add_argument(
        "--listen", default="127.0.0.1:8480", metavar="HOST:PORT", help="default %(default)s"
    )
    p.add_argument("--webhook", metavar="URL", help="POST every inbound message here (signed)")
    p.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="the API token (mode 0600; created if missing; default PROFILE/bridge/token)",
    )
    return parser


def _bridge(profile: Profile, args: argparse.Namespace) -> int:
    from momedod.client.bridge.run import BridgeOptions, Running, run_bridge
    from momedod.client.bridge.service import BridgeError
    from momedod.observability.logging import configure

    configure()
    options = BridgeOptions(args.listen, args.webhook, args.token_file)
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            running: Running = await nursery.start(run_bridge, profile, options)
            if running.token_created:
                print(
                    f"momedo bridge: created the API token in {running.token_file}", file=sys.stderr
                )
            print(f"momedo bridge: serving {running.url}", file=sys.stderr, flush=True)

    failure: str | None = None
    try:
        trio.run(main)
    except* BridgeError as group:
        failure = str(group.exceptions[0])
    except* OSError as group:
        failure = f"cannot listen on {args.listen}: {group.exceptions[0]}"
    if failure is not None:
        _err(failure)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # `send` takes its words before and after the options (send USER --file F CAPTION).
    args, extra = parser.parse_known_args(argv)
    if extra and (args.cmd != "send" or any(x.startswith("-") for x in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.args = [*args.args, *extra]
    try:
        return _main(args)
    except InvalidInviteLink as e:
        _err(f"invalid invite link: {e}")
    except m.KeyChangedError as e:
        print(str(e), file=sys.stderr)
        return 3
    except (ClientError, ProfileError, m.MessengerError) as e:
        _err(str(e))
    except E2EError as e:
        _err(f"{e} ({e.reason})")
    except KeyboardInterrupt:
        return 130
    return 1


def _main(args: argparse.Namespace) -> int:
    as_json: bool = args.json
    if args.cmd == "link" and args.link_cmd == "accept":
        profile = open_profile(args.profile, create=True)
        with profile.locked():
            if profile.enrolled():
                _err(f"{profile.path} already holds an enrolled device")
                return 1
            out = trio.run(
                lambda: linking.link_accept(
                    profile, args.code, args.name, _printer(as_json), wait=args.wait
                )
            )
        if as_json:
            _print(out, True)
        else:
            print(f"linked: this is device {out['device_id']} of user {out['user_id']}")
            print(f"identity fingerprint: {out['identity_fingerprint']}")
            print(f"QR: {out['qr']}")
            print(f"contacts pinned: {out['contacts_pinned']}")
        return 0
    if args.cmd == "enroll":
        profile = open_profile(args.profile, create=True)
        with profile.locked():
            if profile.enrolled():
                _err(f"{profile.path} already holds an enrolled device")
                return 1
            _creds, notices = trio.run(m.enroll, profile, args.link, args.name, args.suites)
        out = _whoami(profile)
        out["notices"] = _notices(notices)
        _print(out, as_json)
        return 0

    profile = open_profile(args.profile)
    if args.cmd == "whoami":
        _print(_whoami(profile), as_json)
        return 0
    if args.cmd == "status":
        _print(trio.run(_status, profile.credentials()), as_json)
        return 0
    if args.cmd == "quiet":
        _print(trio.run(_quiet, profile.credentials(), args), as_json)
        return 0

    with profile.locked():
        if args.cmd == "bridge":
            return _bridge(profile, args)
        if args.cmd == "send" and (args.group, args.file, args.location) != (None, None, None):
            return _send_other(profile, args, as_json)
        if args.cmd == "group":
            return _group_cmd(profile, args, as_json)
        if args.cmd == "groups":
            rows, notices = trio.run(groups.list_groups, profile)
            if as_json:
                _print({"groups": rows, "notices": _notices(notices)}, True)
            else:
                _groups_text(rows, notices)
            return 0
        if args.cmd == "send":
            if len(args.args) != 2:
                _err("usage: momedo send USER_ID TEXT (or --group G, --file PATH)")
                return 2
            uid = _uid(args.args[0])
            reply = _reply_to(args.reply_to)
            sent, notices = trio.run(
                lambda: m.send_text(profile, uid, args.args[1], reply_to=reply, urgent=args.urgent)
            )
            out = {
                "to": display(uid),
                "msg_id": sent.message_id.hex(),
                "devices": [f"{display(r.user_id)}/{r.device_id}" for r in sent.recipients],
                "notices": _notices(notices),
            }
            if as_json:
                _print(out, True)
            else:
                for line in out["notices"]:
                    print(line, file=sys.stderr)
                print(f"sent to {out['to']} ({len(sent.recipients)} device(s))")
            return 0
        if args.cmd in ("recv", "listen"):
            wait = None if args.cmd == "listen" else max(0.0, args.wait)
            if args.cmd == "listen":
                signal.signal(signal.SIGTERM, signal.default_int_handler)
            save_dir: Path | None = args.save_dir
            trio.run(lambda: m.receive(profile, _printer(as_json), wait=wait, save_dir=save_dir))
            return 0
        if args.cmd == "contacts":
            out = _run_with(profile, _contacts)
            if as_json:
                _print(out, True)
            else:
                _contacts_text(out)
            return 0
        if args.cmd == "verify":
            uid = _uid(args.user_id)

            async def verify(msgr: m.Messenger) -> Out:
                res: Out = await msgr.verification(uid)
                msgr.save()
                return res

            out = _run_with(profile, verify)
            if not as_json:
                for line in out.pop("notices"):
                    print(line, file=sys.stderr)
                if not out["matches_pin"]:
                    print(
                        f"WARNING: this is NOT the key you pinned for {out['user_id']}; "
                        f"accept it only after comparing: momedo trust {out['user_id']}",
                        file=sys.stderr,
                    )
                print(f"safety number with {out['user_id']}:")
                nums = out["safety_number"].split()
                for i in range(0, len(nums), 4):
                    print("  " + " ".join(nums[i : i + 4]))
                print(f"their QR: {out['their_qr']}")
                print(f"your QR:  {out['my_qr']}")
                print(f"trust level: {out['level']}")
            else:
                _print(out, True)
            return 0
        if args.cmd == "trust":
            uid = _uid(args.user_id)
            out = _run_with(profile, lambda msgr: _trust(msgr, uid, args.qr))
            _print(out, as_json)
            return 0
        if args.cmd == "link":

            def show_code(code: str) -> None:
                if as_json:
                    print(json.dumps({"type": "link_code", "code": code}), flush=True)
                else:
                    print("on the new device, run:", file=sys.stderr)
                    print(f"  momedo link accept '{code}'", file=sys.stderr)
                    print(code, flush=True)

            out = trio.run(
                lambda: linking.link_new(profile, show_code, _printer(as_json), wait=args.wait)
            )
            if as_json:
                _print(out, True)
            else:
                print(
                    f"linked device {out['linked_device_id']} "
                    f"(device list version {out['device_list_version']})"
                )
            return 0
        if args.cmd == "devices" and args.devices_cmd == "remove":
            dev: int = args.device_id
            out = _run_with(profile, lambda msgr: linking.remove_device(msgr, dev))
            if as_json:
                _print(out, True)
            else:
                print(f"removed device {dev} (device list version {out['device_list_version']})")
                print(out["hint"], file=sys.stderr)
            return 0
        if args.cmd == "devices":
            out = _run_with(profile, _devices)
            if as_json:
                _print(out, True)
            else:
                _devices_text(out)
            return 0
    raise AssertionError(args.cmd)
