"""The sweeper, the outbox's safety net (beat): re-queue what is due or was lost, reclaim what a dead
worker held, give up on what keeps stopping workers without an answer.
"""
from __future__ import annotations

import datetime

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from . import counters, wakeups
from .models import Delivery, DeliveryStatus

STALE_CLAIM_SECONDS = 300  # default of settings.GRADE_DELIVERY_STALE_CLAIM_SECONDS
MAX_CLAIMS_WITHOUT_ANSWER = 8


def sweep(*, batch: int = 2000) -> dict[str, int]:
    """Re-queue due and lost deliveries; reclaim rows held by dead workers; give up on poison rows."""
    now = timezone.now()
    counts = {"reclaimed": 0, "dead": 0, "requeued": 0}
    stale = Delivery.objects.filter(
        status=DeliveryStatus.SENDING, claimed_at__lt=now - datetime.timedelta(seconds=getattr(settings, "GRADE_DELIVERY_STALE_CLAIM_SECONDS", STALE_CLAIM_SECONDS))
    )
    counts["dead"] += stale.filter(attempts__gte=MAX_CLAIMS_WITHOUT_ANSWER).update(
        status=DeliveryStatus.DEAD,
        next_attempt_at=None,
        last_message="Gave up: sending this grade kept stopping the worker without an answer.",
    )
    reclaimed = list(stale.values_list("pk", "registration_id", "is_resync"))
    counts["reclaimed"] = stale.filter(pk__in=[pk for pk, _, _ in reclaimed]).update(
        status=DeliveryStatus.PENDING, next_attempt_at=now, claimed_at=None, answer_lost=True
    )
    wakeups.wake_senders(reclaimed)
    lost_before = now - datetime.timedelta(seconds=settings.GRADE_DELIVERY_REQUEUE_AFTER_SECONDS)
    due = (
        Delivery.objects.filter(
            Q(status=DeliveryStatus.RETRYING, next_attempt_at__lte=now)
            | Q(status=DeliveryStatus.PENDING, next_attempt_at__lte=lost_before)
        )
        .order_by("next_attempt_at")
        .values_list("pk", "registration_id", "is_resync")[:batch]
    )
    counts["requeued"] = wakeups.wake_senders(list(due))
    counters.add({counters.field("sweeper", outcome=name): value for name, value in counts.items()})
    return counts
