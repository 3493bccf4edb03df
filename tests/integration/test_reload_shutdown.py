"""SIGHUP reload (certificates, listeners, limits), SIGTERM drain and systemd notifications."""

from __future__ import annotations

import contextlib
import datetime
import secrets
import signal
import socket
from pathlib import Path

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from support import DaemonProcess, admin_call, free_port, raw_connect

from momedod.client.transport import ClientError, connect, connect_invite
from momedod.protocol import frames as f


def write_cert(path: Path, key: ec.EllipticCurvePrivateKey, days: int) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "momedo.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert.public_bytes(serialization.Encoding.DER)


def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


async def served_certificate(port: int) -> bytes:
    raw = await raw_connect("127.0.0.1", port)
    der = raw.stream.getpeercert(binary_form=True)
    await raw.aclose()
    assert der is not None
    return der


def listener_block(port: int, cert: Path, key: Path) -> str:
    return f'[[listener]]\naddress = "127.0.0.1"\nport = {port}\ncert = "{cert}"\nkey = "{key}"\n'


def write_config(proc: DaemonProcess, listeners: str, limits: str = "") -> None:
    proc.config_path.write_text(
        f'[server]\nname = "proc"\nstate_dir = "{proc.state}"\n{listeners}'
        f'[admin]\nsocket = "{proc.socket}"\n[log]\nlevel = "debug"\nformat = "json"\n'
        f"[metrics]\nport = {proc.metrics_port}\n{limits}"
    )


async def hup(proc: DaemonProcess, marker: str) -> None:
    """SIGHUP and wait until the daemon logged the end of that reload."""
    before = proc.log_path.read_text().count(marker)
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGHUP)
    with trio.fail_after(10):
        while proc.log_path.read_text().count(marker) == before:
            await trio.sleep(0.05)


async def test_sighup_renews_certificate_without_dropping_clients(tmp_path):
    port = free_port()
    key = ec.generate_private_key(ec.SECP256R1())
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    first = write_cert(cert_path, key, days=30)
    write_key(key_path, key)
    proc = DaemonProcess(tmp_path, port)
    write_config(proc, listener_block(port, cert_path, key_path))
    proc.start()
    try:
        link = admin_call(proc.socket, "user.add", name="Anna")["invite"]["link"]
        async with connect_invite(link, "phone") as (_c, anna):
            pass
        link = admin_call(proc.socket, "user.add", name="Ben")["invite"]["link"]
        async with connect_invite(link, "phone") as (_c, ben):
            pass
        assert await served_certificate(port) == first
        async with connect(anna) as live:
            # Renewal: same key, new certificate (as certbot --reuse-key or an internal CA does).
            renewed = write_cert(cert_path, key, days=90)
            await hup(proc, "reload.done")
            await live.ping()  # the connection made before the reload keeps working
            assert await served_certificate(port) == renewed  # new connections: new certificate
            async with connect(ben) as again:  # a new login: the pinned key still matches
                await again.ping()
            # A certificate whose key is not the configured key: refused, the old one stays.
            other = ec.generate_private_key(ec.SECP256R1())
            write_cert(cert_path, other, days=10)
            await hup(proc, "reload.done")
            assert "reload.tls_failed" in proc.log_path.read_text()
            assert await served_certificate(port) == renewed
            await live.ping()
        info = admin_call(proc.socket, "server.info")
        assert info["listeners"][0]["certificate_expires"].startswith(
            (datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=90)).strftime("%Y-%m")
        )
    finally:
        proc.stop()


