"""Grade sync: from a recorded result to a score in the LMS gradebook.

record_result   ledger row + eligibility + policy + outbox row, in the caller's transaction;
                the task is queued after commit with the delivery's id.
deliver         claim one delivery with a conditional UPDATE, send it (no lock held during
                HTTP), classify the answer, record the exchange and the outcome.
sweep           the safety net: re-queue what is due or was lost, reclaim what a dead worker
                held, give up on what has failed for too long.
"""
from __future__ import annotations

import datetime
import email.utils
import logging
import random
import re
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Callable

from django.conf import settings
from django.db import IntegrityError, close_old_connections, transaction
from django.db.models import F, Max, Q
from django.utils import timezone
from lti_tool.models import LtiLineItem, LtiRegistration, LtiResourceLink, LtiUser

from institutions.models import Course, LmsFamily

from . import ags
from .eligibility import bound_line_item, check_result, first_failure
from .models import OPEN_STATUSES, Delivery, DeliveryExchange, DeliveryStatus, Result, SyncWarning
from .outcomes import Outcome, classify
from .policy import policy_result

logger = logging.getLogger(__name__)

BACKOFF_BASE_SECONDS = 2
BACKOFF_CAP_SECONDS = 600
STALE_CLAIM_SECONDS = 300  # default of settings.GRADE_DELIVERY_STALE_CLAIM_SECONDS
MAX_CLAIMS_WITHOUT_ANSWER = 8
IN_FLIGHT_SLOT_SECONDS = 30  # a killed worker's slots free themselves this soon; senders renew theirs
SLOT_RENEW_SECONDS = 5.0
SENDER_BATCH = 10  # rows a sender claims at a time (small: a row waits behind at most 9 sends)
SENDER_MAX_SECONDS = 30.0  # then it hands the rest to a fresh task, so one task never runs for ever
CANVAS_SUBMISSION = "https://canvas.instructure.com/lti/submission"


def enqueue_delivery(delivery_id: int, *, resync: bool = False, registration_id: int | None = None) -> None:
    """Queue the delivery's task; with its registration's id the task needs no query to find its LMS."""
    from .tasks import deliver_grade

    deliver_grade.apply_async(args=[delivery_id, registration_id], queue="resync" if resync else "grades")


def _enqueue_on_commit(delivery_id: int, *, resync: bool = False, registration_id: int | None = None) -> None:
    transaction.on_commit(lambda: _enqueue_or_leave_to_sweep(delivery_id, resync, registration_id))


def _enqueue_or_leave_to_sweep(delivery_id: int, resync: bool, registration_id: int | None) -> None:
    # A broker outage must not break the request that recorded the grade: the row is committed and
    # the sweeper queues it again once the broker is back. One line, not a traceback per grade.
    try:
        enqueue_delivery(delivery_id, resync=resync, registration_id=registration_id)
    except Exception as error:  # noqa: BLE001 — any publish failure leaves the row to the sweeper
        logger.warning("Broker unreachable; delivery %s is left to the sweeper: %s", delivery_id, error)


# --- Recording --------------------------------------------------------------------------------


@transaction.atomic
def record_result(
    *,
    source_ref: str,
    lti_user: LtiUser | None,
    course: Course,
    activity_key: str,
    activity_title: str,
    resource_link: LtiResourceLink | None,
    score: Decimal,
    completed_at: datetime.datetime,
    launch_role: str,
    launched_course: Course | None,
    launch_deployment,
    link_graded: bool | None,
) -> Result:
    # Every grade passes here, so it is written in few statements: the line items are read once
    # (for the eligibility rule and for the delivery), the verdict goes in with the insert.
    candidates = _line_item_candidates(course, activity_key, resource_link)
    result = Result(
        source_ref=source_ref,
        lti_user=lti_user,
        course=course,
        activity_key=activity_key,
        activity_title=activity_title,
        resource_link=resource_link,
        score=score,
        completed_at=completed_at,
        launch_role=launch_role,
        launched_course=launched_course,
        launch_deployment=launch_deployment,
        link_graded=link_graded,
    )
    failure = first_failure(check_result(result, course=course, line_item=_bound(candidates, resource_link)))
    result.is_eligible = failure is None and lti_user is not None
    result.ineligible_reason = f"{failure.title}: {failure.fact}" if failure else ""
    try:
        with transaction.atomic():
            result.save(force_insert=True)
    except IntegrityError:
        recorded = Result.objects.filter(source_ref=source_ref).first()
        if recorded is None:
            raise
        return recorded  # reported before: idempotent
    if result.is_eligible:
        plan_delivery(course=course, lti_user=lti_user, activity_key=activity_key, resource_link=resource_link,
                      candidates=candidates)
    return result


