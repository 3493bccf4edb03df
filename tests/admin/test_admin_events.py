"""The live-data helpers of the admin socket: message rates and the warning/error ring."""

from __future__ import annotations

import structlog
from prometheus_client import CollectorRegistry, Counter

from momedod.admin.events import LogRing, RateSampler, counter_total, install_log_hook
from momedod.observability import logging as mlog


def test_rates_average_over_the_window():
    values = [0.0, 0.0]
    sampler = RateSampler(lambda: tuple(values), window=5.0)
    assert sampler.rates(0.0) == ([0.0, 0.0], 0.0)  # nothing sampled yet
    for t in range(11):  # one sample per second, 10 accepted and 20 delivered per second
        sampler.sample(float(t))
        values[0] += 10
        values[1] += 20
    rates, span = sampler.rates(10.5)
    assert span == 5.5  # from the newest sample at least 5 s old (t=5) to now
    assert rates == [10 * 6 / 5.5, 20 * 6 / 5.5]
    values[0] += 1000  # a burst just now shows at once
    assert sampler.rates(10.5)[0][0] > 190


def test_rates_right_after_the_start_count_as_one_second():
    values = [0.0]
    sampler = RateSampler(lambda: tuple(values))
    sampler.sample(100.0)
    values[0] = 20
    assert sampler.rates(100.2) == ([20.0], 1.0)


def test_counter_total_sums_label_children():
    registry = CollectorRegistry()
    plain = Counter("x_total", "x", registry=registry)
    labelled = Counter("y_total", "y", ["kind"], registry=registry)
    plain.inc(3)
    labelled.labels("a").inc(2)
    labelled.labels("b").inc(5)
    assert (counter_total(plain), counter_total(labelled)) == (3.0, 7.0)


def test_log_ring_keeps_warnings_and_errors_only_redacted_and_bounded():
    ring = LogRing(size=3)
    ring(None, "info", {"event": "quiet", "level": "info"})
    ring(None, "debug", {"event": "quieter"})
    assert ring.seq == 0
    ring(None, "warning", {"event": "w", "level": "warning", "code": "SECRET", "n": 3})
    ring(None, "exception", {"event": "e", "level": "error", "exc_info": True, "obj": object()})
    [(n1, w), (n2, e)] = ring.since(0)
    assert (n1, n2) == (1, 2)
    assert (w["level"], w["event"], w["fields"]) == ("warning", "w", {"code": "[redacted]", "n": 3})
    assert e["level"] == "error" and e["fields"]["exception"] is True
    assert isinstance(e["fields"]["obj"], str)
    for i in range(5):
        ring(None, "error", {"event": f"e{i}", "level": "error"})
    assert [n for n, _ in ring.since(0)] == [5, 6, 7]  # the oldest fell out
    assert ring.since(7) == []


def test_install_log_hook_goes_after_redaction_and_once():
    saved = structlog.get_config()
    try:
        mlog.configure("info", "json")
        ring = LogRing()
        install_log_hook(ring)
        install_log_hook(ring)
        processors = structlog.get_config()["processors"]
        assert processors.count(ring) == 1
        assert processors.index(ring) == processors.index(mlog._redact) + 1
        structlog.get_logger("t").warning("hooked", key="private")
        [(_, entry)] = ring.since(0)
        assert entry["event"] == "hooked" and entry["fields"]["key"] == "[redacted]"
        assert set(entry) == {"level", "event", "time", "fields"}
    finally:
        structlog.configure(**saved)


def test_rates_use_the_newest_sample_a_window_old_even_between_samples():
    values = [0.0]
    sampler = RateSampler(lambda: tuple(values), window=5.0)
    for t in range(8):
        sampler.sample(float(t))
    values[0] = 10.0  # traffic right after the sample at t=7
    # At 12.5 the sample at t=7 is the base although no sample() pruned since.
    assert sampler.rates(12.5) == ([10 / 5.5], 5.5)
    sampler.sample(8.0)
    assert sampler.rates(13.5) == ([0.0], 5.5)  # the traffic is now older than the window
