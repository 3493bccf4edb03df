"""Prometheus metrics of momedod (catalog: docs/OPERATIONS.md).

Names follow Prometheus conventions: the ``momedod_`` prefix, base units (seconds, bytes),
``_total`` for counters. No label ever carries a user, device or group; labels are bounded
sets (listener address, frame kind, reason, store operation). Labelled children used on hot
paths are cached here, since ``.labels()`` costs a dictionary lookup and a lock.

The HTTP endpoint runs on prometheus-client's own thread, so /metrics keeps answering during
an event-loop stall, which ``momedod_event_loop_lag_seconds`` then shows.

Cheap updates (issue 7): prometheus-client keeps every value in a ``MutexValue`` that takes a
``threading.Lock`` on each ``inc()``/``observe()``/``set()``, and ``.labels()`` takes the
parent's lock too. The metric classes here are prometheus-client's own ``Counter``/``Gauge``/
``Histogram`` (so names, labels, types, help and the exposition are exactly theirs, produced
by their ``collect()`` at scrape time), with the values held in plain Python floats without
a lock and the update methods reduced to the arithmetic. One update is a handful of bytecodes
with no call in between, which CPython's GIL does not interrupt, so concurrent updates from
the event loop and the store's writer thread are not lost; a scrape reads each float once.
"""

from __future__ import annotations

import gc
import math
import threading
import time
from bisect import bisect_left
from functools import cache
from typing import Any, TypeVar

import prometheus_client
from prometheus_client import CollectorRegistry, Info, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

import momedod


class _Value:
    """A metric value without a lock (prometheus-client's ``MutexValue`` interface)."""

    __slots__ = ("_value",)

    def __init__(self) -> None:
        self._value = 0.0

    def inc(self, amount: float) -> None:
        self._value += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self._value = value

    def get(self) -> float:
        return self._value

    def set_exemplar(self, exemplar: Any) -> None:
        raise NotImplementedError("momedod metrics carry no exemplars")

    def get_exemplar(self) -> None:
        return None


def _not_observable(metric: Any) -> ValueError:
    # The same error prometheus-client raises for a labelled parent without label values.
    return ValueError(f"{metric._type} metric is missing label values")


_M = TypeVar("_M", bound="_FastLabels")


class _FastLabels:
    """``.labels(*values)`` from a plain dict; the parent's locked path only on a miss."""

    _children_by_values: dict[tuple[object, ...], Any]

    def labels(self: _M, *labelvalues: object, **labelkwargs: object) -> _M:
        child: _M
        if labelvalues and not labelkwargs:
            try:
                return self._children_by_values[labelvalues]  # type: ignore[no-any-return]
            except AttributeError:
                self._children_by_values = {}
            except KeyError:
                pass
            child = super().labels(*labelvalues)  # type: ignore[misc]
            self._children_by_values[labelvalues] = child
            return child
        child = super().labels(*labelvalues, **labelkwargs)  # type: ignore[misc]
        return child


class Counter(_FastLabels, prometheus_client.Counter):
    """prometheus_client.Counter with lock-free increments."""

    def _metric_init(self) -> None:
        self._value = _Value()
        self._created = time.time()

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        if exemplar:
            raise ValueError("momedod metrics carry no exemplars")
        try:
            self._value._value += amount
        except AttributeError:
            raise _not_observable(self) from None


class Gauge(_FastLabels, prometheus_client.Gauge):
    """prometheus_client.Gauge (mode "all") with lock-free updates."""

    def _metric_init(self) -> None:
        self._value = _Value()

    def inc(self, amount: float = 1) -> None:
        try:
            self._value._value += amount
        except AttributeError:
            raise _not_observable(self) from None

    def dec(self, amount: float = 1) -> None:
        try:
            self._value._value -= amount
        except AttributeError:
            raise _not_observable(self) from None

    def set(self, value: float) -> None:
        try:
            self._value._value = float(value)
        except AttributeError:
            raise _not_observable(self) from None


class Histogram(_FastLabels, prometheus_client.Histogram):
    """prometheus_client.Histogram with lock-free observations (one bisect, two adds)."""

    def _metric_init(self) -> None:
        self._created = time.time()
        self._sum = _Value()
        self._buckets = [_Value() for _ in self._upper_bounds]

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        if exemplar:
            raise ValueError("momedod metrics carry no exemplars")
        try:
            self._sum._value += amount
        except AttributeError:
            raise _not_observable(self) from None
        if not math.isnan(amount):  # NaN is <= no bound: counted in no bucket, as upstream
            # The first bucket whose upper bound is >= amount (the last bound is +Inf).
            self._buckets[bisect_left(self._upper_bounds, amount)]._value += 1.0


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

GC_PAUSE = Histogram(
    "momedod_gc_pause_seconds",
    "Time each garbage-collector run stopped the process, by generation collected.",
    ["generation"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
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


class _GCTimer:
    """A ``gc.callbacks`` entry: observes every collection's duration into GC_PAUSE.

    Collections run under the GIL, one at a time, so one start time is enough. Allocates
    nothing per collection beyond the float it observes (a callback that allocated a lot
    could itself trigger collections).
    """

    __slots__ = ("_by_generation", "_clock", "_start")

    def __init__(self) -> None:
        self._clock = time.perf_counter
        self._start = 0.0
        self._by_generation = [GC_PAUSE.labels(str(g)) for g in range(3)]  # series from 0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = self._clock()
        else:
            self._by_generation[info["generation"]].observe(self._clock() - self._start)


def install_gc_timer() -> None:
    """Time every garbage collection into ``momedod_gc_pause_seconds`` (once per process)."""
    if not any(isinstance(cb, _GCTimer) for cb in gc.callbacks):
        gc.callbacks.append(_GCTimer())


def freeze_heap() -> None:
    """Collect once, then move every object alive now out of the collector's reach.

    Called once start-up is done (store open, listeners bound): the objects built until
    then live as long as the process, and ``gc.freeze()`` keeps later collections from
    walking them again and again (shorter pauses; Python docs, ``gc.freeze``).
    """
    gc.collect()
    gc.freeze()


class _NodeLabelled:
    """Every series of ``REGISTRY`` with a ``node`` label added (cluster mode), so the nodes'
    metrics stay apart in one Prometheus even when they are scraped through one address."""

    def __init__(self, node: str) -> None:
        self.node = node

    def collect(self) -> Any:
        for family in REGISTRY.collect():
            family.samples = [
                s if "node" in s.labels else s._replace(labels={**s.labels, "node": self.node})
                for s in family.samples
            ]
            yield family


def node_registry(node: str) -> CollectorRegistry:
    """A registry that serves ``REGISTRY``'s series, each labelled ``node=NODE``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_NodeLabelled(node))
    return registry


def serve(address: str, port: int, node: str | None = None) -> Any:
    """Start the /metrics HTTP server on its own thread; returns the server (``.shutdown()``).

    With ``node`` (a cluster node's name) every series carries the label ``node``."""
    registry = REGISTRY if node is None else node_registry(node)
    server, _thread = start_http_server(port, addr=address, registry=registry)
    return server
