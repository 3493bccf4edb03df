"""Invite letters: CSV quoting, HTML escaping, one page per user, QR codes on many CPUs."""

from __future__ import annotations

import csv
import io
import re

import segno

from momedod.admin import letters

FP = "DSJB425DUCKUZO6I7B5LEHJ6POREUK25IU4FHAVM5IOZ5XLYYISQ"


def invite(i: int, name: str = "") -> dict:
    return {
        "user_id": f"AAAA-{i:04d}",
        "name": name or f"Pupil {i}",
        "invite": {
            "code": f"CODE{i:016d}",
            "link": f"momedo://chat.gs-nord.de:7443/invite/ERQR9PNT35WY{i:08d}#{FP}",
            "expires": "2026-12-06T19:35:00Z",
        },
    }


def test_csv_quotes_what_needs_quoting():
    items = [invite(1, 'Meyer, "Ben"'), invite(2, "Jürgen Öztürk")]
    text = letters.invites_csv(items)
    assert text.startswith("user_id,name,external_id,link,expires\r\n")
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[1] == [
        "AAAA-0001",
        'Meyer, "Ben"',
        "",
        items[0]["invite"]["link"],
        items[0]["invite"]["expires"],
    ]
    assert rows[2][1] == "Jürgen Öztürk"
    assert "CODE" not in text.replace(items[0]["invite"]["link"], "")  # the code only in links


def test_html_escapes_names_and_says_when_empty():
    page = letters.invites_html([invite(1, "<script>alert(1)</script> & Co")])
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; Co" in page
    assert "Gültig bis / valid until: 2026-12-06 19:35 UTC" in page
    empty = letters.invites_html([])
    assert '<section class="letter">' not in empty and "no invitations" in empty


def test_many_letters_are_rendered_in_parallel_in_order():
    items = [invite(i) for i in range(letters.PARALLEL_FROM + 5)]
    page = letters.invites_html(items)
    sections = re.findall(r'<section class="letter">(.*?)</section>', page, re.S)
    assert len(sections) == len(items)
    for section, item in zip(sections, items, strict=True):
        link = item["invite"]["link"]
        assert f'<p class="link">{link}</p>' in section
        [svg] = re.findall(r"<svg.*?</svg>", section, re.S)
        expected = segno.make(link, error=letters.QR_ERROR, micro=False)
        assert svg == expected.svg_inline(**letters.QR_SVG_OPTIONS)
