"""[push] and [[quiet_hours]]: which push URLs pass, and when quiet hours hold."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from momedod.config import ConfigError, load_config
from momedod.pushurl import AllowedHosts
from momedod.quiet import QuietPolicy, evaluate, parse_days, parse_window

BERLIN = ZoneInfo("Europe/Berlin")


def load(tmp_path: Path, text: str):
    path = tmp_path / "momedod.toml"
    path.write_text(text)
    return load_config(path, environ={})


def refused(allowed: AllowedHosts, url: str) -> str:
    with pytest.raises(ValueError) as info:
        allowed.check(url)
    return str(info.value)


def test_only_listed_origins_are_allowed_and_http_only_when_listed_so():
    allowed = AllowedHosts.from_config(
        "https://push.vendor.example/_matrix/push/v1/notify",
        ["ntfy.school.example", "ntfy2.school.example:8443", "http://10.0.0.5:8080"],
    )
    assert allowed.check("https://ntfy.school.example/up1").port == 443
    assert allowed.check("https://NTFY.school.example./up1?x=1").host == "ntfy.school.example"
    allowed.check("https://ntfy2.school.example:8443/up")
    allowed.check("http://10.0.0.5:8080/up")
    allowed.check("https://push.vendor.example/anything")
    assert "not allowed" in refused(allowed, "https://ntfy.school.example:8443/up")
    assert "not allowed" in refused(allowed, "https://127.0.0.1/up")
    assert "not allowed" in refused(allowed, "https://[::1]/up")
    assert "not allowed" in refused(allowed, "https://10.0.0.5:8080/up")  # listed as http only
    assert "https only" in refused(allowed, "http://ntfy.school.example/up")
    assert "user name" in refused(allowed, "https://a:b@ntfy.school.example/up")
    assert "https://" in refused(allowed, "gopher://ntfy.school.example/")
    assert "white space" in refused(allowed, "https://ntfy.school.example/up\r\nX: y")
    assert "not allowed" in refused(AllowedHosts([]), "https://ntfy.school.example/")


def test_push_config_is_validated(tmp_path):
    cfg = load(tmp_path, '[push]\nallowed_hosts = ["ntfy.example.org", "http://127.0.0.1:9"]\n')
    assert cfg.push.allowed_hosts == ("ntfy.example.org", "http://127.0.0.1:9")
    with pytest.raises(ConfigError, match=r"push\.allowed_hosts"):
        load(tmp_path, '[push]\nallowed_hosts = ["ftp://x"]\n')
    with pytest.raises(ConfigError, match=r"push\.gateway_url"):
        load(tmp_path, '[push]\ngateway_url = "push.example.org/notify"\n')


def test_quiet_hours_tables_are_validated(tmp_path):
    cfg = load(
        tmp_path,
        '[[quiet_hours]]\nname = "staff"\nusers = ["m8n2-2htr"]\ndefer_delivery = true\n',
    )
    (qc,) = cfg.quiet_hours
    assert (qc.days, qc.start, qc.end, qc.users) == ("Mon-Fri", "07:00", "18:00", ("m8n2-2htr",))
    for text, words in [
        ('[[quiet_hours]]\nname = "a"\nstart = "18:00"\nend = "07:00"\n', "earlier"),
        ('[[quiet_hours]]\nname = "a"\ntimezone = "Mars/Base"\n', "time zone"),
        ('[[quiet_hours]]\nname = "a"\ndays = "Fri-Mon"\n', "earlier day"),
        ('[[quiet_hours]]\nname = "a"\nstart = "7"\n', "HH:MM"),
        ('[[quiet_hours]]\nname = "a"\nusers = ["nobody"]\n', "user ID"),
        ('[[quiet_hours]]\nname = "a"\n[[quiet_hours]]\nname = "a"\n', "used once"),
        ("[[quiet_hours]]\ndays = 'daily'\n", "quiet_hours[0].name"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(words)):
            load(tmp_path, text)


def at(*args: int) -> float:
    return datetime(*args, tzinfo=BERLIN).timestamp()


def test_working_window_opens_and_closes_in_local_time_across_summer_time():
    p = QuietPolicy("staff", parse_days("Mon-Fri"), 7 * 60, 18 * 60, "Europe/Berlin")
    assert p.window == "Mon-Fri 07:00-18:00 Europe/Berlin"
    assert p.is_open(at(2026, 11, 30, 7, 0)) and p.is_open(at(2026, 11, 30, 17, 59))
    assert not p.is_open(at(2026, 11, 30, 18, 0)) and not p.is_open(at(2026, 11, 30, 6, 59))
    assert p.next_open(at(2026, 11, 30, 19, 0)) == at(2026, 12, 1, 7, 0)  # Mon -> Tue
    assert p.next_open(at(2026, 12, 4, 18, 30)) == at(2026, 12, 7, 7, 0)  # Fri -> Mon
    # The clocks go forward on Sunday 29 March 2026: Monday 07:00 is 05:00 UTC.
    assert (
        p.next_open(at(2026, 3, 27, 20, 0))
        == datetime(2026, 3, 30, 5, 0, tzinfo=ZoneInfo("UTC")).timestamp()
    )


def test_a_user_under_two_policies_is_quiet_until_both_are_open():
    early = QuietPolicy("a", parse_days("daily"), 6 * 60, 12 * 60, "Europe/Berlin")
    late = QuietPolicy("b", parse_days("daily"), 8 * 60, 20 * 60, "Europe/Berlin", True)
    state = evaluate([early, late], at(2026, 12, 1, 7, 0))
    assert state.quiet and state.defer and state.opens_at == at(2026, 12, 1, 8, 0)
    assert not evaluate([early, late], at(2026, 12, 1, 9, 0)).quiet
    state = evaluate([early, late], at(2026, 12, 1, 13, 0))  # "a" closed until tomorrow 06:00
    assert state.quiet and not state.defer and state.opens_at == at(2026, 12, 2, 8, 0)


def test_window_text_as_operators_type_it():
    assert parse_window("Mon-Fri 07:00-18:00 Europe/Berlin") == {
        "days": "Mon-Fri",
        "start": "07:00",
        "end": "18:00",
        "timezone": "Europe/Berlin",
    }
    for bad in ("Mon-Fri 07:00 Europe/Berlin", "Mo-Fr 07:00-18:00 Europe/Berlin", "daily 7-18 UTC"):
        with pytest.raises(ValueError):
            parse_window(bad)
