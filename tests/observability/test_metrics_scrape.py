"""A live /metrics scrape of the real daemon after real traffic, as Prometheus sees it."""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from support import DaemonProcess, admin_call, free_port

import momedod
from momedod.client.transport import Credentials, ServerError, connect, connect_invite
from momedod.protocol import frames as f
from momedod.protocol.errors import ErrorCode
from momedod.protocol.userid import display

# Every label name the daemon may use: bounded sets, never a user, device or group.
ALLOWED_LABELS = {
    "listener", "reason", "kind", "error", "operation", "result", "command", "version",
    "node", "state",  # momedod_node_info, momedod_cluster_nodes: one value per node / state
    "le",  # histogram buckets
    "generation", "implementation", "major", "minor", "patchlevel",  # python_* collectors
}  # fmt: skip

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def promtool() -> str:
    """Path of promtool; a missing one fails in CI (CI=true) and skips elsewhere."""
    path = shutil.which("promtool")
    if path is None:
        msg = "promtool not found (Debian package 'prometheus')"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{msg}: .ci/run must install it")
        pytest.skip(msg)
    return path


async def scrape(proc: DaemonProcess) -> str:
    url = f"http://127.0.0.1:{proc.metrics_port}/metrics"

    def get() -> str:
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert resp.status == 200
            body: bytes = resp.read()
            return body.decode()

    return await trio.to_thread.run_sync(get)


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def enroll(proc: DaemonProcess, name: str) -> Credentials:
    link = admin_call(proc.socket, "user.add", name=name)["invite"]["link"]
    async with connect_invite(link, f"{name}-phone") as (_client, creds):
        return creds


async def refused(creds_or_link: Credentials | str) -> ServerError:
    """Log in (credentials) or enroll (link) and return the server's refusal."""
    with pytest.raises(ServerError) as info:
        if isinstance(creds_or_link, str):
            async with connect_invite(creds_or_link, "again"):
                pass
        else:
            async with connect(creds_or_link):
                pass
    return info.value