def _line_item_candidates(course: Course, activity_key: str, resource_link: LtiResourceLink | None) -> list[LtiLineItem]:
    # Without a link, only the activity id can match (not every line item that has no link).
    matches = Q(resource_id=activity_key) | Q(resource_link=resource_link) if resource_link else Q(resource_id=activity_key)
    return list(LtiLineItem.objects.filter(context_id=course.context_id).filter(matches).order_by("-id"))


def _bound(candidates: list[LtiLineItem], resource_link: LtiResourceLink | None) -> LtiLineItem | None:
    if resource_link is None:
        return None
    return next((c for c in candidates if c.resource_link_id == resource_link.pk), None)


def _line_item_for(course: Course, activity_key: str, resource_link: LtiResourceLink | None,
                   candidates: list[LtiLineItem] | None = None) -> LtiLineItem | None:
    """The line item to deliver to; warns support when one activity has several in a course."""
    if candidates is None:
        candidates = _line_item_candidates(course, activity_key, resource_link)
    if len({c.url for c in candidates}) > 1:
        SyncWarning.objects.update_or_create(
            course=course,
            activity_key=activity_key,
            kind="duplicate_line_items",
            defaults={
                "message": f"{len(candidates)} LMS line items in this course point at one activity: "
                + ", ".join(c.label for c in candidates)
                + ". Grades go to the one bound to the launched link; remove the extra column in the LMS."
            },
        )
    return _bound(candidates, resource_link) or (candidates or [None])[0]


@transaction.atomic(savepoint=False)  # record_result calls it in its transaction: no savepoint round trips
def plan_delivery(
    *,
    course: Course,
    lti_user: LtiUser,
    activity_key: str,
    resource_link: LtiResourceLink | None,
    resync: bool = False,
    policy: str | None = None,
    candidates: list[LtiLineItem] | None = None,
) -> Delivery | None:
    """Write (or update) the open delivery of the policy's grade; queue it after commit.

    Returns None when there is nothing to send: no eligible result, or the LMS already holds
    exactly this grade from a live sync (a resync always sends). `candidates`: the course's line
    items for this activity and link, when the caller has read them already.
    """
    policy = policy or course.institution.grade_policy
    chosen = policy_result(course_id=course.pk, lti_user_id=lti_user.pk, activity_key=activity_key, policy=policy)
    if chosen is None:
        return None
    link = resource_link
    if link is None:
        # A resync names no link: the chosen result's (and so other line items than any given).
        candidates = None
        link = LtiResourceLink.objects.filter(pk=chosen.resource_link_id).first() if chosen.resource_link_id else None
    line_item = _line_item_for(course, activity_key, link, candidates)
    pair = Q(line_item=line_item) if line_item is not None else Q(line_item__isnull=True, resource_link=link)
    # One open row at most per pair, and it is the pair's newest (no row opens while one is open), so
    # one locked read gives either the open row or the last grade sent (refused/dead rows aside).
    newest = (
        Delivery.objects.filter(pair, lti_user=lti_user)
        .exclude(status__in=[DeliveryStatus.REFUSED, DeliveryStatus.DEAD])
        .order_by("-id")
        .select_for_update()
        .only("id", "status", "result_id", "score", "is_resync", "registration_id")
        .first()
    )
    now = timezone.now()
    if newest is not None and newest.status in OPEN_STATUSES:
        open_row = newest
        if open_row.result_id != chosen.pk or open_row.score != chosen.score or (resync and not open_row.is_resync):
            Delivery.objects.filter(pk=open_row.pk).update(
                result=chosen,
                score=chosen.score,
                version=F("version") + 1,
                is_resync=open_row.is_resync or resync,
                recorded_at=now,
                next_attempt_at=now,
                status=_status_after_new_grade(open_row.status),
            )
        _enqueue_on_commit(open_row.pk, resync=resync, registration_id=open_row.registration_id)
        return open_row
    if not resync and newest is not None and newest.score == chosen.score:
        return None  # the LMS holds exactly this grade already
    try:
        with transaction.atomic():
            delivery = Delivery.objects.create(
                result=chosen,
                course=course,
                institution_id=course.institution_id,
                registration_id=course.deployment.registration_id,
                deployment_id=course.deployment_id,
                lti_user=lti_user,
                resource_link=link,
                line_item=line_item,
                activity_key=activity_key,
                score=chosen.score,
                is_resync=resync,
                recorded_at=now,
                next_attempt_at=now,
            )
    except IntegrityError:
        # Another transaction opened the row first: update that one instead.
        return plan_delivery(course=course, lti_user=lti_user, activity_key=activity_key, resource_link=link,
                             resync=resync, policy=policy)
    _enqueue_on_commit(delivery.pk, resync=resync, registration_id=delivery.registration_id)
    return delivery


