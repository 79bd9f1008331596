"""The sender: one LMS's conversation — its in-flight limit (slots in the shared cache), batches of
due rows sent one request at a time over a kept-alive connection, and what its answers mean.
"""
from __future__ import annotations

import datetime
import email.utils
import logging
import random
import re
import threading
import time

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, close_old_connections, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from institutions.models import LmsFamily

from . import ags, counters, line_items, outbox, queue, wakeups
from .models import OPEN_STATUSES, Delivery, DeliveryExchange, ResyncJob, ResyncJobStatus
from .outcomes import Outcome, classify

logger = logging.getLogger(__name__)

IN_FLIGHT_SLOT_SECONDS = 30  # a killed worker's slots free themselves this soon; senders renew theirs
SLOT_RENEW_SECONDS = 5.0
SENDER_BATCH = 40  # rows a sender claims at a time at most: each claim, read and write is one statement for all
SENDER_BATCH_MIN = 10  # and at least, however slow the LMS answers
SENDER_BATCH_SECONDS = 1.0  # a batch is about this much sending; longer, the rest is given back (live grades first)
SENDER_MAX_SECONDS = 30.0  # then it hands the rest to a fresh task, so one task never runs for ever
CANVAS_SUBMISSION = "https://canvas.instructure.com/lti/submission"


# A task that gets a delivery's id becomes the sender of that delivery's LMS (registration) if one
# of the registration's in-flight slots is free. A sender holds its slot and sends, one request at
# a time over a kept-alive connection, every due row of that LMS: its own first, then batches
# claimed with one UPDATE (live grades before resyncs). A task that finds every slot taken returns
# at once: each sender looks for due rows again after letting its slot go, so a row committed
# before the task ran is always seen by a sender. Many grades thus cost a few statements and one
# request each, not a task, a slot and a token lookup each.


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


_held_slots: set[str] = set()  # the slots this process holds now: no round trip to the cache to find them taken
_held_lock = threading.Lock()


class InFlightLimit:
    """At most N requests in flight to one registration, across all workers (slots in the shared cache)."""

    def __init__(self, registration_id: int, limit: int) -> None:
        self.keys = wakeups.slot_keys(registration_id, limit)
        self.held: str | None = None
        self.renewed = 0.0

    def acquire(self) -> bool:
        """Take a free slot now, or say there is none (without waiting: whoever holds one sends our rows too)."""
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
        if self.held and time.monotonic() - self.renewed > SLOT_RENEW_SECONDS:
            cache.touch(self.held, IN_FLIGHT_SLOT_SECONDS)
            self.renewed = time.monotonic()

    def release(self) -> None:
        if self.held:
            cache.delete(self.held)
            with _held_lock:
                _held_slots.discard(self.held)
            self.held = None


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
    lms = wakeups.lms_of(registration_id)
    if lms is None:
        return "not claimed"
    limit = InFlightLimit(registration_id, lms.limit)
    if not limit.acquire():
        return "busy"
    sender = _Sender(lms, limit)
    deadline = time.monotonic() + SENDER_MAX_SECONDS
    try:
        if outbox.claim(delivery_id, timezone.now()):
            # Its own row only: lingering, or the look below (after the slot is let go), finds any others.
            sender.send_batch([delivery_id])
        else:
            sender.drain(deadline)
        sender.linger(deadline)
    finally:
        limit.release()
    # Look again once the slot is free: a task that found every slot taken relies on it.
    while not sender.stopped and (first_due := outbox.first_due(registration_id)):
        if time.monotonic() > deadline:
            queue.enqueue_delivery(first_due, registration_id=registration_id)  # a fresh task carries on
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


_linger_semaphore: threading.BoundedSemaphore | None = None


def _lingering_threads() -> threading.BoundedSemaphore:
    global _linger_semaphore
    if _linger_semaphore is None:
        with _held_lock:
            if _linger_semaphore is None:
                _linger_semaphore = threading.BoundedSemaphore(max(settings.GRADE_DELIVERY_LINGER_THREADS, 1))
    return _linger_semaphore


