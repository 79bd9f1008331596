"""The outbox's rows in flight: claiming due rows (one or a batch, live grades first), giving them
back, the score timestamps sent, and recording what became of a send (sent, retry with backoff, refused, dead).
"""
from __future__ import annotations

import datetime
import random

from django.conf import settings
from django.db import transaction
from django.db.models import F, Max
from django.utils import timezone

from institutions.models import LmsFamily

from .models import Delivery, DeliveryStatus
from .outcomes import Outcome

BACKOFF_BASE_SECONDS = 2
BACKOFF_CAP_SECONDS = 600


def claim(delivery_id: int, now: datetime.datetime) -> bool:
    """One conditional UPDATE: of all the workers that got this id, exactly one wins."""
    return (
        Delivery.objects.filter(
            pk=delivery_id, status__in=[DeliveryStatus.PENDING, DeliveryStatus.RETRYING], next_attempt_at__lte=now
        ).update(status=DeliveryStatus.SENDING, claimed_at=now, attempts=F("attempts") + 1)
        == 1
    )


def _due(registration_id: int, now: datetime.datetime):
    """One LMS's due rows, live grades first, in the order of `delivery_registration_due_idx` (read on it)."""
    return Delivery.objects.filter(
        registration_id=registration_id,
        status__in=[DeliveryStatus.PENDING, DeliveryStatus.RETRYING],
        next_attempt_at__lte=now,
    ).order_by("is_resync", "next_attempt_at")


def first_due(registration_id: int) -> int | None:
    return next(iter(_due(registration_id, timezone.now()).values_list("pk", flat=True)[:1]), None)


def claim_batch(registration_id: int, size: int) -> list[int]:
    """Claim up to `size` due rows of one LMS, live grades first; rows another sender is claiming are skipped."""
    now = timezone.now()
    with transaction.atomic():
        ids = list(
            _due(registration_id, now)
            .select_for_update(skip_locked=True)
            .values_list("pk", flat=True)[:size]
        )
        if ids:
            Delivery.objects.filter(pk__in=ids).update(
                status=DeliveryStatus.SENDING, claimed_at=now, attempts=F("attempts") + 1
            )
    return ids


def give_back(delivery_ids: list[int], *, wait_seconds: float, message: str) -> None:
    """Claimed rows not sent (the LMS is throttling or failing): due again after the wait, no attempt counted."""
    if delivery_ids:
        Delivery.objects.filter(pk__in=delivery_ids, status=DeliveryStatus.SENDING).update(
            status=DeliveryStatus.RETRYING,
            attempts=F("attempts") - 1,
            claimed_at=None,
            next_attempt_at=timezone.now() + datetime.timedelta(seconds=wait_seconds),
            last_message=message,
        )


def _backoff_seconds(attempts: int, retry_after: float | None) -> float:
    if retry_after is not None:
        return min(max(retry_after, 1.0), 3600.0)
    # Full jitter (AWS): uniform in [0, min(cap, base * 2^n)], at least one second.
    return max(1.0, random.uniform(0, min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** max(attempts - 1, 0))))



def last_timestamps(deliveries: list[Delivery]) -> dict[tuple[int, int], datetime.datetime]:
    """The latest score timestamp sent for each (line item, user) of a batch, in one query."""
    pairs = {(d.line_item_id, d.lti_user_id) for d in deliveries if d.line_item_id is not None}
    if not pairs:
        return {}
    rows = (
        Delivery.objects.filter(
            line_item_id__in={p[0] for p in pairs}, lti_user_id__in={p[1] for p in pairs}, last_timestamp__isnull=False
        )
        .values_list("line_item_id", "lti_user_id")
        .annotate(last=Max("last_timestamp"))
    )
    return {(line_item_id, user_id): last for line_item_id, user_id, last in rows if (line_item_id, user_id) in pairs}


def next_timestamp(
    last: datetime.datetime | None, lms_family: str, now: datetime.datetime | None = None
) -> datetime.datetime:
    """The score timestamp to send: now, unless that is not later than `last` (the latest this line
    item and user hold) — then the smallest later one, never further in the future.

    Moodle keeps whole seconds and refuses a second it already holds, so for Moodle it is whole
    seconds: max(now, last + 1 s), both truncated to the second."""
    now = now or timezone.now()
    if lms_family == LmsFamily.MOODLE:
        now = now.replace(microsecond=0)
        if last is None:
            return now
        return max(now, last.replace(microsecond=0) + datetime.timedelta(seconds=1))
    if last is None or now > last:
        return now
    return last + datetime.timedelta(milliseconds=1)


def finish(
    delivery: Delivery,
    outcome: Outcome,
    status_code: int | None,
    message: str,
    *,
    sent_timestamp: datetime.datetime | None = None,
    version: int | None = None,
    retry_after: float | None = None,
    advice_retry_after: float | None = None,
) -> tuple[str, float]:
    """Record what became of a send; returns that and, for a retry, the wait before the next try."""
    now = timezone.now()
    fields: dict[str, object] = {
        "last_status_code": status_code, "last_message": message, "claimed_at": None, "answer_lost": False,
    }
    if sent_timestamp is not None and outcome == Outcome.SENT:
        fields["last_timestamp"] = sent_timestamp
    if outcome == Outcome.SENT:
        # Sent — unless a newer grade arrived while we were sending: then it is due again at once
        # (the sender holding this LMS's slot takes it in its next batch).
        updated = Delivery.objects.filter(pk=delivery.pk, version=version).update(
            status=DeliveryStatus.SENT, sent_at=now, next_attempt_at=None, **fields
        )
        if updated:
            return "sent", 0.0
        Delivery.objects.filter(pk=delivery.pk).update(status=DeliveryStatus.PENDING, next_attempt_at=now, **fields)
        return "superseded while sending", 0.0
    if outcome == Outcome.REFUSED:
        Delivery.objects.filter(pk=delivery.pk).update(status=DeliveryStatus.REFUSED, next_attempt_at=None, **fields)
        return "refused", 0.0
    give_up_at = delivery.created_at + datetime.timedelta(hours=settings.GRADE_DELIVERY_GIVE_UP_HOURS)
    if now >= give_up_at:
        Delivery.objects.filter(pk=delivery.pk).update(
            status=DeliveryStatus.DEAD, next_attempt_at=None, **{**fields, "last_message": f"Gave up after "
            f"{settings.GRADE_DELIVERY_GIVE_UP_HOURS} h. Last: {message}"}
        )
        return "dead", 0.0
    wait = _backoff_seconds(delivery.attempts, retry_after if retry_after is not None else advice_retry_after)
    Delivery.objects.filter(pk=delivery.pk).update(
        status=DeliveryStatus.RETRYING, next_attempt_at=now + datetime.timedelta(seconds=wait), **fields
    )
    return "retrying", wait