def _status_after_new_grade(status: str) -> str:
    # A row in flight keeps SENDING: the sender sees the new version and sends again.
    return status if status == DeliveryStatus.SENDING else DeliveryStatus.PENDING


# --- Delivering -------------------------------------------------------------------------------
#
# A task that gets a delivery's id becomes the sender of that delivery's LMS (registration) if one
# of the registration's in-flight slots is free. A sender holds its slot and sends, one request at
# a time over a kept-alive connection, every due row of that LMS: its own first, then batches
# claimed with one UPDATE (live grades before resyncs). A task that finds every slot taken returns
# at once: each sender looks for due rows again after letting its slot go, so a row committed
# before the task ran is always seen by a sender. Many grades thus cost a few statements and one
# request each, not a task, a slot and a token lookup each.


def _claim(delivery_id: int, now: datetime.datetime) -> bool:
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


def _first_due(registration_id: int) -> int | None:
    return next(iter(_due(registration_id, timezone.now()).values_list("pk", flat=True)[:1]), None)


def _claim_batch(registration_id: int, size: int) -> list[int]:
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


def _give_back(delivery_ids: list[int], *, wait_seconds: float, message: str) -> None:
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


def _retry_after(headers: dict[str, str]) -> float | None:
    value = headers.get("Retry-After") or headers.get("retry-after")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max((when - timezone.now()).total_seconds(), 0.0)


_CANVAS_LAST_UPDATED = re.compile(r"last updated timestamp of (\d{4}-\d{2}-\d{2}[T ][0-9:.]+(?:Z|[+-]\d{2}:?\d{2})?)")


def _last_timestamps(deliveries: list[Delivery]) -> dict[tuple[int, int], datetime.datetime]:
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


def _next_timestamp(last: datetime.datetime | None, lms_family: str) -> datetime.datetime:
    """Strictly later than `last` (the latest sent for this line item and user); Moodle compares whole seconds."""
    now = timezone.now()
    if last is None or now > last + datetime.timedelta(milliseconds=1):
        candidate = now
    else:
        candidate = last + datetime.timedelta(milliseconds=1)
    if lms_family == LmsFamily.MOODLE and last is not None and candidate.replace(microsecond=0) <= last.replace(microsecond=0):
        candidate = last.replace(microsecond=0) + datetime.timedelta(seconds=1)
    return candidate


