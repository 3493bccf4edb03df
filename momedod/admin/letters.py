"""Invite letters for ``momedoctl invites export``: a CSV list and a printable HTML page per user.

Input is the ``invites`` list of an ``invite.bulk`` reply. The HTML page holds, per user, the
name, the user ID, the invite link as a QR code (inline SVG made with segno, so the file needs
no images and no network), the link as text, its expiry and short instructions in German and
English; every letter is followed by a page break when printed.

The QR code is ``segno.make(link, error=QR_ERROR, micro=False)`` rendered with
``svg_inline(**QR_SVG_OPTIONS)``, so a test (or a sceptical operator) can re-encode a link and
compare.
"""

from __future__ import annotations

import csv
import html
import io
import multiprocessing
import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime
from typing import Any

__all__ = [
    "CSV_COLUMNS",
    "QR_ERROR",
    "QR_SVG_OPTIONS",
    "invites_csv",
    "invites_html",
    "qr_svg",
    "qr_svgs",
]

CSV_COLUMNS = ("user_id", "name", "external_id", "link", "expires")
QR_ERROR = "m"  # 15 % of the code may be damaged (a folded or scribbled-on letter)
QR_SVG_OPTIONS: dict[str, Any] = {"scale": 4, "border": 4, "omitsize": True, "svgclass": "qr"}
PARALLEL_FROM = 40  # letters; below this, starting worker processes costs more than it saves


def _rows(invites: Iterable[dict[str, Any]]) -> Iterable[tuple[str, str, str, str, str]]:
    for item in invites:
        invite = item["invite"]
        yield (
            str(item["user_id"]),
            str(item["name"]),
            str(item.get("external_id") or ""),
            str(invite["link"]),
            str(invite["expires"]),
        )


def invites_csv(invites: Iterable[dict[str, Any]]) -> str:
    """CSV with a header row (:data:`CSV_COLUMNS`); RFC 4180 quoting and CRLF line ends."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    writer.writerows(_rows(invites))
    return out.getvalue()


def qr_svg(link: str) -> str:
    """The invite link as an inline ``<svg>`` QR code."""
    import segno  # imported here: momedoctl's other commands start without it

    qr = segno.make(link, error=QR_ERROR, micro=False)
    return str(qr.svg_inline(**QR_SVG_OPTIONS))


def qr_svgs(links: list[str]) -> list[str]:
    """:func:`qr_svg` for many links, on all CPUs for a long list.

    segno chooses the best of eight masks per code in pure Python (15 ms on a PC, several
    times that on a Raspberry Pi), so 600 letters take seconds per core.
    """
    cpus = os.cpu_count() or 1
    if len(links) >= PARALLEL_FROM and cpus > 1:
        workers = min(cpus, 8)
        try:
            # spawn, not fork: the caller may have threads (and their locks) of its own.
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                chunk = max(1, len(links) // (workers * 4))
                return list(pool.map(qr_svg, links, chunksize=chunk))
        except (OSError, BrokenProcessPool):
            pass  # e.g. no /dev/shm in a container: do it here instead
    return [qr_svg(link) for link in links]


def _expiry(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return iso


_STYLE = """
@page { size: A4; margin: 18mm; }
* { box-sizing: border-box; }
body { font-family: "DejaVu Sans", Arial, Helvetica, sans-serif; font-size: 11pt;
       color: #000; margin: 0; }
.letter { page-break-after: always; break-after: page; padding: 4mm 0; }
.letter:last-of-type { page-break-after: auto; break-after: auto; }
h1 { font-size: 20pt; margin: 0 0 2mm 0; }
.uid { font-size: 13pt; margin: 0 0 6mm 0; }
.uid strong { font-family: "DejaVu Sans Mono", monospace; letter-spacing: 0.05em; }
.qr { display: block; width: 65mm; height: 65mm; margin: 0 0 4mm 0; }
.link { font-family: "DejaVu Sans Mono", monospace; font-size: 8.5pt; word-break: break-all;
        margin: 0 0 2mm 0; }
.expires { margin: 0 0 6mm 0; }
.howto { display: flex; gap: 8mm; }
.howto > div { flex: 1; }
h2 { font-size: 12pt; margin: 0 0 2mm 0; }
ol { margin: 0; padding-left: 5mm; }
li { margin-bottom: 1.5mm; }
.empty { font-size: 14pt; }
@media screen { .letter { border-bottom: 1px dashed #999; } }
"""

_HOWTO_DE = (
    "Installiere die momedo-App auf deinem Handy und öffne sie.",
    "Wähle „Einladung“ und scanne den QR-Code. Ohne Kamera: tippe den Link darunter ab.",
    "Der Code gilt nur einmal und nur bis zum angegebenen Datum. Wer ihn zuerst benutzt, "
    "meldet sich als du an: Zeige dieses Blatt niemandem und wirf es danach weg.",
    "Abgelaufen oder verloren? Frag deine Lehrkraft nach einer neuen Einladung.",
)
_HOWTO_EN = (
    "Install the momedo app on your phone and open it.",
    "Choose “Invitation” and scan the QR code. No camera: type in the link below it.",
    "The code works only once and only until the date shown. Whoever uses it first signs "
    "in as you: show this sheet to nobody and throw it away afterwards.",
    "Expired or lost? Ask your teacher for a new invitation.",
)


def _letter(user_id: str, name: str, link: str, expires: str, svg: str) -> str:
    e = html.escape
    steps_de = "".join(f"<li>{e(s)}</li>" for s in _HOWTO_DE)
    steps_en = "".join(f"<li>{e(s)}</li>" for s in _HOWTO_EN)
    return (
        '<section class="letter">\n'
        f"<h1>{e(name)}</h1>\n"
        f'<p class="uid">Benutzer-ID / User ID: <strong>{e(user_id)}</strong></p>\n'
        f"{svg}\n"
        f'<p class="link">{e(link)}</p>\n'
        f'<p class="expires">Gültig bis / valid until: {e(_expiry(expires))}</p>\n'
        '<div class="howto">\n'
        f'<div lang="de"><h2>So geht es</h2><ol>{steps_de}</ol></div>\n'
        f'<div lang="en"><h2>How to start</h2><ol>{steps_en}</ol></div>\n'
        "</div>\n"
        "</section>\n"
    )


def invites_html(invites: Iterable[dict[str, Any]], *, title: str = "momedo") -> str:
    """A printable HTML document: one page (``<section class="letter">``) per invite."""
    rows = list(_rows(invites))
    codes = qr_svgs([link for _uid, _name, _external, link, _expires in rows])
    letters = [
        _letter(user_id, name, link, expires, svg)
        for (user_id, name, _external, link, expires), svg in zip(rows, codes, strict=True)
    ]
    body = "".join(letters) or ('<p class="empty">Keine Einladungen / no invitations.</p>\n')
    return (
        "<!DOCTYPE html>\n"
        '<html lang="de">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}: Einladungen / invitations</title>\n"
        f"<style>{_STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n"
    )
