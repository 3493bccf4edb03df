"""Hypothesis profiles for the fuzz properties.

``default`` keeps every property short so the whole directory runs in well under 30 s with
``make test``; ``long`` (``make test-long``, i.e. ``--hypothesis-profile=long``) tries many
more inputs. Neither keeps an example database: a failure prints its minimal input, which
then becomes an explicit regression test.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
settings.register_profile(
    "long",
    max_examples=3000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
settings.load_profile("default")