_held_slots: set[str] = set()  # the slots this process holds now: no round trip to the cache to find them taken
_held_lock = threading.Lock()


class InFlightLimit:
    """At most N requests in flight to one registration, across all workers (slots in the shared cache)."""

    def __init__(self, registration_id: int, limit: int) -> None:
        self.keys = [f"ags-inflight:{registration_id}:{slot}" for slot in range(max(limit, 1))]
        self.held: str | None = None
        self.renewed = 0.0

    def acquire(self) -> bool:
        """Take a free slot now, or say there is none (without waiting: whoever holds one sends our rows too)."""
        from django.core.cache import cache

        for key in random.sample(self.keys, len(self.keys)):
            if key in _held_slots:
                continue
            if cache.add(key, 1, IN_FLIGHT_SLOT_SECONDS):
                with _held_lock:
                    _held_slots.add(key)
                self.held, self.renewed = key, time.monotonic()
                return True
        return False

    def keep(self) -> None:
        """A long-running sender renews its slot before it expires (at most every few seconds)."""
        from django.core.cache import cache

        if self.held and time.monotonic() - self.renewed > SLOT_RENEW_SECONDS:
            cache.touch(self.held, IN_FLIGHT_SLOT_SECONDS)
            self.renewed = time.monotonic()

    def release(self) -> None:
        from django.core.cache import cache

        if self.held:
            cache.delete(self.held)
            with _held_lock:
                _held_slots.discard(self.held)
            self.held = None


@dataclass
class _Lms:
    """What a sender needs of the registration: loaded once per sender, not per grade."""

    registration: LtiRegistration
    family: str
    limit: int


_lms_cache: dict[int, tuple[float, _Lms]] = {}
LMS_CACHE_SECONDS = 30.0


def _lms(registration_id: int) -> _Lms | None:
    cached = _lms_cache.get(registration_id)
    if cached and cached[0] > time.monotonic():
        return cached[1]
    registration = LtiRegistration.objects.select_related("profile").filter(pk=registration_id).first()
    if registration is None:
        return None
    profile = getattr(registration, "profile", None)
    lms = _Lms(
        registration,
        profile.lms_family if profile else LmsFamily.OTHER,
        profile.max_requests_in_flight if profile else 4,
    )
    _lms_cache[registration_id] = (time.monotonic() + LMS_CACHE_SECONDS, lms)
    return lms


def deliver(delivery_id: int, registration_id: int | None = None) -> str:
    """Send a delivery (and, holding the LMS's slot, every other due one of that LMS).

    Idempotent: returns quietly when the row is gone, done, or claimed elsewhere. Returns what
    became of `delivery_id` in this call: sent, retrying, refused, dead, superseded while sending,
    busy (every slot's sender will take it), or not claimed.
    """
    # Workers keep their connections across tasks (CELERY_DB_REUSE_MAX): drop one a database
    # restart broke, or one past CONN_MAX_AGE, as Django does at the start of a request.
    if not transaction.get_connection().in_atomic_block:
        close_old_connections()
    if registration_id is None:
        registration_id = Delivery.objects.filter(pk=delivery_id).values_list("registration_id", flat=True).first()
        if registration_id is None:
            return "not claimed"
    lms = _lms(registration_id)
    if lms is None:
        return "not claimed"
    limit = InFlightLimit(registration_id, lms.limit)
    if not limit.acquire():
        return "busy"
    sender = _Sender(lms, limit)
    deadline = time.monotonic() + SENDER_MAX_SECONDS
    try:
        if _claim(delivery_id, timezone.now()):
            # Its own row only: the look below (after the slot is let go) finds any others.
            sender.send_batch([delivery_id])
        else:
            sender.drain(deadline)
    finally:
        limit.release()
    # Look again once the slot is free: a task that found every slot taken relies on it.
    while not sender.stopped and (first_due := _first_due(registration_id)):
        if time.monotonic() > deadline:
            enqueue_delivery(first_due, registration_id=registration_id)  # a fresh task carries on
            break
        if not limit.acquire():
            break  # every slot has a sender: they look again when they let go
        try:
            claimed = sender.drain(deadline)
        finally:
            limit.release()
        if not claimed:
            break  # the due rows are being claimed by another sender right now
    return sender.outcomes.get(delivery_id, "not claimed")


