"""The outbox's rows in flight: claiming due rows (one or a batch, live grades first), giving them
back, the score timestamps sent, and recording what became of a send (sent, retry with backoff, refused, dead).
"""
from __future__ import annotations

import datetime
import random
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Max, OuterRef, Subquery
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
    due = _due(registration_id, now).values("pk")[:size]
    if connection.vendor == "postgresql":
        # One statement, no transaction round trips: UPDATE … WHERE id IN (SELECT … SKIP LOCKED) RETURNING.
        sql, params = due.query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE gradesync_delivery SET status = %s, claimed_at = %s, attempts = attempts + 1 "
                f"WHERE id IN ({sql} FOR UPDATE SKIP LOCKED) RETURNING id",
                [DeliveryStatus.SENDING, now, *params],
            )
            return [row[0] for row in cursor.fetchall()]
    with transaction.atomic():
        ids = [row["pk"] for row in due.select_for_update(skip_locked=True)]
        if ids:
            Delivery.objects.filter(pk__in=ids).update(
                status=DeliveryStatus.SENDING, claimed_at=now, attempts=F("attempts") + 1
            )
    return ids


def batch_to_send(ids: list[int]) -> list[Delivery]:
    """The claimed rows with what a send needs, each with `last_sent`: the latest score timestamp sent
    for its (line item, user), read in the same query."""
    last_sent = (
        Delivery.objects.filter(
            line_item_id=OuterRef("line_item_id"), lti_user_id=OuterRef("lti_user_id"), last_timestamp__isnull=False
        )
        .order_by("-last_timestamp")
        .values("last_timestamp")[:1]
    )
    return list(
        # What every send reads; the course, link and result only when a line item is looked up.
        Delivery.objects.select_related("deployment", "lti_user", "line_item")
        .filter(pk__in=ids)
        .annotate(last_sent=Subquery(last_sent))
        .order_by("is_resync", "next_attempt_at", "pk")
    )


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


