"""`momedo bridge` as a real process: token file rules, serving, stopping on SIGTERM."""

from __future__ import annotations

import signal
import subprocess

import httpx
import trio
from support import FEW_OTPKS, VENV_BIN, enroll_many, free_port

from momedod.client import messenger as m


async def test_momedo_bridge_refuses_a_readable_token_creates_a_missing_one_and_serves(
    server, tmp_path, monkeypatch
):
    monkeypatch.setattr(m, "OTPK_COUNT", FEW_OTPKS)
    [(bot, _uid)] = await enroll_many(server, tmp_path, ["clibot"])
    token = tmp_path / "api.token"
    token.write_text("t" * 40)
    token.chmod(0o644)
    base = [str(VENV_BIN / "momedo"), "--profile", str(bot.path), "bridge"]
    res = await trio.run_process(
        [*base, "--token-file", str(token)], capture_stdout=True, capture_stderr=True, check=False
    )
    assert res.returncode == 1
    assert b"accessible to group or others (mode 0644); run: chmod 600" in res.stderr

    port = free_port()
    proc = await trio.lowlevel.open_process(
        [*base, "--listen", f"127.0.0.1:{port}"], stderr=subprocess.PIPE
    )
    try:
        assert proc.stderr is not None
        err = b""
        with trio.fail_after(20):
            while b"serving" not in err:
                err += await proc.stderr.receive_some(4096)
        created = bot.path / "bridge" / "token"
        assert f"created the API token in {created}".encode() in err
        assert created.stat().st_mode & 0o777 == 0o600
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            with trio.fail_after(20):
                while (r := await http.get("/v1/health")).status_code != 200:
                    await trio.sleep(0.05)
            assert r.json() == {"status": "ok", "connected": True, "webhook_pending": None}
            r = await http.get(
                "/v1/messages", headers={"Authorization": f"Bearer {created.read_text().strip()}"}
            )
            assert r.json() == {"messages": [], "next": 0}
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
