"""Prometheus metrics of momedod (catalog: docs/OPERATIONS.md).

Names follow Prometheus conventions: the ``momedod_`` prefix, base units (seconds, bytes),
``_total`` for counters. No label ever carries a user, device or group; labels are bounded
sets (listener address, frame kind, reason, store operation). Labelled children used on hot
paths are cached here, since ``.labels()`` costs a dictionary lookup and a lock.

The HTTP endpoint runs on prometheus-client's own thread, so /metrics keeps answering during
an event-loop stall, which ``momedod_event_loop_lag_seconds`` then shows.
"""

from __future__ import annotations

import threading
from functools import cache
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

import momedod

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

BUILD = Info("momedod_build", "Version of the running momedod.", registry=REGISTRY)
BUILD.info({"version": momedod.__version__})

CONNECTIONS = Gauge(
    "momedod_connections",
    "Open client connections per listener.",
    ["listener"],
    registry=REGISTRY,
)
CONNECTIONS_ACCEPTED = Counter(
    "momedod_connections_accepted_total",
    "TCP connections accepted per listener.",
    ["listener"],
    registry=REGISTRY,
)
LISTENER_UP = Gauge(
    "momedod_listener_up",
    "1 while the listener is bound and accepting.",
    ["listener"],
    registry=REGISTRY,
)
MAX_CONNECTIONS = Gauge(
    "momedod_listener_max_connections",
    "Configured connection limit per listener.",
    ["listener"],
    registry=REGISTRY,
)
HANDSHAKE_FAILURES = Counter(
    "momedod_tls_handshake_failures_total",
    "TLS handshakes that did not complete, by reason (timeout, error).",
    ["reason"],
    registry=REGISTRY,
)
AUTH_FAILURES = Counter(
    "momedod_auth_failures_total",
    "Rejected enrollments and logins, by reason (bad_signature, unknown_device, "
    "invite_invalid, invite_expired, user_disabled, device_revoked, timeout, too_many_attempts).",
    ["reason"],
    registry=REGISTRY,
)
ABUSE_REFUSED = Counter(
    "momedod_abuse_refused_total",
    "Requests and connections refused by an abuse limit ([abuse]), by limit (auth_failures,"
    " frames, key_lookups, prekeys, connections, tls_handshakes).",
    ["limit"],
    registry=REGISTRY,
)
AUTHENTICATED = Counter(
    "momedod_sessions_authenticated_total",
    "Sessions that authenticated (login or enrollment).",
    registry=REGISTRY,
)
ONLINE_DEVICES = Gauge(
    "momedod_online_devices", "Devices with an authenticated session.", registry=REGISTRY
)
FRAMES_RECEIVED = Counter(
    "momedod_frames_received_total",
    "Frames received from clients, by kind.",
    ["kind"],
    registry=REGISTRY,
)
FRAMES_SENT = Counter(
    "momedod_frames_sent_total", "Frames sent to clients, by kind.", ["kind"], registry=REGISTRY
)
PROTOCOL_ERRORS = Counter(
    "momedod_protocol_errors_total",
    "ERROR frames sent, by error name.",
    ["error"],
    registry=REGISTRY,
)
MESSAGES_ACCEPTED = Counter(
    "momedod_messages_accepted_total",
    "SENDs committed to the store (duplicates excluded).",
    registry=REGISTRY,
)
MESSAGES_DUPLICATE = Counter(
    "momedod_messages_duplicate_total",
    "Retried SENDs answered as duplicates.",
    registry=REGISTRY,
)
MAILBOX_ENTRIES_ADDED = Counter(
    "momedod_mailbox_entries_added_total",
    "Mailbox entries created (one per recipient device of an accepted message).",
    registry=REGISTRY,
)
CONV_MESSAGES = Counter(
    "momedod_conv_messages_total",
    "CONV_SENDs (group and channel posts) committed to the store (duplicates excluded).",
    registry=REGISTRY,
)
CONV_FANOUT = Histogram(
    "momedod_conv_fanout_devices",
    "Devices one conversation post was enqueued for.",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000),
    registry=REGISTRY,
)
FANOUT_SKIPPED = Counter(
    "momedod_fanout_skipped_full_total",
    "Devices a conversation post or event skipped because their mailbox was full.",
    registry=REGISTRY,
)
CONV_EVENTS = Counter(
    "momedod_conv_events_total",
    "Conversation events (roster changed, removed, deleted) enqueued, one per device.",
    registry=REGISTRY,
)
CONV_CHANGES = Counter(
    "momedod_conv_roster_changes_total",
    "Conversation rosters stored, by origin (user: CONV_PUT, operator: momedoctl group).",
    ["origin"],
    registry=REGISTRY,
)
MESSAGES_DELIVERED = Counter(
    "momedod_messages_delivered_total", "DELIVER frames sent to devices.", registry=REGISTRY
)
DELIVERY_LATENCY = Histogram(
    "momedod_delivery_latency_seconds",
    "Time from a message's commit to its DELIVER being queued for a device.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600, 3600, 86400),
    registry=REGISTRY,
)
STORE_OPERATION = Histogram(
    "momedod_store_operation_duration_seconds",
    "Store calls as the event loop sees them (queueing and commit included), by operation.",
    ["operation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
STORE_BATCH = Histogram(
    "momedod_store_commit_batch_size",
    "Write operations committed per transaction (group commit).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    registry=REGISTRY,
)
STORE_ERRORS = Counter(
    "momedod_store_errors_total",
    "Store calls that failed with a storage error.",
    registry=REGISTRY,
)
LOOP_LAG = Gauge(
    "momedod_event_loop_lag_seconds",
    "How late the event loop ran its last 1-second heartbeat (a stalled loop shows here).",
    registry=REGISTRY,
)
CERT_EXPIRY = Gauge(
    "momedod_certificate_expiry_timestamp_seconds",
    "Unix time when the listener's certificate expires.",
    ["listener"],
    registry=REGISTRY,
)
RELOADS = Counter(
    "momedod_config_reloads_total",
    "Configuration reloads (SIGHUP), by result.",
    ["result"],
    registry=REGISTRY,
)
ADMIN_REQUESTS = Counter(
    "momedod_admin_requests_total",
    "Admin socket requests, by command.",
    ["command"],
    registry=REGISTRY,
)
START_TIME = Gauge("momedod_start_time_seconds", "Unix time the daemon started.", registry=REGISTRY)
BLOB_UPLOADS = Counter(
    "momedod_blob_uploads_total",
    "Attachment uploads completed (hash checked, stored durably).",
    registry=REGISTRY,
)
BLOB_COLLECTED = Counter(
    "momedod_blob_collected_total",
    "Blobs removed by the collector: expired (unreferenced past the TTL) or partial uploads.",
    ["kind"],
    registry=REGISTRY,
)

PUSH_SENT = Counter(
    "momedod_push_wakeups_sent_total",
    "Content-free wake-ups a push distributor or gateway accepted (2xx).",
    registry=REGISTRY,
)
PUSH_FAILED = Counter(
    "momedod_push_wakeups_failed_total",
    "Wake-ups given up, by reason: gone (404/410, target dropped), rejected (other 4xx),"
    " redirect (3xx, never followed), exhausted (5xx/429/timeouts on every attempt),"
    " not_allowed (host no longer in allowed_hosts), queue_full (dropped before sending).",
    ["reason"],
    registry=REGISTRY,
)
PUSH_RETRIES = Counter(
    "momedod_push_retries_total",
    "Push requests repeated after a 5xx, 429, timeout or connection failure.",
    registry=REGISTRY,
)
PUSH_COALESCED = Counter(
    "momedod_push_wakeups_coalesced_total",
    "Wake-ups not sent because the device got one within [push] coalesce_seconds.",
    registry=REGISTRY,
)
PUSH_HELD = Gauge(
    "momedod_push_held",
    "Wake-ups held because their device's user is in quiet hours (one per device at most).",
    registry=REGISTRY,
)
PUSH_QUEUE = Gauge(
    "momedod_push_queue_depth",
    "Wake-ups waiting for a sender task.",
    registry=REGISTRY,
)


class StoreSnapshot:
    """Gauges read from the store by the housekeeping task (not on every scrape)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, float] = {}

    def update(self, **values: float) -> None:
        with self._lock:
            self._values.update(values)

    def collect(self) -> Any:
        with self._lock:
            values = dict(self._values)
        help_texts = {
            "momedod_users": "Users (not deleted).",
            "momedod_devices": "Active (not revoked) devices.",
            "momedod_mailbox_entries": "Entries waiting in device mailboxes (backlog).",
            "momedod_mailbox_oldest_age_seconds": "Age of the oldest waiting mailbox entry.",
            "momedod_store_size_bytes": "Size of the database files.",
            "momedod_blobs": "Complete attachment blobs stored.",
            "momedod_blob_bytes": "Bytes of stored attachment blobs (unfinished uploads included).",
            "momedod_state_dir_free_bytes": "Free space on the state directory's filesystem.",
            "momedod_state_dir_size_bytes": "Size of the state directory's filesystem.",
        }
        for name, text in help_texts.items():
            if name in values:
                yield GaugeMetricFamily(name, text, value=values[name])


STORE_SNAPSHOT = StoreSnapshot()
REGISTRY.register(STORE_SNAPSHOT)


@cache
def frame_received(kind: str) -> Counter:
    """Cached child of FRAMES_RECEIVED for one frame kind."""
    return FRAMES_RECEIVED.labels(kind)


@cache
def frame_sent(kind: str) -> Counter:
    """Cached child of FRAMES_SENT for one frame kind."""
    return FRAMES_SENT.labels(kind)


@cache
def store_operation(name: str) -> Histogram:
    """Cached child of STORE_OPERATION for one store method."""
    return STORE_OPERATION.labels(name)


class StoreMetrics:
    """The store's observer: operation latencies and group-commit batch sizes."""

    def operation(self, name: str, seconds: float) -> None:
        store_operation(name).observe(seconds)

    def batch(self, size: int) -> None:
        STORE_BATCH.observe(size)


def serve(address: str, port: int) -> Any:
    """Start the /metrics HTTP server on its own thread; returns the server (``.shutdown()``)."""
    server, _thread = start_http_server(port, addr=address, registry=REGISTRY)
    return server
