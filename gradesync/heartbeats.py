"""Heartbeats of the processes nobody requests pages from: beat (it marks each task it publishes) and
the workers (the `gradesync.heartbeat` task, scheduled every 15 s, marks the worker that ran it).
Read by `/readyz?full=1` (config.health): a stale beat means the sweeper and the resync watchdog stopped.
"""
from __future__ import annotations

import socket
import time

from django.core.cache import cache

BEAT_KEY = "heartbeat:beat"
WORKER_KEY = "heartbeat:worker"
STALE_SECONDS = 60  # four missed 15 s beats
_KEEP_SECONDS = 24 * 3600


def beat_published() -> None:
    """Beat has just published a periodic task (celery's before_task_publish, in the beat process)."""
    cache.set(BEAT_KEY, {"at": time.time(), "host": socket.gethostname()}, _KEEP_SECONDS)


def worker_ran(hostname: str) -> str:
    """A worker has run the heartbeat task."""
    cache.set(WORKER_KEY, {"at": time.time(), "host": hostname}, _KEEP_SECONDS)
    return "ok"


def _marks() -> dict[str, dict | None]:
    found = cache.get_many([BEAT_KEY, WORKER_KEY])
    return {"beat": found.get(BEAT_KEY), "worker": found.get(WORKER_KEY)}


def _age(mark: dict | None) -> float | None:
    return time.time() - mark["at"] if mark else None


def ages() -> dict[str, float | None]:
    """Seconds since each heartbeat (None: never), for /metrics."""
    return {process: _age(mark) for process, mark in _marks().items()}


def report() -> dict[str, str]:
    """{"beat": "ok" or why not, "worker": …}."""
    states = {}
    for process, mark in _marks().items():
        age = _age(mark)
        if age is None:
            states[process] = f"no {process} heartbeat yet"
        elif age > STALE_SECONDS:
            states[process] = f"last {process} heartbeat {age:.0f} s ago (from {mark['host']})"
        else:
            states[process] = "ok"
    return states
