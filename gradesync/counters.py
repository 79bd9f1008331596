"""Counters for `/metrics` (gradesync.metrics), shared by every worker on every host: kept in the shared
cache, so any web host answers a scrape with the whole fleet's totals.

A sender tallies a batch's sends in memory and adds them with one Redis pipeline when it writes the
batch (`Tally.flush`), so counting costs one round trip per batch, not per grade. Counting never
fails a delivery: a cache that is down loses the batch's counts (logged), not the grades.

Exact with Redis (production's cache). On the embedded file cache (`make run`) the counters are one
cache entry rewritten per flush: concurrent flushes may lose an increment there.
"""
from __future__ import annotations

import logging
from collections import Counter

from django.core.cache import cache

from .shared_cache import redis_client

logger = logging.getLogger(__name__)

HASH_KEY = "metrics:counters"
# Completion → LMS latency buckets, in seconds (a live grade lands in about a second; a retried one in minutes).
LATENCY_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)
_SEPARATOR = "|"


def field(name: str, **labels: object) -> str:
    """One counter's field: its name and its labels, e.g. `lms_responses|code=200|family=moodle`."""
    return _SEPARATOR.join([name, *(f"{key}={labels[key]}" for key in sorted(labels))])


def parse_field(text: str) -> tuple[str, dict[str, str]]:
    name, *pairs = text.split(_SEPARATOR)
    return name, dict(pair.split("=", 1) for pair in pairs)


def add(counts: dict[str, float]) -> None:
    """Add to the shared counters; a failure is logged and the counts dropped."""
    counts = {key: value for key, value in counts.items() if value}
    if not counts:
        return
    try:
        client = redis_client()
        if client is not None:
            key = cache.make_and_validate_key(HASH_KEY)
            pipe = client.pipeline(transaction=False)
            for name, value in counts.items():
                if isinstance(value, int):
                    pipe.hincrby(key, name, value)
                else:
                    pipe.hincrbyfloat(key, name, value)
            pipe.execute()
            return
        totals = cache.get(HASH_KEY) or {}
        for name, value in counts.items():
            totals[name] = totals.get(name, 0) + value
        cache.set(HASH_KEY, totals, None)
    except Exception as error:  # noqa: BLE001 — metrics never cost a grade
        logger.warning("Could not add %d metric counters: %s", len(counts), error)


def read() -> dict[str, float]:
    """Every counter's total, by field."""
    client = redis_client()
    if client is None:
        return dict(cache.get(HASH_KEY) or {})
    raw = client.hgetall(cache.make_and_validate_key(HASH_KEY))
    totals: dict[str, float] = {}
    for name, value in raw.items():
        try:
            totals[name.decode()] = int(value)
        except ValueError:
            totals[name.decode()] = float(value)  # the latency sum (HINCRBYFLOAT)
    return totals


def count(name: str, value: int = 1, **labels: object) -> None:
    """Count one event now (token requests, sweeps: rare enough for a round trip each)."""
    add({field(name, **labels): value})


class Tally:
    """One sender's counts since its last flush."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()

    def response(self, family: str, status_code: int | None) -> None:
        """The LMS answered a score POST (or did not: code "none")."""
        self.counts[field("lms_responses", family=family, code=status_code or "none")] += 1

    def landed(self, result: str) -> None:
        self.counts[field("deliveries_landed", result=result)] += 1

    def latency(self, seconds: float) -> None:
        """A live grade reached the LMS `seconds` after it was recorded."""
        bucket = next((str(bound) for bound in LATENCY_BUCKETS if seconds <= bound), "+Inf")
        self.counts[field("delivery_latency_bucket", le=bucket)] += 1
        self.counts[field("delivery_latency_sum")] += max(seconds, 0.0)

    def flush(self) -> None:
        counts, self.counts = dict(self.counts), Counter()
        add(counts)
