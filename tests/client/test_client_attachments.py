"""Attachments in the client: metadata, saving without overwriting, the server's limit, a
tampered blob, and the ``momedo send --file`` / ``recv --save-dir`` commands (real processes
against an in-process daemon over TLS)."""

from __future__ import annotations

import json
import os
import struct
from dataclasses import replace
from pathlib import Path

import pytest
import trio
from support import VENV_BIN, Server, make_config

from momedod.client import attachments as att
from momedod.client import messenger as m
from momedod.client.profile import Profile, open_profile
from momedod.config import AttachmentsConfig
from momedod.protocol.userid import display, normalize
from momedod.server.daemon import serve


async def _enroll(server, tmp_path: Path, name: str) -> tuple[Profile, str]:  # type: ignore[no-untyped-def]
    shown, link = await server.add_user(name)
    prof = open_profile(tmp_path / name, create=True)
    await m.enroll(prof, link, f"{name}-phone")
    return prof, normalize(shown)


def _msgs(events: list[m.Event]) -> list[m.Message]:
    return [e for e in events if isinstance(e, m.Message)]


def test_image_size_png_jpeg_and_other():
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", 640, 480)
    assert att.image_size(png + bytes(20)) == (640, 480)
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + bytes(14)
    sof2 = b"\xff\xc2" + struct.pack(">HBHH", 17, 8, 1080, 1920) + bytes(10)
    assert att.image_size(b"\xff\xd8" + app0 + sof2) == (1920, 1080)
    assert att.image_size(b"GIF89a" + bytes(30)) == (0, 0)
    assert att.image_size(b"\xff\xd8\x00") == (0, 0)


def test_attachment_line_and_unique_names(tmp_path):
    meta = {
        "name": "a.jpg",
        "mime": "image/jpeg",
        "size": 12,
        "width": 2,
        "height": 3,
        "location": {"lat": 52.5, "lon": 13.25, "accuracy_m": 0.0},
        "path": "/x/a.jpg",
    }
    line = att.attachment_line("Foto", meta)
    assert line == (
        "Foto [file a.jpg: /x/a.jpg; 12 bytes, image/jpeg, 2x3, location 52.5000000,13.2500000]"
    )
    paths = [att._save(tmp_path / "d", "a.jpg", b"%d" % i) for i in range(3)]
    assert [p.name for p in paths] == ["a.jpg", "a-1.jpg", "a-2.jpg"]
    assert (tmp_path / "d" / "a.jpg").read_bytes() == b"0"
    assert att._save(tmp_path / "d", "README", b"x").name == "README"
    assert att._save(tmp_path / "d", "README", b"y").name == "README-1"
    assert oct(paths[0].stat().st_mode & 0o777) == "0o600"


async def test_file_over_the_servers_limit_is_refused_before_sending(tmp_path, nursery):
    config = make_config(tmp_path / "state")
    config = replace(config, attachments=AttachmentsConfig(max_file_mib=1))
    server = Server(await nursery.start(serve, config), config.server.state_dir)
    anna, _a = await _enroll(server, tmp_path, "anna")
    _bob, b = await _enroll(server, tmp_path, "bob")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(2 * 1024 * 1024))
    sent: list[int] = []
    with pytest.raises(m.MessengerError, match=r"refuses the file big\.bin: TOO_LARGE"):
        await att.send_file(anna, big, to=b, progress=lambda r, t: sent.append(r))
    assert sent == []  # refused at BLOB_START: no chunk went out
    assert not any((anna.path / "outbox").iterdir())
    blobs = server.state_dir / "blobs"
    assert not blobs.exists() or not any(p.is_file() for p in blobs.rglob("*"))


async def test_tampered_blob_is_not_decrypted_or_saved(server, tmp_path):
    anna, _a = await _enroll(server, tmp_path, "anna")
    bob, b = await _enroll(server, tmp_path, "bob")
    doc = tmp_path / "bericht.pdf"
    doc.write_bytes(os.urandom(300_000))
    sent = await att.send_file(anna, doc, to=b, caption="Bericht")
    stored = [p for p in (server.state_dir / "blobs").rglob(sent.blob_id.hex()) if p.is_file()]
    assert len(stored) == 1
    data = bytearray(stored[0].read_bytes())
    data[1000] ^= 1
    stored[0].write_bytes(bytes(data))
    got: list[m.Event] = []
    await m.receive(bob, got.append, wait=0.0, save_dir=tmp_path / "in")
    (msg,) = _msgs(got)
    assert msg.attachment is not None and msg.attachment["path"] is None
    assert msg.attachment["error"] == "cannot decrypt (hash)"
    assert "attachment not saved: cannot decrypt (hash)" in msg.warnings
    assert not (tmp_path / "in").exists() or not any((tmp_path / "in").iterdir())
    # Without --save-dir the metadata is shown and nothing is fetched.
    assert msg.attachment["mime"] == "application/pdf" and msg.text == "Bericht"


async def _momedo(profile: Path, *args: str) -> tuple[int, str, str]:
    res = await trio.run_process(
        [str(VENV_BIN / "momedo"), "--profile", str(profile), *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return res.returncode, res.stdout.decode(), res.stderr.decode()


async def test_cli_send_file_with_location_and_recv_save_dir(server, tmp_path):
    anna, a = await _enroll(server, tmp_path, "anna")
    bob, b = await _enroll(server, tmp_path, "bob")
    photo = tmp_path / "Foto 1.png"
    content = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", 800, 600)
    content += os.urandom(100_000)
    photo.write_bytes(content)
    rc, out, err = await _momedo(
        anna.path,
        "send",
        display(b),
        "--file",
        str(photo),
        "--location",
        "48.1372,11.5756",
        "Beschädigte Tür",
    )
    assert rc == 0, err
    assert out.startswith(f"sent to {display(b)} (1 device(s)): Foto 1.png, 100024 bytes")
    rc, out, err = await _momedo(bob.path, "recv", "--save-dir", str(tmp_path / "in"))
    assert rc == 0, err
    saved = tmp_path / "in" / "Foto 1.png"
    assert saved.read_bytes() == content
    assert out.splitlines() == [
        f"{display(a)} (device 1): Beschädigte Tür [file Foto 1.png: {saved}; 100024 bytes, "
        "image/png, 800x600, location 48.1372000,11.5756000]"
    ]
    # --json: the same fields; a second copy gets a new name.
    rc, out, err = await _momedo(anna.path, "--json", "send", display(b), "--file", str(photo))
    assert rc == 0, err
    assert json.loads(out)["mime"] == "image/png"
    rc, out, err = await _momedo(bob.path, "--json", "recv", "--save-dir", str(tmp_path / "in"))
    (line,) = [json.loads(x) for x in out.splitlines() if '"message"' in x]
    assert line["attachment"]["path"] == str(tmp_path / "in" / "Foto 1-1.png")
    assert (line["attachment"]["width"], line["attachment"]["height"]) == (800, 600)
    assert line["attachment"]["location"] is None and "key" not in line["attachment"]
    # Bad arguments are refused with a clear message.
    rc, out, err = await _momedo(anna.path, "send", display(b), "--location", "1,2", "x")
    assert rc == 2 and "--location goes with --file" in err
    rc, out, err = await _momedo(
        anna.path, "send", display(b), "--file", str(photo), "--location", "x"
    )
    assert rc == 1 and "LAT,LON" in err
