"""Abuse limits: token buckets keyed by source address or device, on trio's monotonic clock.

Theory of operation. Every limit is a token bucket: ``rate`` tokens per second up to ``burst``;
an action takes one token or is refused, and the caller learns how many seconds until the next
token (the back-off it tells the client). Buckets live in one dict per limit; a bucket that has
refilled completely carries no information and is dropped by :meth:`Buckets.sweep`, and the dict
is capped (the oldest half is dropped when full), so memory stays bounded when an attacker
cycles addresses. The clock is monotonic: wall-clock jumps do not change any limit.

What uses which (config ``[abuse]``, docs/ADMIN.md "Abuse limits"):

* failed ENROLL/AUTH per source address: :attr:`Abuse.auth_failures` (a refusal is the fatal
  TOO_MANY_ATTEMPTS before any signature check or store access);
* frames per connection: a :class:`Bucket` per session (over it, the session reads that
  connection no faster than the rate: back-pressure, nothing is refused);
* KEY_GET/KEY_CLAIM per device: :attr:`Abuse.key_lookups` (RATE_LIMITED);
* connections per source address: :meth:`Abuse.connect` / :meth:`Abuse.disconnect`
  (the fatal SERVER_BUSY);
* concurrent TLS handshakes: :attr:`Abuse.handshakes`, a capacity limiter in the listener.
"""

from __future__ import annotations

from collections.abc import Hashable

import trio

from momedod.config import AbuseConfig
from momedod.observability import metrics

MAX_KEYS = 65536  # buckets per limit before the oldest half is forgotten


class Bucket:
    """One token bucket: ``burst`` tokens, refilled at ``rate`` per second."""

    __slots__ = ("stamp", "tokens")

    def __init__(self, burst: float, now: float) -> None:
        self.tokens = burst
        self.stamp = now

    def take(self, rate: float, burst: float, now: float) -> float:
        """Take a token; return 0.0, or the seconds to wait for one (nothing taken)."""
        tokens = min(burst, self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / rate


class Buckets:
    """Token buckets by key (address or device) for one limit."""

    def __init__(self, limit: str, rate: float, burst: int) -> None:
        self.limit = limit
        self.rate = rate
        self.burst = float(burst)
        self._buckets: dict[Hashable, Bucket] = {}

    def take(self, key: Hashable, *, count: bool = True) -> float:
        """Take a token for ``key``: 0.0 if allowed, else the back-off in seconds (counted
        in ``momedod_abuse_refused_total``)."""
        now = trio.current_time()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_KEYS:
                self.sweep(now)
            bucket = self._buckets[key] = Bucket(self.burst, now)
        wait = bucket.take(self.rate, self.burst, now)
        if wait and count:
            metrics.ABUSE_REFUSED.labels(self.limit).inc()
        return wait

    def blocked(self, key: Hashable) -> float:
        """Seconds until ``key`` has a token again (0.0: not blocked; counted if blocked);
        takes nothing. For limits charged after the fact (failed logins)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0
        tokens = bucket.tokens + (trio.current_time() - bucket.stamp) * self.rate
        if tokens >= 1.0:
            return 0.0
        metrics.ABUSE_REFUSED.labels(self.limit).inc()
        return (1.0 - tokens) / self.rate

    def charge(self, key: Hashable) -> None:
        """Take a token for ``key`` if one is left (a failed login happened)."""
        self.take(key, count=False)

    def sweep(self, now: float) -> None:
        """Drop full buckets; if still too many, the least recently used half."""
        rate, burst = self.rate, self.burst
        full = [k for k, b in self._buckets.items() if b.tokens + (now - b.stamp) * rate >= burst]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) >= MAX_KEYS:
            for k in list(self._buckets)[: len(self._buckets) // 2]:
                del self._buckets[k]

    def __len__(self) -> int:
        return len(self._buckets)


class Abuse:
    """The abuse limits of one daemon, shared by all listeners and sessions."""

    def __init__(self, cfg: AbuseConfig | None = None) -> None:
        self.auth_failures = Buckets("auth_failures", 1.0, 1)
        self.key_lookups = Buckets("key_lookups", 1.0, 1)
        self.handshakes = trio.CapacityLimiter(1)
        self._connections: dict[str, int] = {}
        self.configure(cfg or AbuseConfig())

    def configure(self, cfg: AbuseConfig) -> None:
        """Apply (new) settings; a reload keeps the buckets and counts."""
        self.cfg = cfg
        self.auth_failures.rate = cfg.auth_failures / cfg.auth_failure_window
        self.auth_failures.burst = float(cfg.auth_failures)
        self.key_lookups.rate = cfg.key_lookups_per_minute / 60.0
        self.key_lookups.burst = float(cfg.key_lookups_per_minute)
        self.handshakes.total_tokens = cfg.max_tls_handshakes

    def frame_bucket(self) -> Bucket:
        """A fresh per-connection frame bucket (see :meth:`frame_wait`)."""
        return Bucket(float(self.cfg.frame_burst), trio.current_time())

    def frame_wait(self, bucket: Bucket) -> float:
        """Take a token for one received frame: 0.0, or seconds until the next token (the
        caller waits that long, then the frame has used that token)."""
        cfg = self.cfg
        wait = bucket.take(cfg.frames_per_second, cfg.frame_burst, trio.current_time())
        if wait:
            metrics.ABUSE_REFUSED.labels("frames").inc()
        return wait

    def connect(self, host: str) -> bool:
        """Count a connection from ``host``; False (counted as refused) over the cap."""
        n = self._connections.get(host, 0)
        if n >= self.cfg.connections_per_address:
            metrics.ABUSE_REFUSED.labels("connections").inc()
            return False
        self._connections[host] = n + 1
        return True

    def disconnect(self, host: str) -> None:
        """Forget one connection counted by a successful :meth:`connect`."""
        n = self._connections.pop(host, 0) - 1
        if n > 0:
            self._connections[host] = n
