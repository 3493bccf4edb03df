"""A tiny client for the momedo bridge's HTTP API (docs/bridge-openapi.yaml), stdlib only.

Configuration from the environment:
  MOMEDO_BRIDGE_URL         default http://127.0.0.1:8480
  MOMEDO_BRIDGE_TOKEN_FILE  the bridge's token file (or MOMEDO_BRIDGE_TOKEN: the token itself)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
import urllib.error
import urllib.request
from typing import Any

URL = os.environ.get("MOMEDO_BRIDGE_URL", "http://127.0.0.1:8480").rstrip("/")


def token() -> str:
    if "MOMEDO_BRIDGE_TOKEN" in os.environ:
        return os.environ["MOMEDO_BRIDGE_TOKEN"].strip()
    path = os.environ.get("MOMEDO_BRIDGE_TOKEN_FILE")
    if not path:
        raise SystemExit("set MOMEDO_BRIDGE_TOKEN_FILE to the bridge's token file")
    with open(path, encoding="utf-8") as fh:
        return fh.read().strip()


class BridgeError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text}")
        self.status = status


def call(method: str, path: str, body: Any = None) -> Any:
    """One API call; returns the decoded JSON (or bytes for a non-JSON answer)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(URL + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token()}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            raw = resp.read()
            if resp.headers.get_content_type() == "application/json":
                return json.loads(raw)
            return raw
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")
        raise BridgeError(e.code, detail) from None


def download(url: str) -> bytes:
    """An attachment's decrypted bytes (the ``url`` from a message)."""
    req = urllib.request.Request(url)
    req.add_header("Authorization", f"Bearer {token()}")
    with urllib.request.urlopen(req, timeout=60) as resp:
        return resp.read()


def verify_webhook(headers: Any, body: bytes, max_age_s: int = 300) -> bool:
    """Check ``X-Momedo-Signature`` = sha256=HMAC-SHA256(token, timestamp + "." + body)."""
    ts = headers.get("X-Momedo-Timestamp", "")
    given = headers.get("X-Momedo-Signature", "")
    if not ts.isdigit() or abs(time.time() - int(ts)) > max_age_s:
        return False
    mac = hmac.new(token().encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest("sha256=" + mac, given)
