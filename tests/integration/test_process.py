"""The daemon as a real process: crash safety, the dev server, blindness to payloads."""

from __future__ import annotations

import os
import secrets
import subprocess

import trio
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from support import VENV_BIN, DaemonProcess, admin_call, free_port

from momedod.client.transport import ClientError, connect, connect_invite
from momedod.protocol import frames as f


async def enroll_via(proc: DaemonProcess, name: str):  # type: ignore[no-untyped-def]
    link = admin_call(proc.socket, "user.add", name=name)["invite"]["link"]
    async with connect_invite(link, name) as (_c, creds):
        return creds


async def collect(creds, timeout: float = 10.0, ack: bool = True) -> list[f.Deliver]:  # type: ignore[no-untyped-def]
    """Everything waiting for a device, acknowledged as it arrives (like a real client)."""
    got = []
    async with connect(creds) as c:
        while not isinstance(ev := await c.receive(timeout), f.Drained):
            got.append(ev)
            if ack:
                await c.ack([ev.seq])
    return got


async def test_sigkill_during_burst_loses_no_accepted_message(tmp_path):
    proc = DaemonProcess(tmp_path, free_port())
    proc.start()
    try:
        senders = [await enroll_via(proc, f"Sender{i}") for i in range(4)]
        rcpts = [await enroll_via(proc, f"R{i}") for i in range(3)]
        to = [f.Recipient(r.user_id, r.device_id, b"") for r in rcpts]
        accepted: set[bytes] = set()

        async def burst(creds) -> None:  # type: ignore[no-untyped-def]
            try:
                async with connect(creds) as c:
                    for i in range(100_000):
                        mid = secrets.token_bytes(16)
                        await c.send(mid, f"{creds.user_id}-{i}".encode() * 20, to)
                        accepted.add(mid)
            except ClientError:
                return  # the daemon died under us

        async with trio.open_nursery() as n:
            for s in senders:  # concurrent senders: the kill lands inside group commits
                n.start_soon(burst, s)
            while len(accepted) < 400:
                await trio.sleep(0.01)
            await trio.to_thread.run_sync(proc.kill)
        assert len(accepted) >= 400
        proc.start()
        for r in rcpts:
            got = await collect(r)
            ids = [d.message_id for d in got]
            assert accepted <= set(ids), f"{len(accepted - set(ids))} accepted messages lost"
            # Exactly once: no message twice, and after the acks nothing comes back.
            assert len(ids) == len(set(ids))
            assert await collect(r) == []
    finally:
        proc.stop()


async def test_state_dir_and_logs_never_hold_payload(tmp_path):
    proc = DaemonProcess(tmp_path, free_port())  # debug-level JSON logs to a file
    proc.start()
    try:
        alice = await enroll_via(proc, "Alice")
        bob = await enroll_via(proc, "Bob")
        marker = b"PLAINTEXT-MARKER-" + secrets.token_hex(8).encode()
        key = ChaCha20Poly1305.generate_key()  # known to the clients only
        nonce = os.urandom(12)
        envelope = nonce + ChaCha20Poly1305(key).encrypt(nonce, marker * 4, None)
        part = secrets.token_bytes(48)
        async with connect(alice) as a:
            for _ in range(3):
                await a.send(
                    secrets.token_bytes(16),
                    envelope,
                    [f.Recipient(bob.user_id, bob.device_id, part)],
                )
        got = await collect(bob)
        assert got and got[0].payload == envelope
        opened = ChaCha20Poly1305(key).decrypt(got[0].payload[:12], got[0].payload[12:], None)
        assert marker in opened
    finally:
        proc.stop()
    log = proc.log_path.read_bytes()
    assert b'"level": "debug"' in log or b'"level":"debug"' in log or b"debug" in log
    for needle in (
        envelope,
        envelope.hex().encode(),
        part.hex().encode(),
        repr(envelope)[2:40].encode(),
    ):
        assert needle not in log
    for path in proc.state.rglob("*"):
        if path.is_file():
            assert marker not in path.read_bytes(), f"plaintext marker in {path}"


async def test_dev_server_prints_fingerprint_and_next_step(tmp_path):
    port = free_port()
    cfg = tmp_path / "dev.toml"
    cfg.write_text(f"[[listener]]\nport = {port}\n[metrics]\nport = {free_port()}\n")
    env = dict(os.environ, MOMEDO_CONFIG=str(cfg))
    proc = subprocess.Popen(
        [str(VENV_BIN / "momedod"), "run", "--dev"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        sock = tmp_path / ".momedo-dev" / "admin.sock"
        with trio.fail_after(20):
            while True:
                try:
                    info = admin_call(sock, "server.info")
                    break
                except (OSError, RuntimeError, ValueError):
                    await trio.sleep(0.1)
        assert info["listeners"][0]["address"] == "127.0.0.1"
        assert info["listeners"][0]["port"] == port
        out = admin_call(sock, "user.add", name="Erika")
        async with connect_invite(out["invite"]["link"], "dev") as (client, _creds):
            await client.ping()
        assert (tmp_path / ".momedo-dev" / "tls" / "key.pem").stat().st_mode & 0o077 == 0
    finally:
        proc.terminate()
        output = proc.communicate(timeout=15)[0].decode()
    assert info["fingerprint"] in output
    assert "momedoctl --dev user add" in output
    assert proc.returncode == 0


async def test_momedoctl_disable_disconnects_within_a_second(tmp_path):
    proc = DaemonProcess(tmp_path, free_port())
    proc.start()
    try:
        alice = await enroll_via(proc, "Alice")
        async with connect(alice) as a:
            await a.ping()
            ctl = await trio.to_thread.run_sync(
                lambda: subprocess.run(
                    [
                        str(VENV_BIN / "momedoctl"),
                        "-c",
                        str(proc.config_path),
                        "user",
                        "disable",
                        alice.user_id,
                    ],
                    capture_output=True,
                    text=True,
                    timeout=20,
                )
            )
            assert ctl.returncode == 0, ctl.stderr
            with trio.fail_after(1.0):
                try:
                    while True:
                        await a.receive()
                except ClientError as e:
                    assert "USER_DISABLED" in str(e)
    finally:
        proc.stop()


def test_check_config_reports_bad_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[listener]]\nport = "abc"\n')
    res = subprocess.run(
        [str(VENV_BIN / "momedod"), "check-config", "-c", str(bad)], capture_output=True, text=True
    )
    assert res.returncode == 1
    assert str(bad) in res.stderr + res.stdout and "port" in res.stderr + res.stdout
    assert "Traceback" not in res.stderr
