"""The sans-IO admin protocol: line encoding, envelope checks, result shapes."""

from __future__ import annotations

import json

import pytest

from momedod.admin.protocol import (
    AdminError,
    AdminErrorCode,
    DeviceInfo,
    InviteInfo,
    Request,
    Response,
    UserInfo,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    format_time,
    parse_time,
)


def test_request_is_one_line_even_with_newlines_in_arguments():
    line = encode_request(Request("user.add", {"name": "Anna\nSchmidt ü"}, id=7))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_request(line) == Request("user.add", {"name": "Anna\nSchmidt ü"}, id=7)
    assert json.loads(line) == {"id": 7, "cmd": "user.add", "args": {"name": "Anna\nSchmidt ü"}}


def test_args_default_to_empty():
    assert decode_request(b'{"id": 1, "cmd": "user.list"}') == Request("user.list", {}, id=1)


@pytest.mark.parametrize(
    ("line", "request_id"),
    [
        (b"not json", None),
        (b"\xff\xfe", None),
        (b"[1, 2]", None),
        (b'{"id": 3}', 3),
        (b'{"id": 3, "cmd": "user.list", "args": "x"}', 3),
        (b'{"id": 3, "cmd": "user.list", "extra": 1}', 3),
        (b'{"id": true, "cmd": "user.list"}', None),
    ],
)
def test_bad_requests_say_bad_request_and_keep_the_id_when_known(line, request_id):
    with pytest.raises(AdminError) as info:
        decode_request(line)
    assert info.value.code is AdminErrorCode.BAD_REQUEST
    assert info.value.request_id == request_id


def test_responses_round_trip():
    ok = Response(id=7, result={"users": []})
    assert encode_response(ok) == b'{"id":7,"ok":true,"result":{"users":[]}}\n'
    assert decode_response(encode_response(ok)).result == {"users": []}
    failed = Response(id="x", error=AdminError(AdminErrorCode.NOT_FOUND, "no user M8N2-2HTR"))
    assert json.loads(encode_response(failed)) == {
        "id": "x",
        "ok": False,
        "error": {"code": "not_found", "message": "no user M8N2-2HTR"},
    }
    back = decode_response(encode_response(failed))
    assert back.ok is False and back.error is not None
    assert (back.error.code, back.error.message) == (AdminErrorCode.NOT_FOUND, "no user M8N2-2HTR")


def test_unknown_error_codes_from_a_newer_server_still_carry_the_message():
    line = b'{"id": 1, "ok": false, "error": {"code": "quota", "message": "too many users"}}'
    error = decode_response(line).error
    assert error is not None and (error.code, error.message) == ("internal", "too many users")


@pytest.mark.parametrize(
    "line", [b"", b"garbage", b'{"id": 1}', b'{"id": 1, "ok": true}', b'{"ok": false}']
)
def test_malformed_replies_raise(line):
    with pytest.raises(AdminError, match="malformed reply"):
        decode_response(line)


def test_result_shapes_round_trip():
    user = UserInfo("M8N2-2HTR", "Anna", "2026-11-29T19:00:00Z", False, 2)
    device = DeviceInfo(1, "Pixel", "2026-11-29T19:00:00Z", None, "2026-11-30T08:00:00Z", 0)
    invite = InviteInfo("CODE", "momedo://h:1/invite/CODE#FP", "2026-12-06T19:00:00Z")
    for shape in (user, device, invite):
        assert type(shape).from_json(json.loads(json.dumps(shape.to_json()))) == shape


def test_result_shapes_reject_missing_or_mistyped_fields():
    good = {"user_id": "M8N2-2HTR", "name": "A", "created": "t", "disabled": False, "devices": 1}
    with pytest.raises(AdminError):
        UserInfo.from_json({**good, "devices": True})
    with pytest.raises(AdminError):
        UserInfo.from_json({k: v for k, v in good.items() if k != "name"})
    with pytest.raises(AdminError):
        UserInfo.from_json([good])


def test_times_are_iso_utc():
    assert format_time(1_795_978_800_123) == "2026-11-29T19:00:00Z"
    assert parse_time("2026-11-29T19:00:00Z").timestamp() == 1_795_978_800