async def tls_garbage(port: int) -> None:
    """A client that speaks plain text to the TLS port: a failed handshake."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        with trio.move_on_after(5):
            while await stream.receive_some(4096):
                pass


async def wait_for(
    proc: DaemonProcess, check: Callable[[Samples], bool], timeout: float = 5.0
) -> Samples:
    """Scrape until ``check(samples)`` holds (the daemon updates some values asynchronously)."""
    with trio.fail_after(timeout):
        while True:
            samples = parse(await scrape(proc))
            if check(samples):
                return samples
            await trio.sleep(0.05)


async def test_live_scrape_after_traffic(tmp_path: Path) -> None:
    proc = DaemonProcess(tmp_path, free_port())
    proc.start()
    listener = f"127.0.0.1:{proc.port}"
    sent = 7
    try:
        # The store gauges appear with the first housekeeping refresh, right after start-up.
        await wait_for(proc, lambda s: value(s, "momedod_state_dir_free_bytes") is not None)
        alice = await enroll(proc, "Alice")
        bob = await enroll(proc, "Bob")
        carol_link = admin_call(proc.socket, "user.add", name="Carol")["invite"]["link"]
        async with connect_invite(carol_link, "carol-phone") as (_c, carol):
            pass

        # Refusals an operator sees on the auth-failure panel, by reason.
        assert (await refused(carol_link)).code == ErrorCode.INVITE_INVALID  # a used invite
        wrong_key = dataclasses.replace(alice, transport_seed=secrets.token_bytes(32))
        assert (await refused(wrong_key)).code == ErrorCode.AUTH_FAILED
        unknown = dataclasses.replace(alice, device_id=4242)
        assert (await refused(unknown)).code == ErrorCode.AUTH_FAILED
        await tls_garbage(proc.port)

        async with connect(alice) as a, connect(bob) as b:
            assert isinstance(await b.receive(10), f.Drained)
            to = [f.Recipient(bob.user_id, bob.device_id, b"part")]
            ids = [secrets.token_bytes(16) for _ in range(sent)]
            for mid in ids:
                await a.send(mid, b"envelope " + mid, to)
            retry = await a.send(ids[0], b"envelope " + ids[0], to)  # a lost ACCEPTED, retried
            assert retry.duplicate
            got: list[bytes] = []
            while len(got) < sent:
                ev = await b.receive(10)
                assert isinstance(ev, f.Deliver)
                got.append(ev.message_id)
                await b.ack([ev.seq])
            assert got == ids

            # While both are connected.
            text = await scrape(proc)
            samples = parse(text)
            assert value(samples, "momedod_connections", listener=listener) == 2
            assert value(samples, "momedod_online_devices") == 2

        assert value(samples, "momedod_messages_accepted_total") == sent
        assert value(samples, "momedod_messages_duplicate_total") == 1
        assert value(samples, "momedod_mailbox_entries_added_total") == sent
        delivered = value(samples, "momedod_messages_delivered_total")
        assert delivered is not None and delivered >= sent
        assert value(samples, "momedod_frames_sent_total", kind="deliver") == delivered
        assert value(samples, "momedod_frames_received_total", kind="send") == sent + 1
        batches = value(samples, "momedod_store_commit_batch_size_count")
        assert batches is not None and batches > 0  # group commits are observed
        enqueues = value(
            samples, "momedod_store_operation_duration_seconds_count", operation="enqueue"
        )
        assert enqueues == sent + 1
        assert value(samples, "momedod_frames_received_total", kind="ack") == sent
        latency_count = value(samples, "momedod_delivery_latency_seconds_count")
        assert latency_count is not None and latency_count >= sent
        assert value(samples, "momedod_delivery_latency_seconds_bucket", le="+Inf") == (
            latency_count
        )
        # Three enrollments and two logins succeeded.
        assert value(samples, "momedod_sessions_authenticated_total") == 5
        assert value(samples, "momedod_auth_failures_total", reason="invite_invalid") == 1
        assert value(samples, "momedod_auth_failures_total", reason="bad_signature") == 1
        assert value(samples, "momedod_auth_failures_total", reason="unknown_device") == 1
        assert value(samples, "momedod_protocol_errors_total", error="AUTH_FAILED") == 2
        assert value(samples, "momedod_protocol_errors_total", error="INVITE_INVALID") == 1
        handshake_errors = value(samples, "momedod_tls_handshake_failures_total", reason="error")
        assert handshake_errors == 1
        accepted = value(samples, "momedod_connections_accepted_total", listener=listener)
        assert accepted is not None and accepted >= 9
        assert value(samples, "momedod_build_info", version=momedod.__version__) == 1
        assert value(samples, "momedod_listener_up", listener=listener) == 1
        assert (value(samples, "momedod_listener_max_connections", listener=listener) or 0) > 0
        expiry = value(samples, "momedod_certificate_expiry_timestamp_seconds", listener=listener)
        assert expiry is not None and expiry > time.time() + 86400
        start = value(samples, "momedod_start_time_seconds")
        assert start is not None and time.time() - 600 < start <= time.time()
        lag = value(samples, "momedod_event_loop_lag_seconds")
        assert lag is not None and 0 <= lag < 1
        # The store gauges: refreshed at start-up, then every 15 s (not on each scrape).
        for name in (
            "momedod_users",
            "momedod_devices",
            "momedod_mailbox_entries",
            "momedod_mailbox_oldest_age_seconds",
        ):
            assert (value(samples, name) or 0) >= 0, name
        free = value(samples, "momedod_state_dir_free_bytes")
        size = value(samples, "momedod_state_dir_size_bytes")
        assert free is not None and size is not None and 0 < free <= size
        assert (value(samples, "momedod_store_size_bytes") or 0) > 0
        rss = value(samples, "process_resident_memory_bytes")
        assert rss is not None and rss > 0

        # No per-user labels: neither label names nor any value names a user.
        secret_ids = {c.user_id for c in (alice, bob, carol)}
        secret_ids |= {display(u) for u in secret_ids}
        for (name, labels), _v in samples.items():
            assert {k for k, _ in labels} <= ALLOWED_LABELS, (name, labels)
        for uid in secret_ids:
            assert uid not in text, f"user ID {uid} in /metrics"

        # Once the clients are gone the gauges fall back.
        def closed(s: Samples) -> bool:
            return (
                value(s, "momedod_connections", listener=listener) == 0
                and value(s, "momedod_online_devices") == 0
            )

        await wait_for(proc, closed)

        res = await trio.to_thread.run_sync(
            lambda: subprocess.run(
                [promtool(), "check", "metrics"],
                input=text,
                capture_output=True,
                text=True,
                timeout=60,
            )
        )
        assert res.returncode == 0, res.stdout + res.stderr
        assert not (res.stdout + res.stderr).strip(), res.stdout + res.stderr
    finally:
        proc.stop()