class _Sender:
    """Sends claimed deliveries of one LMS, one request at a time, holding one in-flight slot."""

    def __init__(self, lms: _Lms, limit: InFlightLimit) -> None:
        self.lms = lms
        self.limit = limit
        self.tokens: dict[tuple[str, ...], str] = {}
        self.outcomes: dict[int, str] = {}
        self.exchanges: list[DeliveryExchange] = []
        self.stopped = False  # the LMS is throttling or failing: leave the rest to their due time
        self.wait, self.why = 0.0, ""

    def drain(self, deadline: float) -> int:
        """Claim and send batches until none is due (or the LMS pushes back, or time is up); returns rows claimed."""
        claimed = 0
        while not self.stopped and time.monotonic() < deadline:
            ids = _claim_batch(self.lms.registration.pk, SENDER_BATCH)
            if not ids:
                break
            claimed += len(ids)
            self.send_batch(ids)
        return claimed

    def send_batch(self, ids: list[int]) -> None:
        deliveries = list(
            Delivery.objects.select_related("deployment", "lti_user", "line_item", "course__context", "resource_link", "result")
            .filter(pk__in=ids)
            .order_by("is_resync", "next_attempt_at", "pk")
        )
        last_sent = _last_timestamps(deliveries)
        try:
            for index, delivery in enumerate(deliveries):
                if self.stopped:
                    _give_back([d.pk for d in deliveries[index:]], wait_seconds=self.wait, message=self.why)
                    break
                last = last_sent.get((delivery.line_item_id, delivery.lti_user_id))
                self.outcomes[delivery.pk] = self.send(delivery, last)
                self.limit.keep()
        finally:
            self.flush()

    def flush(self) -> None:
        if len(self.exchanges) == 1:
            self.exchanges[0].save(force_insert=True)  # one statement (bulk_create adds a transaction)
        elif self.exchanges:
            DeliveryExchange.objects.bulk_create(self.exchanges)
        self.exchanges = []

    def token_for(self, scopes: tuple[str, ...], deployment_id: str, rejected: str | None = None) -> str:
        if rejected is None and scopes in self.tokens:
            return self.tokens[scopes]
        self.tokens[scopes] = ags.access_token(self.lms.registration, scopes, deployment_id=deployment_id, rejected=rejected)
        return self.tokens[scopes]

    def stop(self, wait: float, why: str) -> None:
        self.stopped, self.wait, self.why = True, wait, why

    def send(self, delivery: Delivery, last: datetime.datetime | None) -> str:
        lms_family = self.lms.family
        deployment_id = delivery.deployment.deployment_id
        try:
            if delivery.line_item is None:
                line_item = _resolve_line_item(delivery, lambda scopes: self.token_for(scopes, deployment_id))
                if line_item is None:
                    return self.finish(delivery, Outcome.RETRY, None, "No line item for this link in the LMS yet; "
                                       "it binds at the next launch of the link.", advice_retry_after=300)
                try:
                    with transaction.atomic():
                        Delivery.objects.filter(pk=delivery.pk).update(line_item=line_item)
                except IntegrityError:
                    return self.finish(delivery, Outcome.REFUSED, None, "Another open delivery exists for this line item.")
                delivery.line_item = line_item
                last = _last_timestamps([delivery]).get((line_item.pk, delivery.lti_user_id))
            version = delivery.version
            if delivery.answer_lost and self.already_holds(delivery, deployment_id):
                self.exchange(delivery, 200, Outcome.SENT, "Read the LMS's result: it already holds this grade.", 0, None, None)
                return self.finish(
                    delivery, Outcome.SENT, 200, "The LMS already held this grade: the send cut off by a stopped "
                    "worker had landed, so it was not posted again.", sent_timestamp=timezone.now(), version=version,
                )
            score_scope = (ags.SCORE_SCOPE,)
            token = self.token_for(score_scope, deployment_id)
            refreshed = stale_resent = False
            while True:
                timestamp = _next_timestamp(last, lms_family)
                maximum = delivery.line_item.maximum_score or 1.0
                payload = {
                    "userId": delivery.lti_user.sub,
                    "scoreGiven": round(float(delivery.score) * maximum, 4),
                    "scoreMaximum": maximum,
                    "activityProgress": "Completed",
                    "gradingProgress": "FullyGraded",
                    "timestamp": ags.score_timestamp(timestamp),
                }
                if lms_family == LmsFamily.CANVAS and delivery.is_resync:
                    # A resync must not count as a new submission against Canvas's Allowed Attempts.
                    payload[CANVAS_SUBMISSION] = {"new_submission": False}
                answer = ags.post_score(line_item_url=delivery.line_item.url, token=token, payload=payload)
                verdict = classify(lms_family, answer.status_code, answer.body)
                self.exchange(delivery, answer.status_code, verdict.outcome, answer.body, answer.duration_ms, payload, timestamp)
                if verdict.outcome == Outcome.REFRESH and not refreshed:
                    refreshed = True
                    token = self.token_for(score_scope, deployment_id, rejected=token)
                    continue
                if verdict.outcome == Outcome.STALE and not stale_resent:
                    stale_resent = True
                    match = _CANVAS_LAST_UPDATED.search(answer.body)
                    last = _parse_lms_timestamp(match.group(1)) if match else timestamp
                    if lms_family == LmsFamily.MOODLE or last is None:
                        last = (last or timestamp) + datetime.timedelta(seconds=1)
                    continue
                outcome = Outcome.RETRY if verdict.outcome == Outcome.REFRESH else verdict.outcome
                if outcome == Outcome.STALE:
                    outcome = Outcome.REFUSED
                return self.finish(
                    delivery, outcome, answer.status_code, _lms_message(answer.body, verdict.advice),
                    sent_timestamp=timestamp, version=version, retry_after=_retry_after(answer.headers),
                )
        except ags.TokenError as error:
            # The same table decides: a throttled or failing token endpoint is retried, a refusal is not.
            verdict = classify(lms_family, error.status_code or 0, error.body)
            outcome = Outcome.RETRY if verdict.outcome in (Outcome.RETRY, Outcome.SENT) else Outcome.REFUSED
            self.exchange(delivery, error.status_code, outcome, str(error), 0, None, None)
            message = f"The LMS refused our service token request (check the client id and our key in the LMS): {error}"
            return self.finish(
                delivery, outcome, error.status_code, message if outcome == Outcome.REFUSED else str(error),
                retry_after=_retry_after(error.headers),
            )
        except ags.AgsError as error:
            self.exchange(delivery, None, Outcome.RETRY, str(error), 0, None, None)
            return self.finish(delivery, Outcome.RETRY, None, f"No answer from the LMS: {error}")

    def already_holds(self, delivery: Delivery, deployment_id: str) -> bool:
        """Whether the LMS's result for this learner is already this grade (read before resending a cut-off send)."""
        try:
            token = self.token_for((ags.RESULT_READ_SCOPE,), deployment_id)
            held = ags.read_result(line_item_url=delivery.line_item.url, token=token, user_id=delivery.lti_user.sub)
        except (ags.AgsError, ags.TokenError):
            return False  # can't tell: send it (a duplicate POST is harmless, a missing grade is not)
        return held is not None and abs(held - float(delivery.score)) < 1e-4

    def exchange(self, delivery, status_code, outcome, body, duration_ms, payload, timestamp) -> None:
        self.exchanges.append(
            DeliveryExchange(
                delivery=delivery,
                status_code=status_code,
                outcome=str(outcome),
                message=(body or "")[:2000],
                duration_ms=duration_ms,
                score_given=payload["scoreGiven"] if payload else None,
                score_maximum=payload["scoreMaximum"] if payload else None,
                timestamp_sent=timestamp,
            )
        )

    def finish(self, delivery: Delivery, outcome: Outcome, status_code: int | None, message: str, **kwargs) -> str:
        result, wait = _finish(delivery, outcome, status_code, message, **kwargs)
        if result == "retrying" and kwargs.get("advice_retry_after") is None:
            # Throttled, failing or unreachable: the rest of this LMS's rows wait as long as this one.
            self.stop(wait, f"Held back: the LMS answered another grade with a retry. {message}"[:500])
        return result


