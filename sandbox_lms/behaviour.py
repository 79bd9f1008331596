"""A registration's behaviour beyond its profile's rules: the faults it injects (latency, 5xx, 429,
dropped connections, timeouts, outage windows) and Canvas's leaky-bucket rate limit.
"""
from __future__ import annotations

import random
import socket
import time
from datetime import datetime
from typing import Any

from django.utils import timezone

from .caches import _buckets, _lock
from .models import Profile, SandboxRegistration
from .platform import configure_registration
from .protocol import ApiError, DropConnection


FAULT_FIELDS = {
    "latency_ms": "Latency of every service request (ms): a score is answered this long after it arrived, its own work included; other requests wait this long first",
    "error_rate": "Fraction of service requests answered with a 5xx",
    "error_status": "The 5xx status (default 503)",
    "throttle_rate": "Fraction answered 429 with Retry-After",
    "retry_after": "Retry-After seconds for 429 (default 5)",
    "drop_rate": "Fraction whose connection is closed without an answer",
    "timeout_rate": "Fraction answered only after timeout_seconds",
    "timeout_seconds": "How long a timed-out request hangs (default 30)",
    "outage_start": "Outage window start (ISO 8601)",
    "outage_end": "Outage window end (ISO 8601)",
}


def set_faults(*, registration: SandboxRegistration, **faults: Any) -> SandboxRegistration:
    """Replace the registration's faults, e.g. `set_faults(registration=r, error_rate=1.0)`; none clears them."""
    unknown = set(faults) - set(FAULT_FIELDS)
    if unknown:
        raise ValueError(f"Unknown faults: {sorted(unknown)}")
    cleaned = {}
    for name, value in faults.items():
        if value in (None, ""):
            continue
        if isinstance(value, datetime):
            value = value.isoformat()
        cleaned[name] = value
    return configure_registration(registration=registration, faults=cleaned)


def _socket_of(environ: dict[str, Any]) -> socket.socket | None:
    sock = environ.get("gunicorn.socket")
    if sock is not None:
        return sock
    # Django's dev/live server: LimitedStream(s) → BufferedReader → SocketIO → socket.
    stream = environ.get("wsgi.input")
    for _ in range(8):
        if isinstance(stream, socket.socket):
            return stream
        if hasattr(stream, "_read"):
            stream = getattr(stream._read, "__self__", None)
        elif hasattr(stream, "raw"):
            stream = stream.raw
        elif hasattr(stream, "_sock"):
            stream = stream._sock
        else:
            return None
    return None


def drop_connection(environ: dict[str, Any]) -> None:
    sock = _socket_of(environ)
    if sock is None:
        raise RuntimeError("Cannot find the client socket to drop")
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def apply_faults(registration: SandboxRegistration, *, answer_later: bool = False) -> None:
    """Raise what the registration's faults say this request meets; sleep for added latency (unless
    `answer_later`: the caller then answers at `answer_at`, its processing time included)."""
    faults = registration.faults
    if not faults:
        return
    start, end = faults.get("outage_start"), faults.get("outage_end")
    if start or end:
        now = timezone.now()
        if (not start or datetime.fromisoformat(start) <= now) and (not end or now < datetime.fromisoformat(end)):
            raise ApiError(
                503, "503 Service Unavailable (sandbox outage window)", content_type="text/plain",
                headers={"Retry-After": "60"},
            )
    if random.random() < float(faults.get("drop_rate", 0)):
        raise DropConnection()
    if random.random() < float(faults.get("timeout_rate", 0)):
        time.sleep(float(faults.get("timeout_seconds", 30)))
        raise ApiError(504, "504 Gateway Timeout", content_type="text/plain")
    if faults.get("latency_ms") and not answer_later:
        time.sleep(float(faults["latency_ms"]) / 1000)
    if random.random() < float(faults.get("error_rate", 0)):
        status = int(faults.get("error_status", 503))
        raise ApiError(status, f"{status} Server Error (sandbox fault)", content_type="text/plain")
    if random.random() < float(faults.get("throttle_rate", 0)):
        raise ApiError(
            429, "429 Too Many Requests", content_type="text/plain",
            headers={"Retry-After": str(faults.get("retry_after", 5))},
        )


def answer_at(registration: SandboxRegistration | None, arrived: float) -> None:
    """Hold the answer until `latency_ms` after the request arrived (time.monotonic()): an LMS that
    answers in that time, its own work included, as a slow LMS's response time is measured."""
    latency = float((registration.faults or {}).get("latency_ms") or 0) if registration is not None else 0.0
    remaining = latency / 1000 - (time.monotonic() - arrived)
    if remaining > 0:
        time.sleep(remaining)


def throttle(registration: SandboxRegistration) -> dict[str, str]:
    """Canvas's leaky bucket per registration (per server process): 403 when it would overflow."""
    if registration.profile != Profile.CANVAS or not registration.rate_limit_enabled:
        return {}
    capacity, leak, cost = (
        registration.rate_limit_capacity, registration.rate_limit_leak_per_second, registration.rate_limit_cost,
    )
    now = time.monotonic()
    with _lock:
        level, last = _buckets.get(registration.pk, [0.0, now])
        level = max(0.0, level - (now - last) * leak)
        if level + cost > capacity:
            _buckets[registration.pk] = [level, now]
            raise ApiError(
                403, "403 Forbidden (Rate Limit Exceeded)", content_type="text/plain",
                headers={"X-Rate-Limit-Remaining": f"{max(capacity - level, 0):.1f}", "X-Request-Cost": f"{cost:.1f}"},
            )
        level += cost
        _buckets[registration.pk] = [level, now]
    return {"X-Rate-Limit-Remaining": f"{capacity - level:.1f}", "X-Request-Cost": f"{cost:.1f}"}
