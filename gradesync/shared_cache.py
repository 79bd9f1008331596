"""The shared cache's Redis client, for what Django's cache API cannot do (lists, hashes, SCAN): the
lingering senders' wake-ups (wakeups.py), the metrics' counters (counters.py) and slot scans (metrics.py).
"""
from __future__ import annotations

from django.core.cache import cache


def redis_client():
    """The shared cache's Redis client, or None (another backend: the callers do without)."""
    backend = getattr(cache, "_cache", None)
    if backend is None or not hasattr(backend, "get_client"):
        return None
    return backend.get_client(write=True)