def _resolve_line_item(delivery: Delivery, token_for: Callable[[tuple[str, ...]], str]) -> LtiLineItem | None:
    """Find the line item on the LMS by resource_link_id, resource_id, then tag. Never creates one."""
    context = delivery.course.context
    if not context.lineitems_url:
        return None
    token = token_for((ags.LINEITEM_READ_SCOPE,))
    link_id = delivery.resource_link.id_on_platform if delivery.resource_link else ""
    for filters in ({"resource_link_id": link_id}, {"resource_id": delivery.activity_key}):
        if not next(iter(filters.values())):
            continue
        items = ags.find_line_items(lineitems_url=context.lineitems_url, token=token, **filters)
        if items:
            item = items[0]
            line_item, _ = LtiLineItem.objects.update_or_create(
                url=item["id"],
                defaults={
                    "context": context,
                    "resource_link": delivery.resource_link if filters.get("resource_link_id") else None,
                    "label": (item.get("label") or delivery.result.activity_title or "Activity")[:255],
                    "maximum_score": float(item.get("scoreMaximum") or 1),
                    "resource_id": item.get("resourceId") or "",
                    "tag": item.get("tag") or "",
                },
            )
            return line_item
    return None


def _parse_lms_timestamp(text: str) -> datetime.datetime | None:
    try:
        parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.timezone.utc)


