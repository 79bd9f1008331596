"""Waking an LMS's senders: after a commit, once per LMS, as many sender tasks as it has in-flight
slots free — not a task per grade. What the ledger, the sweeper and resync fan-out call; the sender
holds the slots (`sender.InFlightLimit`) whose names are kept here.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from django.core.cache import cache
from django.db import transaction
from lti_tool.models import LtiRegistration

from institutions.models import LmsFamily, RegistrationProfile

from . import queue
from .shared_cache import redis_client

logger = logging.getLogger(__name__)

LMS_CACHE_SECONDS = 30.0


@dataclass
class Lms:
    """What sending needs of a registration: loaded once per process and 30 s, not per grade."""

    registration: LtiRegistration
    family: str
    limit: int  # requests in flight at most, across all workers


_lms_cache: dict[int, tuple[float, Lms]] = {}


def lms_of(registration_id: int) -> Lms | None:
    cached = _lms_cache.get(registration_id)
    if cached and cached[0] > time.monotonic():
        return cached[1]
    registration = LtiRegistration.objects.select_related("profile").filter(pk=registration_id).first()
    if registration is None:
        return None
    profile = getattr(registration, "profile", None)
    lms = Lms(
        registration,
        profile.lms_family if profile else LmsFamily.OTHER,
        in_flight_limit(profile.max_requests_in_flight if profile else None),
    )
    _lms_cache[registration_id] = (time.monotonic() + LMS_CACHE_SECONDS, lms)
    return lms


DEFAULT_IN_FLIGHT = 4  # a registration without a profile


def in_flight_limit(profile_limit: int | None) -> int:
    return max(profile_limit if profile_limit is not None else DEFAULT_IN_FLIGHT, 1)


def in_flight_limits(registration_ids: Iterable[int]) -> dict[int, int]:
    """Each registration's in-flight limit, in one query (for many at once: /metrics)."""
    ids = set(registration_ids)
    profiles = dict(RegistrationProfile.objects.filter(registration_id__in=ids)
                    .values_list("registration_id", "max_requests_in_flight"))
    return {registration_id: in_flight_limit(profiles.get(registration_id)) for registration_id in ids}


SLOT_KEY = "ags-inflight:{registration_id}:{slot}"


def slot_keys(registration_id: int, limit: int) -> list[str]:
    """The shared cache's keys of one LMS's in-flight slots: a key present is a sender at work."""
    return [SLOT_KEY.format(registration_id=registration_id, slot=slot) for slot in range(max(limit, 1))]


def slots_held(limits: dict[int, int]) -> Counter:
    """Slots held now, per registration. With Redis, every registration's, from one SCAN (a lingering
    sender holds one with nothing due); otherwise those of `limits`' registrations."""
    client = redis_client()
    held: Counter = Counter()
    if client is None:
        keys = {key: registration_id for registration_id, limit in limits.items() for key in slot_keys(registration_id, limit)}
        held.update(keys[key] for key in cache.get_many(list(keys)))
        return held
    pattern = cache.make_and_validate_key(SLOT_KEY.format(registration_id="*", slot="*"))
    start = pattern.split("*", 1)[0]
    for key in client.scan_iter(match=pattern, count=1000):
        registration_id = key.decode()[len(start):].split(":", 1)[0]
        if registration_id.isdigit():
            held[int(registration_id)] += 1
    return held


# A live sender that has sent everything due may linger a moment for its LMS's next grade (sender.py):
# it holds one of the LMS's slots, marks the LMS (LINGER_KEY) and waits on a Redis list (WAKE_KEY).
# A publisher that finds the mark pushes onto the list instead of queueing a task, so a live grade
# costs one RPUSH and one claim, not a task, a slot and a look. Only with Redis as the shared cache.
LINGER_KEY = "ags-linger:{registration_id}"
WAKE_KEY = "ags-wake:{registration_id}"
LINGER_MARK_SECONDS = 3  # a killed lingerer's mark lapses this soon; a lingerer renews it as it waits


def can_linger() -> bool:
    """Lingering needs Redis and real workers: a task run in the publisher's process (eager) must not wait."""
    from celery import current_app
    from django.conf import settings

    return settings.GRADE_DELIVERY_LINGER_SECONDS > 0 and not current_app.conf.task_always_eager and redis_client() is not None


def mark_lingering(registration_id: int) -> bool:
    """Become the LMS's lingering sender, if none is; its wake-up list starts empty."""
    if not cache.add(LINGER_KEY.format(registration_id=registration_id), 1, LINGER_MARK_SECONDS):
        return False
    redis_client().delete(cache.make_and_validate_key(WAKE_KEY.format(registration_id=registration_id)))
    return True


