"""Logging: journald priority prefixes, the formats, and no secrets in the log at debug level."""

from __future__ import annotations

import base64
import io
import json
import re
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from support import DaemonProcess, admin_call, free_port

from momedod.client.transport import ClientError, Credentials, connect, connect_invite
from momedod.observability import logging as mlog
from momedod.protocol import frames as f
from momedod.protocol import records as rec
from momedod.protocol.invite import parse_invite_link

SUITE = 2
PRIORITY = re.compile(rb"^<([0-7])>")

# --- the formats, in process --------------------------------------------------------------


@pytest.fixture
def restore_structlog() -> Iterator[None]:
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def configured(fmt: str, stream: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(sys, "stderr", stream)
    mlog.configure("debug", fmt)
    return structlog.get_logger("test")


def test_journald_lines_carry_syslog_priorities(
    monkeypatch: pytest.MonkeyPatch, restore_structlog: None
) -> None:
    out = io.StringIO()
    log = configured("journald", out, monkeypatch)
    log.debug("d.event", n=1)
    log.info("i.event", peer="127.0.0.1:4000")
    log.warning("w.event")
    log.error("e.event")
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        log.exception("x.event")
    lines = out.getvalue().splitlines()
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>", "<3>"]
    assert lines[1] == "<6>event=i.event peer=127.0.0.1:4000 level=info"
    # The traceback stays on the prefixed line (journald splits entries at newlines).
    assert lines[4].startswith("<3>event=x.event") and "RuntimeError: boom" in lines[4]
    assert "Traceback" in lines[4]


def test_logfmt_and_json_lines(monkeypatch: pytest.MonkeyPatch, restore_structlog: None) -> None:
    out = io.StringIO()
    configured("logfmt", out, monkeypatch).warning("w.event", sessions=3)
    line = out.getvalue().strip()
    assert re.fullmatch(r"timestamp=\S+Z event=w\.event sessions=3 level=warning", line), line

    out = io.StringIO()
    log = configured("json", out, monkeypatch)
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("x.event", conn=7)
    doc = json.loads(out.getvalue())
    assert doc["event"] == "x.event" and doc["conn"] == 7 and doc["level"] == "error"
    assert "ValueError: bad" in doc["exception"]


@pytest.mark.parametrize("fmt", ["journald", "logfmt", "json", "console"])
def test_redaction_of_secret_keys(
    fmt: str, monkeypatch: pytest.MonkeyPatch, restore_structlog: None
) -> None:
    out = io.StringIO()
    secret = secrets.token_hex(16)
    configured(fmt, out, monkeypatch).info(
        "oops", payload=secret, part=secret, record=secret, private_key=secret, seed=secret,
        invite_code=secret, transport_pub=secret, signature=secret, size=5,
    )  # fmt: skip
    text = out.getvalue()
    assert secret not in text
    assert "[redacted]" in text and "5" in text


def test_auto_format_detects_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_structlog: None
) -> None:
    with open(tmp_path / "stderr", "w") as err, open(tmp_path / "other", "w") as other:
        monkeypatch.setattr(sys, "stderr", err)
        st = Path(err.name).stat()
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert mlog.resolve_format("auto") == "journald"
        assert mlog.resolve_format("json") == "json"  # an explicit format wins
        # JOURNAL_STREAM inherited by a process whose stderr went elsewhere: not the journal.
        monkeypatch.setattr(sys, "stderr", other)
        assert mlog.resolve_format("auto") == "json"
        monkeypatch.setenv("JOURNAL_STREAM", "garbage")
        assert mlog.resolve_format("auto") == "json"
        monkeypatch.delenv("JOURNAL_STREAM")
        assert mlog.resolve_format("auto") == "json"


# --- the real daemon under journald-style stderr ------------------------------------------


def forms(secret: bytes) -> list[bytes]:
    """The ways bytes could end up in a text log."""
    b64 = base64.b64encode(secret)
    url = base64.urlsafe_b64encode(secret)
    out = [secret, secret.hex().encode(), secret.hex().upper().encode(), b64, url]
    out += [b64.rstrip(b"="), url.rstrip(b"="), repr(secret)[2:-1].encode()]
    return [x for x in out if len(x) >= 12]


def record(body: bytes, record_type: int, signer: int) -> bytes:
    return rec.build_record(
        SUITE, record_type, body, [(signer, secrets.token_bytes(32), secrets.token_bytes(64))]
    )


def transport_pub(creds: Credentials) -> bytes:
    key = Ed25519PrivateKey.from_private_bytes(creds.transport_seed)
    return key.public_key().public_bytes_raw()