class _Sender:
    """Sends claimed deliveries of one LMS, one request at a time, holding one in-flight slot."""

    def __init__(self, lms: wakeups.Lms, limit: InFlightLimit) -> None:
        self.lms = lms
        self.limit = limit
        self.tokens: dict[tuple[str, ...], str] = {}
        self.outcomes: dict[int, str] = {}
        self.exchanges: list[DeliveryExchange] = []
        self.landings: list[outbox.Landing] = []
        self.tally = counters.Tally()  # for /metrics, added to the shared counters with each batch
        self.live_latency: dict[int, float] = {}  # a live grade sent: seconds from recorded to the LMS's answer
        self.lingering = False
        self.post_seconds = 0.0  # how long the LMS takes to answer a score, a moving average
        self.shared_at = 0.0  # when this sender last woke the LMS's free slots for a backlog
        self.stopped = False  # the LMS is throttling or failing: leave the rest to their due time
        self.wait, self.why = 0.0, ""

    def drain(self, deadline: float) -> int:
        """Claim and send batches until none is due (or the LMS pushes back, or time is up); returns rows claimed."""
        claimed = 0
        while not self.stopped and time.monotonic() < deadline:
            size = self.batch_size()
            ids = outbox.claim_batch(self.lms.registration.pk, size)
            if not ids:
                break
            claimed += len(ids)
            if self.lingering and len(ids) > 1:
                self.share_backlog(ids[0])
            if not self.send_batch(ids) and len(ids) < size:
                # Every due row was in this batch: one due since is pushed to a lingering sender, or seen
                # by the look every sender takes after letting its slot go. No empty claim per live grade.
                break
        return claimed

    def batch_size(self) -> int:
        """About SENDER_BATCH_SECONDS of sends: a slow LMS's backlog is shared among its slots instead of
        claimed 40 at a time by one sender while the others find nothing."""
        if not self.post_seconds:
            return SENDER_BATCH
        return max(SENDER_BATCH_MIN, min(SENDER_BATCH, int(SENDER_BATCH_SECONDS / self.post_seconds)))

    def share_backlog(self, delivery_id: int) -> None:
        """More than one grade is due to a lingering sender (its publishers only push to it): start
        senders on the LMS's free slots (at most once a second), or it would send a backlog alone."""
        if time.monotonic() - self.shared_at >= 1.0:
            self.shared_at = time.monotonic()
            wakeups.wake_free_slots(self.lms.registration.pk, delivery_id)

    def linger(self, deadline: float) -> None:
        """Hold the slot a moment for the LMS's next grade (wakeups: its publisher then pushes onto a
        Redis list instead of queueing a task). One lingering sender per LMS, a few per process."""
        registration_id = self.lms.registration.pk
        if self.stopped or not wakeups.can_linger() or not _lingering_threads().acquire(blocking=False):
            return
        try:
            if not wakeups.mark_lingering(registration_id):
                return
            self.lingering = True
            try:
                self.drain(deadline)  # what became due before the mark was seen
                marked = time.monotonic()
                while not self.stopped and time.monotonic() < deadline:
                    # The mark lasts LINGER_MARK_SECONDS: renewed once a second, not once per grade.
                    renew = time.monotonic() - marked > 1.0
                    marked = time.monotonic() if renew else marked
                    try:
                        woken = wakeups.wait_for_wake(registration_id, settings.GRADE_DELIVERY_LINGER_SECONDS, renew=renew)
                    except Exception as error:  # noqa: BLE001 — the cache failing ends the lingering, not the task
                        logger.warning("Stopped lingering for registration %s: %s", registration_id, error)
                        break
                    if not woken:
                        break
                    self.limit.keep()
                    self.drain(deadline)
            finally:
                self.lingering = False
                try:
                    wakeups.unmark_lingering(registration_id)
                except Exception as error:  # noqa: BLE001 — the mark lapses by itself in seconds
                    logger.warning("Could not clear the lingering mark of registration %s: %s", registration_id, error)
        finally:
            _lingering_threads().release()

    def send_batch(self, ids: list[int]) -> int:
        """Send claimed rows, live grades first; returns how many were given back unsent."""
        deliveries = outbox.batch_to_send(ids)
        given_back = 0
        try:
            started = time.monotonic()
            for index, delivery in enumerate(deliveries):
                if self.stopped:
                    outbox.give_back([d.pk for d in deliveries[index:]], wait_seconds=self.wait, message=self.why)
                    given_back = len(deliveries) - index
                    break
                if index and time.monotonic() - started > SENDER_BATCH_SECONDS:
                    # A slow LMS: a live grade due meanwhile must not wait behind the rest of this batch.
                    outbox.unclaim([d.pk for d in deliveries[index:]])
                    given_back = len(deliveries) - index
                    break
                self.outcomes[delivery.pk] = self.send(delivery, delivery.last_sent)
                self.limit.keep()
        finally:
            self.flush()
        note_resync_landings({
            d.resync_job_id for d in deliveries if d.resync_job_id is not None and self.outcomes.get(d.pk) in LANDED
        })
        return given_back

    def flush(self) -> None:
        """Write what the batch's sends did: its exchanges in one INSERT, its rows in one UPDATE."""
        if len(self.exchanges) == 1:
            self.exchanges[0].save(force_insert=True)  # one statement (bulk_create adds a transaction)
        elif self.exchanges:
            DeliveryExchange.objects.bulk_create(self.exchanges)
        self.exchanges = []
        landings, self.landings = self.landings, []
        results = outbox.write_landings(landings)
        self.outcomes.update(results)
        latency, self.live_latency = self.live_latency, {}
        for delivery_id, result in results.items():
            self.tally.landed("superseded" if result.startswith("superseded") else result.replace(" ", "_"))
            if result == "sent" and delivery_id in latency:
                self.tally.latency(latency[delivery_id])
        self.tally.flush()

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
                line_item = line_items.resolve_line_item(delivery, lambda scopes: self.token_for(scopes, deployment_id))
                if line_item is None:
                    return self.finish(delivery, Outcome.RETRY, None, "No line item for this link in the LMS yet; "
                                       "it binds at the next launch of the link.", advice_retry_after=300)
                try:
                    with transaction.atomic():
                        Delivery.objects.filter(pk=delivery.pk).update(line_item=line_item)
                except IntegrityError:
                    return self.finish(delivery, Outcome.REFUSED, None, "Another open delivery exists for this line item.")
                delivery.line_item = line_item
                last = outbox.last_timestamps([delivery]).get((line_item.pk, delivery.lti_user_id))
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
                timestamp = outbox.next_timestamp(last, lms_family)
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
                seconds = answer.duration_ms / 1000
                self.post_seconds = 0.8 * self.post_seconds + 0.2 * seconds if self.post_seconds else seconds
                verdict = classify(lms_family, answer.status_code, answer.body, answer.reason)
                self.exchange(delivery, answer.status_code, verdict.outcome, answer.said, answer.duration_ms, payload, timestamp)
                if verdict.outcome == Outcome.REFRESH and not refreshed:
                    refreshed = True
                    token = self.token_for(score_scope, deployment_id, rejected=token)
                    continue
                if verdict.outcome == Outcome.STALE and not stale_resent:
                    stale_resent = True
                    # The LMS holds this time or later: Canvas names it; Moodle's 409 says it holds at
                    # least the second we sent, so the resend takes the next second (or now, if later).
                    match = _CANVAS_LAST_UPDATED.search(answer.body)
                    last = _parse_lms_timestamp(match.group(1)) if match else timestamp
                    if last is None:
                        last = timestamp + datetime.timedelta(seconds=1)
                    continue
                outcome = Outcome.RETRY if verdict.outcome == Outcome.REFRESH else verdict.outcome
                if outcome == Outcome.STALE:
                    outcome = Outcome.REFUSED
                return self.finish(
                    delivery, outcome, answer.status_code, _lms_message(answer.said, verdict.advice),
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
        self.tally.response(self.lms.family, status_code)
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
        """What became of the send, written with the rest of the batch (`flush`)."""
        landing = outbox.land(delivery, outcome, status_code, message, **kwargs)
        self.landings.append(landing)
        if landing.result == "sent" and not delivery.is_resync:
            self.live_latency[delivery.pk] = (landing.sent_at - delivery.recorded_at).total_seconds()
        if landing.result == "retrying" and kwargs.get("advice_retry_after") is None:
            # Throttled, failing or unreachable: the rest of this LMS's rows wait as long as this one.
            self.stop(landing.wait, f"Held back: the LMS answered another grade with a retry. {message}"[:500])
        return landing.result


def _parse_lms_timestamp(text: str) -> datetime.datetime | None:
    try:
        parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.timezone.utc)