def wait_for_wake(registration_id: int, seconds: float, *, renew: bool = True) -> bool:
    """Wait (at most `seconds`) for a publisher's push, renewing the mark first (`renew`). True when woken."""
    if renew:
        cache.touch(LINGER_KEY.format(registration_id=registration_id), LINGER_MARK_SECONDS)
    key = cache.make_and_validate_key(WAKE_KEY.format(registration_id=registration_id))
    return redis_client().blpop([key], timeout=seconds) is not None


def unmark_lingering(registration_id: int) -> None:
    cache.delete(LINGER_KEY.format(registration_id=registration_id))


def _wake_lingering(registration_id: int) -> None:
    key = cache.make_and_validate_key(WAKE_KEY.format(registration_id=registration_id))
    redis_client().pipeline(transaction=False).rpush(key, 1).expire(key, 10).execute()


def wake_senders(rows: Iterable[tuple[int, int, bool]]) -> int:
    """Queue senders for due rows (id, registration id, is resync); returns the tasks queued.

    A sender sends every due row of its LMS, not only the row its task names, and looks for due rows
    again after it lets its slot go. So an LMS gets one task per free slot at most, each naming one
    of its rows, and none while every slot is held: those senders will see the rows, which are
    committed before this runs. Thousands of tasks that find every slot taken would cost the workers
    a round trip each for nothing, and the publishing a commit that waits for them (one MGET here).
    """
    per_lms: dict[int, list[tuple[int, bool]]] = {}
    for delivery_id, registration_id, is_resync in rows:
        per_lms.setdefault(registration_id, []).append((delivery_id, is_resync))
    queued = 0
    for registration_id, lms_rows in per_lms.items():
        lms = lms_of(registration_id)
        limit = lms.limit if lms else 1
        linger_key = LINGER_KEY.format(registration_id=registration_id)
        held = cache.get_many([*slot_keys(registration_id, limit), linger_key])
        if held.pop(linger_key, None) is not None:
            # Its lingering sender takes the grade (or, if it has just stopped lingering, the look
            # every sender takes after letting its slot go); more than one wakes the free slots too.
            _wake_lingering(registration_id)
            if len(lms_rows) == 1:
                continue
        queued += _queue_senders(registration_id, lms_rows[: limit - len(held)])
    return queued


def _queue_senders(registration_id: int, rows: list[tuple[int, bool]]) -> int:
    for delivery_id, is_resync in rows:
        queue.enqueue_delivery(delivery_id, resync=is_resync, registration_id=registration_id)
    return len(rows)


def wake_free_slots(registration_id: int, delivery_id: int, *, resync: bool = False) -> int:
    """A sender that finds a backlog (more than one grade due) has the LMS's free slots' senders started."""
    lms = lms_of(registration_id)
    limit = lms.limit if lms else 1
    held = cache.get_many(slot_keys(registration_id, limit))
    return _queue_senders(registration_id, [(delivery_id, resync)] * (limit - len(held)))


class _WakeAfterCommit:
    """The rows one transaction made due, woken in one go when it commits (an on_commit hook)."""

    def __init__(self) -> None:
        self.rows: dict[int, tuple[int, bool]] = {}

    def __call__(self) -> None:
        rows, self.rows = self.rows, {}
        _wake_or_leave_to_sweep([(pk, registration_id, is_resync) for pk, (registration_id, is_resync) in rows.items()])


_pending = threading.local()  # Django's connections are per thread, so is the open transaction's hook


def wake_after_commit(delivery_id: int, registration_id: int, *, resync: bool = False) -> None:
    """Have the row's LMS's senders woken when the current transaction commits (at once outside one).

    One hook per transaction, however many grades it records: 400 results in one transaction cost
    one wake-up per LMS, not 400 publishes inside the commit.
    """
    connection = transaction.get_connection()
    if not connection.in_atomic_block:
        _wake_or_leave_to_sweep([(delivery_id, registration_id, resync)])
        return
    hook = getattr(_pending, "hook", None)
    # The hook is this transaction's while it is still in the connection's list (a commit runs and
    # clears the list, a rollback drops it, a rolled-back savepoint drops it with its own rows).
    if hook is None or not any(func is hook for _, func, _ in connection.run_on_commit):
        hook = _pending.hook = _WakeAfterCommit()
        transaction.on_commit(hook)
    hook.rows[delivery_id] = (registration_id, resync)


def _wake_or_leave_to_sweep(rows: list[tuple[int, int, bool]]) -> None:
    # A broker outage must not break the request that recorded the grade: the rows are committed and
    # the sweeper wakes their senders once the broker is back. One line, not a traceback per grade.
    try:
        wake_senders(rows)
    except Exception as error:  # noqa: BLE001 — any publish failure leaves the rows to the sweeper
        logger.warning("Broker unreachable; %d deliveries are left to the sweeper: %s", len(rows), error)