async def test_daemon_under_journald_prefixes_every_line_and_logs_no_secrets(
    tmp_path: Path,
) -> None:
    proc = DaemonProcess(tmp_path, free_port())  # [log] level = "debug"
    config = proc.config_path.read_text()
    assert 'format = "json"' in config
    proc.config_path.write_text(config.replace('format = "json"', 'format = "auto"'))
    proc.log_path.touch()  # the daemon's stderr (and stdout): journald would pass its inode
    st = proc.log_path.stat()
    proc.start(env_extra={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    secret_bytes: dict[str, bytes] = {}
    secret_text: dict[str, str] = {}
    try:
        creds = {}
        for name in ("Alice", "Bob"):
            link = admin_call(proc.socket, "user.add", name=name)["invite"]["link"]
            secret_text[f"{name} invite code"] = parse_invite_link(link).code
            async with connect_invite(link, f"{name}-phone") as (_c, creds[name]):
                pass
            secret_bytes[f"{name} transport seed"] = creds[name].transport_seed
            secret_bytes[f"{name} transport pub"] = transport_pub(creds[name])
        alice, bob = creds["Alice"], creds["Bob"]
        # A reused invite is refused, and the refusal is logged: without the code.
        with pytest.raises(ClientError):
            async with connect_invite(link, "again"):
                pass

        ed_pk, mldsa_pk, prekey_pub = (secrets.token_bytes(n) for n in (32, 64, 32))
        identity = record(
            rec.identity_body(bob.user_id, SUITE, ed_pk, mldsa_pk, 1_700_000_000_000, bytes(32)),
            rec.RECORD_IDENTITY,
            rec.SIGNER_UIK,
        )
        otpk = record(
            rec.prekey_body(
                bob.user_id, bob.device_id, SUITE, rec.PREKEY_OTPK, 77, prekey_pub, 2**40
            ),
            rec.RECORD_PREKEY,
            rec.SIGNER_DK,
        )
        secret_bytes.update(
            {
                "identity record": identity,
                "identity ed25519 key": ed_pk,
                "identity ML-DSA key": mldsa_pk,
                "prekey record": otpk,
                "prekey public key": prekey_pub,
            }
        )
        async with connect(bob) as b:
            await b.key_put(identity)
            await b.key_put(otpk)

        payload = b"PAYLOAD-MARKER-" + secrets.token_bytes(48)
        part = b"PART-MARKER-" + secrets.token_bytes(32)
        secret_bytes.update({"payload": payload, "part": part})
        async with connect(alice) as a:
            assert identity in await a.key_get(bob.user_id)
            assert await a.key_claim(bob.user_id, bob.device_id, SUITE) == otpk
            await a.send(
                secrets.token_bytes(16), payload, [f.Recipient(bob.user_id, bob.device_id, part)]
            )
        async with connect(bob) as b:
            ev = await b.receive(10)
            assert isinstance(ev, f.Deliver) and ev.payload == payload and ev.part == part
            await b.ack([ev.seq])
    finally:
        proc.stop()

    key = load_pem_private_key((proc.state / "tls" / "key.pem").read_bytes(), None)
    secret_bytes["TLS private key"] = key.private_bytes(
        Encoding.DER, PrivateFormat.PKCS8, NoEncryption()
    )
    log = proc.log_path.read_bytes()
    lines = log.splitlines()
    assert len(lines) > 20
    for line in lines:
        assert PRIORITY.match(line), f"no priority prefix: {line[:200]!r}"
    priorities = {PRIORITY.match(line).group(1) for line in lines}  # type: ignore[union-attr]
    assert {b"6", b"7"} <= priorities  # info, and debug is really on
    # Per-connection context: connection id and peer, and the user once authenticated.
    authenticated = [line for line in lines if b"event=session.authenticated" in line]
    assert authenticated
    for line in authenticated:
        assert re.search(rb" conn=\d+ ", line) and b" peer=127.0.0.1:" in line, line
        assert b" user=" in line, line

    for what, secret in secret_bytes.items():
        for form in forms(secret):
            assert form not in log, f"{what} in the log ({form[:16]!r}...)"
    for what, text in secret_text.items():
        for variant in {text, text.lower(), "-".join(re.findall(".{1,4}", text))}:
            assert variant.encode() not in log, f"{what} in the log"
    pem_body = (proc.state / "tls" / "key.pem").read_bytes().splitlines()[1:-1]
    for chunk in pem_body:
        assert chunk not in log, "TLS key PEM in the log"
