"""[server] public_addresses and certificate_pins: several nodes in the invite links."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

import pytest

from momedod import config
from momedod.config import ConfigError, load_config, server_addresses
from momedod.protocol.invite import fingerprint_text

PIN = fingerprint_text(hashlib.sha256(b"node 2").digest())


@pytest.fixture(autouse=True)
def no_system_config(monkeypatch, tmp_path):
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", tmp_path / "etc" / "momedod.toml")


def load(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "momedod.toml"
    path.write_text(text)
    return load_config(path, environ={})


def error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    message = str(info.value)
    assert "\n" not in message
    return message.partition(": ")[2]


def test_public_addresses_and_pins_are_read(tmp_path):
    cfg = load(
        tmp_path,
        '[server]\npublic_addresses = ["a.example.org:7443", "[2001:db8::2]:7443"]\n'
        f'certificate_pins = ["{PIN.lower()}"]\n',
    )
    assert cfg.server.public_addresses == ("a.example.org:7443", "[2001:db8::2]:7443")
    assert cfg.server.certificate_pins == (PIN,)  # canonical text form
    assert server_addresses(cfg.server) == (("a.example.org", 7443), ("2001:db8::2", 7443))


def test_one_public_address_is_the_one_address_form(tmp_path):
    cfg = load(tmp_path, '[server]\npublic_address = "[2001:db8::1]:7443"\n')
    assert server_addresses(cfg.server) == (("2001:db8::1", 7443),)
    assert server_addresses(load(tmp_path, "").server) == ()


def test_both_forms_set_is_a_clear_error(tmp_path):
    text = '[server]\npublic_address = "a.example:1"\npublic_addresses = ["b.example:1"]\n'
    assert error(tmp_path, text) == (
        "server.public_addresses: set either public_address (one address) or "
        "public_addresses (several nodes), not both"
    )


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("[]", "got an array"),
        ('"a.example:1"', "'a.example:1'"),
        ('["a.example"]', "'a.example' (the port is missing"),
        ('["a.example:1", "A.EXAMPLE:1"]', "server address A.EXAMPLE:1 is listed twice"),
        ('["a_b.example:1"]', "invalid host name 'a_b.example'"),
        ("[" + ", ".join(f'"n{i}.example:1"' for i in range(9)) + "]", "at most 8"),
    ],
)
def test_bad_public_addresses_are_named(tmp_path, value, shown):
    message = error(tmp_path, f"[server]\npublic_addresses = {value}\n")
    assert message.startswith("server.public_addresses: expected an array of 1 to 8 distinct")
    assert shown in message


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ('["abc"]', "'abc' (a fingerprint has 52 base32 characters, got 3)"),
        (f'["{PIN}", "{PIN.lower()}"]', "a fingerprint listed twice"),
        ("[" + ", ".join(f'"{PIN}"' for _ in range(8)) + "]", "8 fingerprints"),
        (f'"{PIN}"', f"'{PIN}'"),
    ],
)
def test_bad_certificate_pins_are_named(tmp_path, value, shown):
    message = error(tmp_path, f"[server]\ncertificate_pins = {value}\n")
    assert message.startswith("server.certificate_pins: expected an array of at most 7")
    assert shown in message


def test_addresses_too_long_for_an_invite_link(tmp_path):
    host = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 57])
    value = "[" + ", ".join(f'"{host}.e{i}:7443"' for i in range(8)) + "]"
    message = error(tmp_path, f"[server]\npublic_addresses = {value}\n")
    assert message.startswith("server.public_addresses: the invite link would be")
    assert "more than 2048" in message


def test_shipped_config_documents_the_keys():
    text = (Path(__file__).resolve().parents[2] / "etc" / "momedod.toml").read_text()
    assert "#public_addresses = [" in text and "#certificate_pins = [" in text
    uncommented = "\n".join(
        line[1:] for line in text.splitlines() if line.startswith("#public_addresses")
    )
    assert tomllib.loads(uncommented)["public_addresses"]
