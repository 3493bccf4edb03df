"""Helpers for the bridge tests: enroll many devices fast, run a bridge in-process, and a
local webhook receiver (hypercorn + a tiny ASGI app)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio
from hypercorn.config import Config as HttpConfig
from hypercorn.trio import serve as http_serve

from momedod.client import messenger as m
from momedod.client.bridge.run import BridgeOptions, Running, run_bridge
from momedod.client.profile import Profile


async def recv(prof: Profile) -> list[m.Message]:
    got: list[m.Event] = []
    await m.receive(prof, got.append, wait=0.0)
    return [e for e in got if isinstance(e, m.Message)]


@dataclass
class Hook:
    """One webhook request as received."""

    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.body)
        return doc


@dataclass
class Receiver:
    """A webhook receiver: answers 204 while ``up``, else 503; records what it acknowledged
    (``accepted``) and every attempt (``attempts``)."""

    up: bool = True
    accepted: list[Hook] = field(default_factory=list)
    attempts: int = 0
    url: str = ""
    changed: trio.Event = field(default_factory=trio.Event)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                ev = await receive()
                kind = ev["type"].replace(".startup", ".startup.complete")
                kind = kind.replace(".shutdown", ".shutdown.complete")
                await send({"type": kind})
                if ev["type"] == "lifespan.shutdown":
                    return
        body = b""
        while True:
            ev = await receive()
            body += ev.get("body", b"")
            if not ev.get("more_body"):
                break
        self.attempts += 1
        status = 204 if self.up else 503
        if self.up:
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            self.accepted.append(Hook(headers, body))
            self.changed.set()
            self.changed = trio.Event()
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def start(self, nursery: trio.Nursery) -> None:
        cfg = HttpConfig()
        cfg.bind = ["127.0.0.1:0"]
        cfg.accesslog = cfg.errorlog = None
        binds = await nursery.start(partial(http_serve, self, cfg))
        self.url = binds[0] + "/hook"

    async def wait_for(self, n: int, timeout: float = 20) -> list[Hook]:
        with trio.fail_after(timeout):
            while len(self.accepted) < n:
                await self.changed.wait()
        return self.accepted


@dataclass
class RunningBridge:
    running: Running
    scope: trio.CancelScope
    token: str

    @property
    def url(self) -> str:
        return self.running.url

    def client(self, *, auth: bool = True) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.token}"} if auth else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30)

    async def stop(self) -> None:
        self.scope.cancel()
        await trio.sleep(0)


async def start_bridge(
    nursery: trio.Nursery,
    profile: Profile,
    tmp_path: Path,
    *,
    webhook: str | None = None,
    connected: bool = True,
) -> RunningBridge:
    """Run ``run_bridge`` in ``nursery`` on a free loopback port; wait until it is connected."""
    token_file = tmp_path / f"token-{profile.path.name}"
    options = BridgeOptions("127.0.0.1:0", webhook, token_file)

    async def runner(task_status: trio.TaskStatus[tuple[Running, trio.CancelScope]]) -> None:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as inner:
                running = await inner.start(run_bridge, profile, options)
                task_status.started((running, scope))

    running, scope = await nursery.start(runner)
    rb = RunningBridge(running, scope, token_file.read_text().strip())
    if connected:
        async with httpx.AsyncClient(base_url=rb.url) as http:
            with trio.fail_after(20):
                while (await http.get("/v1/health")).status_code != 200:
                    await trio.sleep(0.05)
    return rb


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example_env(rb: RunningBridge) -> dict[str, str]:
    import os

    return {**os.environ, "MOMEDO_BRIDGE_URL": rb.url, "MOMEDO_BRIDGE_TOKEN": rb.token}


async def run_example(rb: RunningBridge, script: str, *args: str) -> str:
    """Run ``examples/SCRIPT`` against the bridge; returns its stdout (it must exit 0)."""
    import sys

    res = await trio.run_process(
        [sys.executable, str(EXAMPLES / script), *args],
        env=example_env(rb),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr.decode()
    return res.stdout.decode()
