"""Push target URLs and the hosts the server may call, decided without I/O.

A device names the URL the server POSTs its wake-ups to, so that URL is user input: left
unchecked, it would let any user make the server call internal addresses (server-side
request forgery). The rule is an allow-list of origins (scheme, host, port) from the
configuration: ``[push] gateway_url``'s origin plus ``[push] allowed_hosts``. Nothing is
resolved here; the check is on the name as written, at registration and again before every
request, and requests never follow redirects.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["AllowedHosts", "Origin", "origin_of", "push_rule"]

_DEFAULT_PORT = {"https": 443, "http": 80}


@dataclass(frozen=True, slots=True)
class Origin:
    """Scheme, host (lower case, no trailing dot) and port of a URL."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def origin_of(url: str) -> Origin:
    """The origin of an absolute http(s) URL. Raises ValueError saying what is wrong."""
    if any(c.isspace() or ord(c) < 0x20 for c in url):
        raise ValueError("the URL contains white space or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"not a valid URL ({e})") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORT:
        raise ValueError("only https:// (or explicitly allowed http://) URLs are accepted")
    if parts.username is not None or parts.password is not None:
        raise ValueError("the URL must not contain a user name or password")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise ValueError("the URL has no host")
    return Origin(scheme, host, port or _DEFAULT_PORT[scheme])


def push_rule(text: str) -> Origin:
    """One ``allowed_hosts`` entry (or ``gateway_url``) as the origin it allows.

    ``host`` and ``host:port`` mean https; ``http://host:port`` allows plain HTTP to exactly
    that port; a full URL allows its origin. Raises ValueError.
    """
    return origin_of(text if "://" in text else "https://" + text)


class AllowedHosts:
    """The origins push requests may go to."""

    def __init__(self, rules: Iterable[Origin]) -> None:
        self._origins = frozenset(rules)

    @classmethod
    def from_config(cls, gateway_url: str | None, allowed_hosts: Iterable[str]) -> AllowedHosts:
        """The gateway's origin plus the operator's list (both validated by the config)."""
        rules = [push_rule(h) for h in allowed_hosts]
        if gateway_url:
            rules.append(origin_of(gateway_url))
        return cls(rules)

    def check(self, url: str) -> Origin:
        """The URL's origin if requests may go there; ValueError with the reason otherwise."""
        origin = origin_of(url)
        if origin in self._origins:
            return origin
        if origin.scheme == "http" and any(
            o.scheme == "https" and o.host == origin.host for o in self._origins
        ):
            raise ValueError(f"{origin.host} is allowed over https only; plain http is refused")
        raise ValueError(
            f"push host {origin.host}:{origin.port} is not allowed on this server"
            " (ask the operator to add it to [push] allowed_hosts)"
        )