def unclaim(delivery_ids: list[int]) -> None:
    """Claimed rows not sent yet, put back as they were due (their place kept, no attempt counted)."""
    if delivery_ids:
        Delivery.objects.filter(pk__in=delivery_ids, status=DeliveryStatus.SENDING).update(
            status=DeliveryStatus.PENDING, attempts=F("attempts") - 1, claimed_at=None
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


@dataclass
class Landing:
    """What became of one send, decided as it ends and written with its batch (`write_landings`)."""

    delivery_id: int
    result: str  # sent, retrying, refused, dead ("sent" turns "superseded while sending" if a newer grade came)
    status: str
    status_code: int | None
    message: str
    wait: float = 0.0  # for a retry: seconds until it is due again
    next_attempt_at: datetime.datetime | None = None
    sent_at: datetime.datetime | None = None
    last_timestamp: datetime.datetime | None = None  # the score timestamp sent, when it landed
    version: int | None = None  # a send lands as sent only if no newer grade replaced it meanwhile
    # The claim the send was made under: a landing is written only while the row is still under it. A
    # sender cut off from the database past the stale-claim time (the sweeper gave its rows to another
    # worker) must not overwrite what the other worker wrote when it comes back.
    claimed_at: datetime.datetime | None = None


def land(
    delivery: Delivery,
    outcome: Outcome,
    status_code: int | None,
    message: str,
    *,
    sent_timestamp: datetime.datetime | None = None,
    version: int | None = None,
    retry_after: float | None = None,
    advice_retry_after: float | None = None,
) -> Landing:
    """Decide what a send's outcome makes of the row (nothing is written here)."""
    now = timezone.now()
    common = {"delivery_id": delivery.pk, "status_code": status_code, "message": message, "claimed_at": delivery.claimed_at}
    if outcome == Outcome.SENT:
        # Sent — unless a newer grade arrived while we were sending: then it is due again at once
        # (the sender holding this LMS's slot takes it in its next batch).
        return Landing(**common, result="sent", status=DeliveryStatus.SENT, sent_at=now, version=version,
                       last_timestamp=sent_timestamp)
    if outcome == Outcome.REFUSED:
        return Landing(**common, result="refused", status=DeliveryStatus.REFUSED)
    give_up_at = delivery.created_at + datetime.timedelta(hours=settings.GRADE_DELIVERY_GIVE_UP_HOURS)
    if now >= give_up_at:
        return Landing(**{**common, "message": f"Gave up after {settings.GRADE_DELIVERY_GIVE_UP_HOURS} h. Last: {message}"},
                       result="dead", status=DeliveryStatus.DEAD)
    wait = _backoff_seconds(delivery.attempts, retry_after if retry_after is not None else advice_retry_after)
    return Landing(**common, result="retrying", status=DeliveryStatus.RETRYING, wait=wait,
                   next_attempt_at=now + datetime.timedelta(seconds=wait))


# One statement for a sender's whole batch (PostgreSQL): each row's landing travels in VALUES; a row
# sent whose version moved on (a newer grade came while it was in flight) is pending again, due at once.
_WRITE_LANDINGS = """
UPDATE gradesync_delivery AS d SET
    status = CASE WHEN v.superseded_by_newer AND d.version <> v.version THEN 'pending' ELSE v.status END,
    next_attempt_at = CASE WHEN v.superseded_by_newer AND d.version <> v.version THEN v.sent_at
                           ELSE v.next_attempt_at END,
    sent_at = CASE WHEN v.superseded_by_newer AND d.version <> v.version THEN d.sent_at
                   ELSE COALESCE(v.sent_at, d.sent_at) END,
    last_status_code = v.status_code,
    last_message = v.message,
    last_timestamp = COALESCE(v.last_timestamp, d.last_timestamp),
    claimed_at = NULL,
    answer_lost = FALSE
FROM (VALUES {rows}) AS v(id, version, superseded_by_newer, status, next_attempt_at, sent_at, status_code, message, last_timestamp, claimed_at)
WHERE d.id = v.id AND d.status = 'sending' AND d.claimed_at = v.claimed_at
RETURNING d.id, d.status
"""
_LANDING_ROW = ("(%s::bigint, %s::integer, %s::boolean, %s::varchar, %s::timestamptz, %s::timestamptz, %s::smallint, %s::text,"
                " %s::timestamptz, %s::timestamptz)")
CLAIM_LOST = "claim lost"  # the sweeper gave the row to another sender meanwhile: this send's landing is not written


def write_landings(landings: list[Landing]) -> dict[int, str]:
    """Write a batch's landings; returns what became of each row (a sent one may be superseded)."""
    if not landings:
        return {}
    results = {landing.delivery_id: landing.result for landing in landings}
    if connection.vendor != "postgresql":
        for landing in landings:
            results[landing.delivery_id] = _write_landing(landing)
        return results
    params: list[object] = []
    for landing in landings:
        guarded = landing.status == DeliveryStatus.SENT
        params += [landing.delivery_id, landing.version or 0, guarded, landing.status, landing.next_attempt_at,
                   landing.sent_at, landing.status_code, landing.message, landing.last_timestamp, landing.claimed_at]
    sql = _WRITE_LANDINGS.format(rows=", ".join([_LANDING_ROW] * len(landings)))
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        written = dict(cursor.fetchall())
    for delivery_id in results:
        if delivery_id not in written:
            results[delivery_id] = CLAIM_LOST
        elif results[delivery_id] == "sent" and written[delivery_id] == DeliveryStatus.PENDING:
            results[delivery_id] = "superseded while sending"
    return results


def _write_landing(landing: Landing) -> str:
    """One row's landing, one statement at a time (SQLite: no UPDATE … FROM VALUES with types)."""
    fields: dict[str, object] = {
        "last_status_code": landing.status_code, "last_message": landing.message, "claimed_at": None, "answer_lost": False,
    }
    if landing.last_timestamp is not None:
        fields["last_timestamp"] = landing.last_timestamp
    rows = Delivery.objects.filter(pk=landing.delivery_id, status=DeliveryStatus.SENDING, claimed_at=landing.claimed_at)
    if not rows.exists():
        return CLAIM_LOST
    if landing.status == DeliveryStatus.SENT:
        if rows.filter(version=landing.version).update(status=DeliveryStatus.SENT, sent_at=landing.sent_at,
                                                       next_attempt_at=None, **fields):
            return "sent"
        rows.update(status=DeliveryStatus.PENDING, next_attempt_at=landing.sent_at, **fields)
        return "superseded while sending"
    rows.update(status=landing.status, next_attempt_at=landing.next_attempt_at, **fields)
    return landing.result