def _lms_message(body: str, advice: str) -> str:
    text = (body or "").strip()
    return f"{advice} LMS said: {text[:500]}" if advice and text else (advice or text[:500])


def _finish(
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


# --- Safety net -------------------------------------------------------------------------------


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
    wake_senders(reclaimed)
    lost_before = now - datetime.timedelta(seconds=settings.GRADE_DELIVERY_REQUEUE_AFTER_SECONDS)
    due = (
        Delivery.objects.filter(
            Q(status=DeliveryStatus.RETRYING, next_attempt_at__lte=now)
            | Q(status=DeliveryStatus.PENDING, next_attempt_at__lte=lost_before)
        )
        .order_by("next_attempt_at")
        .values_list("pk", "registration_id", "is_resync")[:batch]
    )
    counts["requeued"] = wake_senders(list(due))
    return counts


def wake_senders(rows: list[tuple[int, int, bool]]) -> int:
    """Queue senders for due rows (id, registration id, is resync); returns the tasks queued.

    A sender sends every due row of its LMS, not only the row its task names, so each LMS gets
    as many tasks as it allows requests in flight, each naming one of its rows — not a task per
    row: thousands of tasks that find every slot taken cost the workers a round trip each for
    nothing, and queued in order they keep other LMSes waiting behind one LMS's rows.
    """
    per_lms: dict[int, list[tuple[int, bool]]] = {}
    for delivery_id, registration_id, is_resync in rows:
        per_lms.setdefault(registration_id, []).append((delivery_id, is_resync))
    queued = 0
    for registration_id, lms_rows in per_lms.items():
        lms = _lms(registration_id)
        for delivery_id, is_resync in lms_rows[: lms.limit if lms else 1]:
            enqueue_delivery(delivery_id, resync=is_resync, registration_id=registration_id)
            queued += 1
    return queued
