"""docs/test-vectors/frames.json: the implementation agrees with every vector, the file is
what the generator produces, and the hex examples in docs/PROTOCOL.md come from it."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from momedod.protocol import auth, invite, records, userid
from momedod.protocol.errors import ErrorCode, ProtocolError
from momedod.protocol.frames import FrameDecoder, FrameType, encode_frame

ROOT = Path(__file__).resolve().parents[2]
VECTORS_FILE = ROOT / "docs" / "test-vectors" / "frames.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_FILE.read_text("utf-8"))


def load_generator() -> ModuleType:
    name = "gen_frame_vectors"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


GEN = load_generator()


def by_name(section: str) -> list[Any]:
    return [pytest.param(v, id=v["name"]) for v in VECTORS[section]]


@pytest.mark.parametrize("vector", by_name("frames"))
def test_frame_vector_decodes_and_encodes(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    frame = GEN.frame_from_json(vector["frame"])
    decoder = FrameDecoder()
    decoder.feed(data)
    assert decoder.next_frame() == frame
    assert decoder.next_frame() is None
    assert encode_frame(frame) == data
    assert GEN.frame_to_json(frame) == vector["frame"]


def test_vectors_cover_every_frame_type() -> None:
    covered = {v["frame"]["type"] for v in VECTORS["frames"]}
    assert covered == {t.name for t in FrameType}


@pytest.mark.parametrize("vector", by_name("must_fail"))
def test_must_fail_vector_raises_the_named_error(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    expected = ErrorCode[vector["error"]]
    for chunk in (len(data), 1):
        decoder = FrameDecoder(1_048_576)
        with pytest.raises(ProtocolError) as info:
            for i in range(0, len(data), chunk):
                decoder.feed(data[i : i + chunk])
                decoder.next_frame()
        assert info.value.code is expected


@pytest.mark.parametrize("vector", VECTORS["user_ids"], ids=lambda v: v["body7"])
def test_user_id_vector(vector: dict[str, str]) -> None:
    uid = vector["body7"] + vector["check"]
    assert userid.check_char(vector["body7"]) == vector["check"]
    assert userid.is_valid(uid)
    assert userid.display(uid) == vector["display"]
    assert userid.normalize(vector["display"].lower()) == uid


@pytest.mark.parametrize("vector", VECTORS["auth_messages"], ids=lambda v: v["kind"])
def test_auth_message_vector(vector: dict[str, Any]) -> None:
    nonce, cert_fp = bytes.fromhex(vector["nonce"]), bytes.fromhex(vector["cert_fp"])
    if vector["kind"] == "auth":
        message = auth.auth_message(nonce, cert_fp, vector["user_id"], vector["device_id"])
    else:
        transport_pub = bytes.fromhex(vector["transport_pub"])
        message = auth.enroll_message(nonce, cert_fp, vector["invite_code"], transport_pub)
    assert message.hex() == vector["message"]
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vector["seed"]))
    public_key = key.public_key().public_bytes_raw()
    assert public_key.hex() == vector["public_key"]
    assert key.sign(message).hex() == vector["signature"]
    assert auth.verify_signature(public_key, bytes.fromhex(vector["signature"]), message)


@pytest.mark.parametrize("vector", by_name("invite_links"))
def test_invite_link_vector(vector: dict[str, Any]) -> None:
    fp = bytes.fromhex(vector["fingerprint"])
    org_fp = None if vector["org_fingerprint"] is None else bytes.fromhex(vector["org_fingerprint"])
    addresses = [(a["host"], a["port"]) for a in vector["addresses"]]
    pins = [bytes.fromhex(x) for x in vector["fingerprints"]]
    assert addresses[0] == (vector["host"], vector["port"]) and pins[0] == fp
    link = invite.InviteLink.of(addresses, vector["code"], pins, org_fp)
    assert str(link) == vector["link"]
    assert invite.parse_invite_link(vector["link"]) == link
    assert invite.fingerprint_text(fp) == vector["fingerprint_text"]
    assert [invite.fingerprint_text(x) for x in pins] == vector["fingerprints_text"]
    if len(addresses) == 1 and len(pins) == 1:  # the single-address form of older servers
        single = invite.InviteLink(vector["host"], vector["port"], vector["code"], fp, org_fp)
        assert single == link
    fragment = "+".join(vector["fingerprints_text"])
    if org_fp is None:
        assert vector["org_fingerprint_text"] is None
        assert "." not in vector["link"].partition("#")[2]
    else:
        assert invite.fingerprint_text(org_fp) == vector["org_fingerprint_text"]
        fragment += "." + vector["org_fingerprint_text"]
    assert vector["link"].endswith("#" + fragment)


@pytest.mark.parametrize("vector", by_name("invite_links_must_fail"))
def test_invite_link_must_fail_vector(vector: dict[str, str]) -> None:
    with pytest.raises(invite.InvalidInviteLink):
        invite.parse_invite_link(vector["link"])


@pytest.mark.parametrize("vector", by_name("records"))
def test_record_vector(vector: dict[str, Any]) -> None:
    info = records.parse_record(bytes.fromhex(vector["hex"]))
    assert info == records.RecordInfo(**vector["info"])


@pytest.mark.parametrize("vector", by_name("records_must_fail"))
def test_record_must_fail_vector(vector: dict[str, str]) -> None:
    with pytest.raises(ProtocolError) as info:
        records.parse_record(bytes.fromhex(vector["hex"]))
    assert info.value.code is ErrorCode.RECORD_INVALID


def test_committed_vectors_equal_generator_output() -> None:
    assert VECTORS_FILE.read_text("utf-8") == GEN.render(), (
        "docs/test-vectors/frames.json is stale: run "
        "python tests/protocol/gen_frame_vectors.py > docs/test-vectors/frames.json"
    )


def test_invite_link_examples_in_protocol_doc_come_from_the_vectors() -> None:
    doc = (ROOT / "docs" / "PROTOCOL.md").read_text("utf-8")
    links = re.findall(r"^momedo://\S+$", doc, flags=re.MULTILINE)
    vectors = {v["link"]: v for v in VECTORS["invite_links"]}
    assert len(links) >= 4
    for link in links:
        assert link in vectors, link
        if vectors[link]["org_fingerprint"] is not None:
            assert f"`{vectors[link]['org_fingerprint']}`" in doc


def test_hex_examples_in_protocol_doc_come_from_the_vectors() -> None:
    doc = (ROOT / "docs" / "PROTOCOL.md").read_text("utf-8")
    blocks = re.findall(r"```hex\n(.*?)```", doc, flags=re.DOTALL)
    known = {v["hex"] for v in VECTORS["frames"]}
    known |= {v["hex"] for v in VECTORS["records"]}
    known |= {v["message"] for v in VECTORS["auth_messages"]}
    assert len(blocks) >= len(FrameType)
    for block in blocks:
        # an example may annotate fields after "#" on each line
        hex_text = "".join(line.split("#", 1)[0] for line in block.splitlines())
        assert "".join(hex_text.split()) in known, block


def test_example_roster_and_event_agree_with_the_e2e_layer() -> None:
    # The CONV_PUT/CONV_INFO and DELIVER examples are built by hand from the documented
    # layouts; the end-to-end implementation must read them the same way.
    from momedod.e2e.event import ConvEvent, parse_conv_event
    from momedod.e2e.roster import (
        check_roster_successor,
        parse_roster_record,
        verify_roster_signature,
    )

    rec = parse_roster_record(GEN.example_roster_record())
    assert rec.roster.conv_id == GEN.CONV_ID and rec.roster.epoch == 1
    assert rec.roster.members == (("49K49J00", 0), ("M8N22HTR", 1))
    assert verify_roster_signature(rec, device_dk_public=GEN._transport_pub())
    check_roster_successor(None, rec)
    frames = {v["name"]: v["frame"] for v in VECTORS["frames"]}
    assert frames["conv_put"]["roster_record"] == GEN.example_roster_record().hex()
    event = bytes.fromhex(frames["deliver_conv_event"]["payload"])
    assert parse_conv_event(event) == ConvEvent(1, GEN.CONV_ID, 2)
