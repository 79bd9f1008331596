"""Waking an LMS's senders: after a commit, once per LMS, as many sender tasks as it has in-flight
slots free — not a task per grade. What the ledger, the sweeper and resync fan-out call; the sender
holds the slots (`sender.InFlightLimit`) whose names are kept here.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from django.core.cache import cache
from django.db import transaction
from lti_tool.models import LtiRegistration

from institutions.models import LmsFamily

from . import queue

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
        max(profile.max_requests_in_flight if profile else 4, 1),
    )
    _lms_cache[registration_id] = (time.monotonic() + LMS_CACHE_SECONDS, lms)
    return lms


def slot_keys(registration_id: int, limit: int) -> list[str]:
    """The shared cache's keys of one LMS's in-flight slots: a key present is a sender at work."""
    return [f"ags-inflight:{registration_id}:{slot}" for slot in range(max(limit, 1))]


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
        held = cache.get_many(slot_keys(registration_id, limit))
        for delivery_id, is_resync in lms_rows[: limit - len(held)]:
            queue.enqueue_delivery(delivery_id, resync=is_resync, registration_id=registration_id)
            queued += 1
    return queued


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
