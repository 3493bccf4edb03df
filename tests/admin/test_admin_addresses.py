"""Invites and `momedoctl server info` of a server with several addresses and pins."""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import replace

from support import Server, make_config

from momedod.admin.ctl import _show_server_info
from momedod.protocol.invite import fingerprint_text, parse_invite_link
from momedod.server.daemon import serve

OTHER_PIN = hashlib.sha256(b"the other node's key").digest()


async def test_invites_and_server_info_carry_every_address_and_pin(tmp_path, nursery):
    config = make_config(tmp_path / "state")
    config = replace(
        config,
        server=replace(
            config.server,
            public_addresses=("chat1.example.org:7443", "[2001:db8::2]:443"),
            certificate_pins=(fingerprint_text(OTHER_PIN),),
        ),
    )
    server = Server(await nursery.start(serve, config), config.server.state_dir)
    own = server.fingerprint

    _uid, link = await server.add_user("Anna")
    inv = parse_invite_link(link)
    assert inv.addresses == (("chat1.example.org", 7443), ("2001:db8::2", 443))
    assert inv.fingerprints == (own, OTHER_PIN)
    assert link.startswith("momedo://chat1.example.org:7443,[2001:db8::2]:443/invite/")
    assert link.endswith(f"#{fingerprint_text(own)}+{fingerprint_text(OTHER_PIN)}")

    # Every way to get an invite goes through the same formatting: a new invite, too.
    again = await server.admin("user.invite", user_id=_uid)
    assert parse_invite_link(again["invite"]["link"]).addresses == inv.addresses

    info = await server.admin("server.info")
    assert info["public_address"] == "chat1.example.org:7443"
    assert info["public_addresses"] == ["chat1.example.org:7443", "[2001:db8::2]:443"]
    assert info["certificate_pins"] == [fingerprint_text(own), fingerprint_text(OTHER_PIN)]
    lines = _show_server_info(info, argparse.Namespace())
    assert "Addresses:       chat1.example.org:7443, [2001:db8::2]:443" in lines
    assert f"Other pins:      {fingerprint_text(OTHER_PIN)}" in lines
    assert not any(line.startswith("Public address") for line in lines)


async def test_one_address_server_info_is_unchanged(server):
    info = await server.admin("server.info")
    host, port = server.address
    assert info["public_addresses"] == [f"{host}:{port}"]
    lines = _show_server_info(info, argparse.Namespace())
    assert f"Public address:  {host}:{port}" in lines
    assert not any(line.startswith(("Addresses", "Other pins")) for line in lines)