def _lms_message(body: str, advice: str) -> str:
    text = (body or "").strip()
    return f"{advice} LMS said: {text[:500]}" if advice and text else (advice or text[:500])



LANDED = frozenset({"sent", "refused", "dead"})  # what a send can end in for good (outbox.finish)
RESYNC_COUNT_SECONDS = 2.0


def note_resync_landings(job_ids: set[int]) -> None:
    """Have the counters of the resync jobs whose grades just landed written: `resync.count_progress`,
    queued on the resync queue, so that the recount (an aggregate over the job's rows) never holds
    this LMS's slot.

    Per job and batch of sends, one cache add and one indexed look (is the job planned, with none of
    its rows open?). A recount is queued at most once per RESYNC_COUNT_SECONDS per job, trailing (it
    counts what lands meanwhile), and at once when the job's last grade lands: each sender looks after
    its own rows are written, so the last one to write sees them all, and Done is written then.
    """
    for job_id in job_ids:
        finished = (
            ResyncJob.objects.filter(pk=job_id, status=ResyncJobStatus.RUNNING, planned_at__isnull=False)
            .exclude(Exists(Delivery.objects.filter(resync_job=OuterRef("pk"), status__in=OPEN_STATUSES)))
            .exists()
        )
        if finished:
            queue.send(queue.COUNT_RESYNC_PROGRESS, [job_id], queue="resync")
        elif cache.add(f"resync-count:{job_id}", 1, RESYNC_COUNT_SECONDS):
            queue.send(queue.COUNT_RESYNC_PROGRESS, [job_id], queue="resync", countdown=RESYNC_COUNT_SECONDS)