async def test_sighup_adds_and_removes_listeners_and_applies_limits(tmp_path):
    port, extra = free_port(), free_port()
    key = ec.generate_private_key(ec.SECP256R1())
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_cert(cert_path, key, days=30)
    write_key(key_path, key)
    proc = DaemonProcess(tmp_path, port)
    write_config(proc, listener_block(port, cert_path, key_path))
    proc.start()
    try:
        link = admin_call(proc.socket, "user.add", name="Anna")["invite"]["link"]
        async with connect_invite(link, "phone") as (_c, anna):
            pass
        write_config(
            proc,
            listener_block(port, cert_path, key_path) + listener_block(extra, cert_path, key_path),
            "[limits]\nmax_recipients = 7\n",
        )
        await hup(proc, "reload.done")
        from dataclasses import replace

        async with connect(replace(anna, port=extra)) as on_extra:
            assert on_extra.welcome is not None and on_extra.welcome.max_recipients == 7
            write_config(proc, listener_block(port, cert_path, key_path))
            await hup(proc, "reload.done")
            await on_extra.ping()  # removing a listener closes none of its connections
            with trio.fail_after(5):
                try:
                    async with connect(replace(anna, port=extra), timeout=2):
                        raise AssertionError("the removed listener still accepts")
                except ClientError:
                    pass
        # A broken config file is refused and the running configuration stays.
        proc.config_path.write_text("[limits]\nmax_recipients = 'many'\n")
        await hup(proc, "reload.failed")
        async with connect(anna) as c:
            assert c.welcome is not None and c.welcome.max_recipients == 1000
    finally:
        proc.stop()


async def test_sigterm_during_burst_loses_no_accepted_message(tmp_path):
    proc = DaemonProcess(tmp_path, free_port())
    proc.start()
    try:

        async def enroll(name: str):  # type: ignore[no-untyped-def]
            link = admin_call(proc.socket, "user.add", name=name)["invite"]["link"]
            async with connect_invite(link, name) as (_c, creds):
                return creds

        senders = [await enroll(f"S{i}") for i in range(4)]
        rcpt = await enroll("R")
        accepted: set[bytes] = set()
        reasons: list[str] = []

        async def burst(creds) -> None:  # type: ignore[no-untyped-def]
            try:
                async with connect(creds) as c:
                    while True:
                        mid = secrets.token_bytes(16)
                        await c.send(mid, mid * 10, [f.Recipient(rcpt.user_id, 1, b"")])
                        accepted.add(mid)
            except ClientError as e:
                reasons.append(str(e))

        async with trio.open_nursery() as n:
            for s in senders:
                n.start_soon(burst, s)
            while len(accepted) < 200:
                await trio.sleep(0.01)
            assert proc.proc is not None
            proc.proc.send_signal(signal.SIGTERM)
        assert await trio.to_thread.run_sync(proc.proc.wait, 15) == 0
        assert any("SHUTTING_DOWN" in r for r in reasons), reasons
        proc.start()
        got: list[bytes] = []
        async with connect(rcpt) as c:
            while not isinstance(ev := await c.receive(10), f.Drained):
                got.append(ev.message_id)
                await c.ack([ev.seq])
        assert accepted <= set(got), f"{len(accepted - set(got))} accepted messages lost"
        assert len(got) == len(set(got))
    finally:
        proc.stop()


async def test_systemd_notifications_and_watchdog(tmp_path):
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(0.2)
    messages: list[str] = []

    async def wait_for(text: str) -> None:
        def poll() -> None:
            with contextlib.suppress(TimeoutError):
                messages.append(sock.recv(4096).decode())

        with trio.fail_after(15):
            while not any(text in m for m in messages):
                await trio.to_thread.run_sync(poll)

    proc = DaemonProcess(tmp_path, free_port())
    try:
        proc.start(env_extra={"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "1000000"})
        await wait_for("READY=1")
        await wait_for("WATCHDOG=1")
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGHUP)
        await wait_for("RELOADING=1")
        reloading = next(m for m in messages if "RELOADING=1" in m)
        assert "MONOTONIC_USEC=" in reloading
        messages.clear()
        await wait_for("READY=1")
        proc.proc.send_signal(signal.SIGTERM)
        await wait_for("STOPPING=1")
        assert await trio.to_thread.run_sync(proc.proc.wait, 15) == 0
    finally:
        proc.stop()
        sock.close()
