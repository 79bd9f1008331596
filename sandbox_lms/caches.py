"""What the hot path of the scores endpoint keeps in process memory: bearer tokens, registrations and
line items (trusted for `CONFIG_TTL`, forgotten after a write), and Canvas's rate-limit buckets.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from .models import SandboxLineItem, SandboxRegistration
from .protocol import ApiError


CONFIG_TTL = 1.0  # seconds a registration's settings are trusted in memory (other processes may change them)
_lock = threading.Lock()
_tokens: dict[str, TokenInfo] = {}
_registrations: dict[int, tuple[float, SandboxRegistration]] = {}
_line_items: dict[int, tuple[float, LineItemInfo]] = {}
_buckets: dict[int, list[float]] = {}


def forget_caches() -> None:
    """Called after every write that changes what the hot path trusts (in this process)."""
    with _lock:
        _registrations.clear()
        _line_items.clear()
        _tokens.clear()


def reset_rate_limits() -> None:
    with _lock:
        _buckets.clear()


def cached_registration(registration_id: int) -> SandboxRegistration:
    now = time.monotonic()
    hit = _registrations.get(registration_id)
    if hit and hit[0] > now:
        return hit[1]
    registration = SandboxRegistration.objects.select_related("platform").get(pk=registration_id)
    _registrations[registration_id] = (now + CONFIG_TTL, registration)
    return registration


@dataclass(frozen=True)
class TokenInfo:
    registration_id: int
    deployment_id: str
    scopes: frozenset[str]
    expires_at: float


@dataclass(frozen=True)
class LineItemInfo:
    id: int
    course_id: int
    score_maximum: float
    allowed_attempts: int | None
    registration_id: int
    deployment_id: str


def _line_item_info(line_item_id: int) -> LineItemInfo:
    now = time.monotonic()
    hit = _line_items.get(line_item_id)
    if hit and hit[0] > now:
        return hit[1]
    row = (
        SandboxLineItem.objects.filter(pk=line_item_id)
        .values_list(
            "course_id", "score_maximum", "allowed_attempts", "course__deployment__registration_id",
            "course__deployment__deployment_id",
        )
        .first()
    )
    if row is None:
        raise ApiError(404, {"error": "Line item not found"})
    info = LineItemInfo(line_item_id, *row)
    _line_items[line_item_id] = (now + CONFIG_TTL, info)
    return info
