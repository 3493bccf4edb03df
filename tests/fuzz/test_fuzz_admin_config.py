"""The operator's inputs under hostile input: admin protocol lines and configuration files.

An admin request line either parses or raises AdminError with a message (the daemon answers
it; anything else used to drop the connection without a reply); a reply line on the client
side likewise. A TOML document made of the known section and key names with values of any
type loads or raises ConfigError, and so does any text at all.
"""

from __future__ import annotations

import datetime
import json
import socket
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import trio
from hypothesis import given
from hypothesis import strategies as st

from momedod.admin import protocol as ap
from momedod.config import _SECTIONS, ConfigError, load_config

# -- admin protocol --------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
request_like = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values,
        "cmd": st.one_of(st.sampled_from(sorted(ap.COMMANDS)), json_values),
        "args": json_values,
        "extra": json_values,
    },
)


def admin_error_only(fn, line: bytes):  # type: ignore[no-untyped-def]
    try:
        return fn(line)
    except ap.AdminError as exc:
        assert exc.message and isinstance(exc.code, ap.AdminErrorCode)
        return None


@given(st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode())))
def test_request_line_parses_or_raises_admin_error(line: bytes) -> None:
    request = admin_error_only(ap.decode_request, line)
    if request is not None:
        assert isinstance(request.cmd, str) and isinstance(request.args, dict)
    admin_error_only(ap.decode_response, line)
    admin_error_only(ap.decode_line, line)


@given(request_like)
def test_request_objects_parse_or_raise_bad_request(obj: dict) -> None:  # type: ignore[type-arg]
    try:
        request = ap.parse_request(obj)
    except ap.AdminError as exc:
        assert exc.code is ap.AdminErrorCode.BAD_REQUEST and exc.message
        return
    assert ap.decode_request(ap.encode_request(request)) == request


@pytest.mark.parametrize(
    "line",
    [
        b"[" * 100_000,  # RecursionError inside json.loads
        b'{"id": ' + b"1" * 5000 + b', "cmd": "server.info"}',  # int of > 4300 digits
        b'{"cmd": "user.list", "args": {"limit": ' + b"9" * 5000 + b"}}",
    ],
    ids=["deep-nesting", "huge-id", "huge-arg"],
)
def test_request_lines_that_crashed_json_loads_get_bad_request(line: bytes) -> None:
    """Regression: these raised RecursionError/ValueError out of decode_request, so the
    daemon logged a traceback and closed the admin connection without an answer."""
    with pytest.raises(ap.AdminError) as caught:
        ap.decode_request(line)
    assert caught.value.code is ap.AdminErrorCode.BAD_REQUEST
    assert "not valid JSON" in caught.value.message
    for decode in (ap.decode_response, ap.decode_line):
        with pytest.raises(ap.AdminError):
            decode(line)


async def test_daemon_answers_a_too_deep_request_instead_of_dropping_the_connection(
    server: Any,
) -> None:
    def ask() -> tuple[dict[str, Any], dict[str, Any]]:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(server.socket))
            s.sendall(b"[" * 100_000 + b"\n")
            reply = json.loads(s.makefile("rb").readline())
            s.sendall(b'{"id": 2, "cmd": "server.info"}\n')  # and the connection still serves
            return reply, json.loads(s.makefile("rb").readline())

    error, info = await trio.to_thread.run_sync(ask)
    assert error["ok"] is False and error["error"]["code"] == "bad_request"
    assert info["ok"] is True and info["id"] == 2


# -- config ----------------------------------------------------------------------------------

toml_scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    st.text(max_size=30),
    st.text("0123456789.:[]abcdef", max_size=30),
    st.datetimes(min_value=datetime.datetime(1, 1, 1), max_value=datetime.datetime(9999, 1, 1)),
    st.dates(),
)
toml_values = st.one_of(toml_scalars, st.lists(toml_scalars, max_size=3))


def _section(keys: list[str]) -> st.SearchStrategy[dict]:  # type: ignore[type-arg]
    return st.dictionaries(
        st.one_of(st.sampled_from(keys), st.sampled_from(keys), st.text(max_size=8)),
        toml_values,
        max_size=len(keys),
    )


_TABLES = {name: _section([k.name for k in keys]) for name, (_, _, keys, _, _) in _SECTIONS.items()}
config_documents = st.fixed_dictionaries(
    {},
    optional={
        name: (
            st.lists(table, max_size=2) if _SECTIONS[name][4] else st.one_of(table, toml_scalars)
        )
        for name, table in _TABLES.items()
    },
)


def load(tmp_path: Path, text: str | bytes) -> None:
    path = tmp_path / "momedod.toml"
    if isinstance(text, str):
        path.write_text(text)
    else:
        path.write_bytes(text)
    try:
        load_config(path, environ={})
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith(f"{path}: ") and "\n" not in message


@given(config_documents)
def test_config_documents_load_or_raise_config_error(doc: dict) -> None:  # type: ignore[type-arg]
    import tempfile

    try:
        text = tomli_w.dumps(doc)
    except (TypeError, ValueError):
        return  # not representable in TOML (e.g. an array of tables mixed with values)
    with tempfile.TemporaryDirectory() as tmp:
        load(Path(tmp), text)


@given(st.one_of(st.binary(max_size=200), st.text(max_size=200)))
def test_any_config_text_loads_or_raises_config_error(text: str | bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        load(Path(tmp), text)


@pytest.mark.parametrize(
    "text",
    [
        '[server]\npublic_address = "chat.example.org:²"\n',  # '²'.isdigit(), int('²') fails
        "x = " + "[" * 5000,  # RecursionError inside tomllib
        "[limits]\nmax_frame_bytes = " + "9" * 5000 + "\n",  # int of > 4300 digits
        '[server]\n"a\\nb" = 1\n',  # a key with a newline made a two-line message
    ],
    ids=["superscript-port", "deep-nesting", "huge-integer", "newline-in-key"],
)
def test_config_inputs_that_crashed_raise_one_line_config_error(tmp_path: Path, text: str) -> None:
    """Regression: the first three raised ValueError/RecursionError out of load_config."""
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)
