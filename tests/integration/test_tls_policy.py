"""The daemon's TLS policy, checked from outside by clients with weaker settings.

What is checked, and how far Python's ssl module lets a test see:

* TLS 1.3 is the default: a client capped at TLS 1.2 is refused by the server (the alert
  comes from the server, not from a client that could not offer anything).
* With ``tls_min_version = "1.2"``, TLS 1.2 is accepted with AEAD suites (AES-GCM,
  ChaCha20-Poly1305) and refused when the client offers only CBC suites.
* TLS 1.1 is refused either way.
* Compression: the negotiated session has none (``SSLSocket.compression()`` is None), and
  the server context sets OP_NO_COMPRESSION.
* Renegotiation: Python's ssl has no call to start one, so the test checks that the server
  context sets OP_NO_RENEGOTIATION (OpenSSL then refuses a client's renegotiation request);
  TLS 1.3, the default, has no renegotiation at all.
"""

from __future__ import annotations

import ssl
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio
from support import make_config

from momedod.server.daemon import Daemon, serve

AEAD_12 = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305"
CBC_12 = "ECDHE-ECDSA-AES256-SHA384:ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA"


async def start(nursery: trio.Nursery, state_dir: Path, tls_min_version: str) -> Daemon:
    config = make_config(state_dir)
    listener = replace(config.listeners[0], tls_min_version=tls_min_version)
    daemon: Daemon = await nursery.start(serve, replace(config, listeners=(listener,)))
    return daemon


def client_context(version: ssl.TLSVersion, ciphers: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if version < ssl.TLSVersion.TLSv1_2:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer what it is asked to
    if ciphers is not None:
        ctx.set_ciphers(ciphers + ":@SECLEVEL=0")
    with warnings.catch_warnings():  # TLSVersion.TLSv1_1 is deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


async def handshake(daemon: Daemon, ctx: ssl.SSLContext) -> trio.SSLStream[Any]:
    host, port = daemon.listeners[0].bound[0]
    tcp = await trio.open_tcp_stream(host, port)
    stream = trio.SSLStream(tcp, ctx)
    try:
        with trio.fail_after(10):
            await stream.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(tcp)
        raise
    return stream


async def refused(daemon: Daemon, ctx: ssl.SSLContext, capfd: pytest.CaptureFixture[str]) -> str:
    """Handshake, expect it to fail, and return the reason the *server* logged.

    The client often sees only an EOF (the server closes after its alert), so the evidence
    is the daemon's ``tls.handshake_failed`` log line.
    """
    capfd.readouterr()
    with pytest.raises((ssl.SSLError, trio.BrokenResourceError)) as caught:
        await handshake(daemon, ctx)
    exc = caught.value
    err = exc if isinstance(exc, ssl.SSLError) else exc.__cause__
    if getattr(err, "reason", None) in ("NO_PROTOCOLS_AVAILABLE", "NO_CIPHERS_AVAILABLE"):
        pytest.skip(f"this OpenSSL cannot even offer that as a client ({err})")
    seen = ""
    with trio.move_on_after(5):
        while "tls.handshake_failed" not in seen:
            await trio.sleep(0.02)
            seen += capfd.readouterr().out
    line = next(x for x in seen.splitlines() if "tls.handshake_failed" in x)
    return line.partition("reason=")[2]


async def test_default_is_tls13_only_without_compression(
    nursery: trio.Nursery, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    daemon = await start(nursery, tmp_path / "state", "1.3")
    stream = await handshake(daemon, client_context(ssl.TLSVersion.TLSv1_3))
    assert stream.version() == "TLSv1.3"
    assert stream.compression() is None
    await trio.aclose_forcefully(stream)
    reason = await refused(daemon, client_context(ssl.TLSVersion.TLSv1_2), capfd)
    assert "UNSUPPORTED_PROTOCOL" in reason


async def test_tls12_when_enabled_only_with_aead_suites(
    nursery: trio.Nursery, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    daemon = await start(nursery, tmp_path / "state", "1.2")
    for suite in AEAD_12.split(":"):
        stream = await handshake(daemon, client_context(ssl.TLSVersion.TLSv1_2, suite))
        assert stream.version() == "TLSv1.2"
        assert stream.cipher()[0] == suite
        assert stream.compression() is None
        await trio.aclose_forcefully(stream)
    reason = await refused(daemon, client_context(ssl.TLSVersion.TLSv1_2, CBC_12), capfd)
    assert "NO_SHARED_CIPHER" in reason


@pytest.mark.parametrize("minimum", ["1.3", "1.2"])
async def test_tls11_is_refused(
    nursery: trio.Nursery, tmp_path: Path, capfd: pytest.CaptureFixture[str], minimum: str
) -> None:
    daemon = await start(nursery, tmp_path / "state", minimum)
    reason = await refused(daemon, client_context(ssl.TLSVersion.TLSv1_1), capfd)
    assert "UNSUPPORTED_PROTOCOL" in reason


@pytest.mark.parametrize("minimum", ["1.3", "1.2"])
async def test_server_context_forbids_compression_and_renegotiation(
    nursery: trio.Nursery, tmp_path: Path, minimum: str
) -> None:
    daemon = await start(nursery, tmp_path / "state", minimum)
    ctx = daemon.listeners[0].tls.context
    assert ctx.options & ssl.OP_NO_COMPRESSION
    assert ctx.options & ssl.OP_NO_RENEGOTIATION
    tls12 = [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all("GCM" in n or "CHACHA20" in n for n in tls12)
