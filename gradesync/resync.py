"""Resync: resend the policy's current grades at any scope, as a job worked through in batches.

start_resync             permission, one active job per scope (the database decides), the job
                         row and its audit entry; the planning task is queued after commit.
request_course_resync    the instructor's door: their own course, at most once per 10 minutes.
run_job                  the task's body: claim the job, plan keys (course, learner, activity)
                         in set-based batches, re-queue itself when its time slice ends.
sweep_resync_jobs        beat's safety net: restart a stalled planner, give up on a dead one,
                         finish jobs whose deliveries have settled.
cancel_resync            stop planning; withdraw the job's deliveries no worker has picked up.
refresh_progress         counters from the job's deliveries (one aggregate); DONE once planned
                         and every delivery has settled.
preview_resync           how many grades a scope holds, on which LMSes.
preview_policy_change    how many grades a new policy would change in the LMS.

Planning writes the same outbox rows `services.plan_delivery(resync=True)` writes, a batch of
5,000 grades at a time in a handful of statements: the keys, one query that picks each key's
grade by the policy and its line item (`_targets`), and one INSERT … ON CONFLICT DO UPDATE per
partial unique constraint, so a pair that already has an open row gets the new grade in it, even
when a live grade opened that row a moment ago.

A planner that stops without finishing (its worker killed, its message lost) is restarted after
15 minutes without progress, and given up 45 minutes later if that did not help, by
`sweep_resync_jobs` (Celery beat): a dead job never holds its scope for ever.

Cancelling: planning stops before the next batch, and the job's deliveries still pending, never
attempted and holding no newer live grade (version 1) are withdrawn (deleted: nothing was sent,
the LMS still holds what it held), so their queued messages find nothing to send. Deliveries being
sent, retrying, or carrying a live grade that arrived meanwhile finish normally.
"""
from __future__ import annotations

import datetime
import json
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import NamedTuple

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, connection, transaction
from django.db.models import Case, Count, DecimalField, Exists, F, OuterRef, Q, QuerySet, Subquery, Value, When, Window
from django.db.models.expressions import OrderBy
from django.db.models.functions import Coalesce, RowNumber
from django.utils import timezone
from lti_tool.models import LtiLineItem, LtiResourceLink, LtiUser

from institutions.audit import record_staff_change
from institutions.models import Course, GradePolicy, Institution, LmsFamily

from . import services
from .models import (
    ACTIVE_JOB_STATUSES,
    OPEN_STATUSES,
    Delivery,
    DeliveryStatus,
    ResyncJob,
    ResyncJobStatus,
    Result,
)

RESYNC_PERMISSION = "gradesync.resync_grades"
BATCH_SIZE = 5000  # grades per transaction: ~0.6 s of work, one fan-out message
SLICE_SECONDS = 60.0  # one task runs at most this long, then queues its continuation
INSTRUCTOR_COOLDOWN = datetime.timedelta(minutes=10)
STALLED_AFTER = datetime.timedelta(minutes=15)  # planning this long without progress: restart it
RESTART_GRACE = datetime.timedelta(minutes=45)  # restarted, and still none this long: fail it, freeing its scope

Key = tuple[int, int, str]  # (course id, LTI user id, activity key)


class ResyncRefused(Exception):
    """A resync that may not start now; the message says why, in words for the person who asked."""


# --- Scope ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResyncScope:
    """Which grades: an institution, narrowed by course, learner, activity, one delivery, a window."""

    institution: Institution
    course: Course | None = None
    lti_user: LtiUser | None = None
    activity_key: str = ""
    delivery: Delivery | None = None
    completed_from: datetime.datetime | None = None
    completed_until: datetime.datetime | None = None
    only_changed: bool = False

    @classmethod
    def of_delivery(cls, delivery: Delivery) -> ResyncScope:
        return cls(
            institution=delivery.institution, course=delivery.course, lti_user=delivery.lti_user,
            activity_key=delivery.activity_key, delivery=delivery,
        )

    @classmethod
    def of_job(cls, job: ResyncJob) -> ResyncScope:
        return cls(
            institution=job.institution, course=job.course, lti_user=job.lti_user, activity_key=job.activity_key,
            delivery=job.delivery, completed_from=job.completed_from, completed_until=job.completed_until,
            only_changed=job.only_changed,
        )

    def __post_init__(self) -> None:
        if self.course is not None and self.course.institution_id != self.institution.pk:
            raise ValueError("The course is not the institution's.")
        if self.completed_from and self.completed_until and self.completed_until <= self.completed_from:
            raise ResyncRefused("The end of the date range must come after its start.")

    def keyed_results(self) -> QuerySet[Result]:
        """Eligible results of the scope, before the completion window."""
        results = Result.objects.filter(is_eligible=True, lti_user__isnull=False)
        if self.course is not None:
            results = results.filter(course=self.course)
        else:
            results = results.filter(course__institution=self.institution)
        if self.lti_user is not None:
            results = results.filter(lti_user=self.lti_user)
        if self.activity_key:
            results = results.filter(activity_key=self.activity_key)
        return results

    def results(self) -> QuerySet[Result]:
        """The eligible results that put a grade in scope (completed within the window, if any)."""
        results = self.keyed_results()
        if self.completed_from is not None:
            results = results.filter(completed_at__gte=self.completed_from)
        if self.completed_until is not None:
            results = results.filter(completed_at__lt=self.completed_until)
        return results

    def describe(self) -> str:
        parts = [str(self.institution)]
        if self.course is not None:
            parts.append(f"course “{self.course}”")
        if self.lti_user is not None:
            parts.append(f"learner {self.lti_user.name or self.lti_user.email or self.lti_user.sub}")
        if self.activity_key:
            parts.append(f"activity {self.activity_key}")
        if self.delivery is not None:
            parts.append(f"delivery #{self.delivery.pk}")
        if self.completed_from or self.completed_until:
            start = self.completed_from.strftime("%Y-%m-%d %H:%M") if self.completed_from else "…"
            end = self.completed_until.strftime("%Y-%m-%d %H:%M") if self.completed_until else "…"
            parts.append(f"completed {start} – {end} UTC")
        if self.only_changed:
            parts.append("only grades that differ from the last sent")
        return ", ".join(parts)


def _after(cursor: Key) -> Q:
    course_id, user_id, key = cursor
    return (
        Q(course_id__gt=course_id)
        | Q(course_id=course_id, lti_user_id__gt=user_id)
        | Q(course_id=course_id, lti_user_id=user_id, activity_key__gt=key)
    )


def _at_least(first: Key) -> Q:
    course_id, user_id, key = first
    return (
        Q(course_id__gt=course_id)
        | Q(course_id=course_id, lti_user_id__gt=user_id)
        | Q(course_id=course_id, lti_user_id=user_id, activity_key__gte=key)
    )


def _at_most(last: Key) -> Q:
    course_id, user_id, key = last
    return (
        Q(course_id__lt=course_id)
        | Q(course_id=course_id, lti_user_id__lt=user_id)
        | Q(course_id=course_id, lti_user_id=user_id, activity_key__lte=key)
    )


KEY_ORDER = ["course_id", "lti_user_id", "activity_key"]


def _keys(scope: ResyncScope, *, after: Key | None, limit: int) -> list[Key]:
    results = scope.results()
    if after is not None:
        results = results.filter(_after(after))
    return [tuple(k) for k in results.order_by(*KEY_ORDER).values_list(*KEY_ORDER).distinct()[:limit]]


def _policy_order(policy: str) -> list[OrderBy]:
    """policy.pick_result's choice as an SQL ordering: the first row is the grade the policy sends."""
    if policy == GradePolicy.MOST_RECENT:
        return [F("completed_at").desc(), F("pk").desc()]
    return [F("score").desc(), F("completed_at").desc(), F("pk").desc()]


def _picked_results(scope: ResyncScope, keys: list[Key], policy: str) -> QuerySet[Result]:
    """The result `policy` sends for each of `keys` (sorted, as `_keys` returns them), chosen in SQL, in key order.

    The policy chooses among every eligible result of a key, window or not; the window only
    decides which keys are in scope.
    """
    results = scope.keyed_results().filter(_at_least(keys[0]), _at_most(keys[-1]))
    if scope.completed_from is not None or scope.completed_until is not None:
        results = results.filter(Exists(scope.results().filter(
            course_id=OuterRef("course_id"), lti_user_id=OuterRef("lti_user_id"), activity_key=OuterRef("activity_key")
        )))
    ranked = results.annotate(
        policy_rank=Window(RowNumber(), partition_by=[F(name) for name in KEY_ORDER], order_by=_policy_order(policy))
    )
    return Result.objects.filter(pk__in=ranked.filter(policy_rank=1).values("pk")).order_by(*KEY_ORDER)


# The score our newest SENT delivery of the result's (course, learner, activity) put in the LMS.
_LAST_SENT_SCORE = Subquery(
    Delivery.objects.filter(
        status=DeliveryStatus.SENT, course_id=OuterRef("course_id"), lti_user_id=OuterRef("lti_user_id"),
        activity_key=OuterRef("activity_key"),
    ).order_by("-id").values("score")[:1]
)


# --- Previews ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LmsCount:
    name: str
    family: str
    grades: int


@dataclass(frozen=True)
class ResyncPreview:
    grades: int
    lmses: list[LmsCount] = field(default_factory=list)


def _iter_key_batches(scope: ResyncScope, size: int = 5000) -> Iterator[list[Key]]:
    after: Key | None = None
    while True:
        keys = _keys(scope, after=after, limit=size)
        if not keys:
            return
        yield keys
        after = keys[-1]


def _lms_of_courses(course_ids: Iterable[int]) -> dict[int, tuple[str, str]]:
    return {
        pk: (name, family or LmsFamily.OTHER)
        for pk, name, family in Course.objects.filter(pk__in=set(course_ids)).values_list(
            "pk", "deployment__registration__name", "deployment__registration__profile__lms_family"
        )
    }


def _changed(scope: ResyncScope, keys: list[Key], policy: str) -> Iterator[tuple[Key, bool]]:
    """For each key: would `policy` put another grade in the LMS than the last one sent? (Never sent: yes.)"""
    batch = set(keys)
    for course_id, user_id, key, score, last_sent in (
        _picked_results(scope, keys, policy).annotate(last_sent=_LAST_SENT_SCORE)
        .values_list(*KEY_ORDER, "score", "last_sent")
    ):
        if (course_id, user_id, key) in batch:
            yield (course_id, user_id, key), last_sent != score


def preview_resync(scope: ResyncScope) -> ResyncPreview:
    """How many grades the job would send, per LMS. Reads in batches; no writes."""
    per_course: dict[int, int] = defaultdict(int)
    policy = scope.institution.grade_policy
    for keys in _iter_key_batches(scope):
        if scope.only_changed:
            keys = [key for key, changed in _changed(scope, keys, policy) if changed]
        for course_id, _user, _key in keys:
            per_course[course_id] += 1
    return _preview_from(per_course)


def _preview_from(per_course: dict[int, int]) -> ResyncPreview:
    per_lms: dict[tuple[str, str], int] = defaultdict(int)
    for course_id, (name, family) in _lms_of_courses(per_course).items():
        per_lms[(name, family)] += per_course[course_id]
    lmses = [LmsCount(name=name, family=LmsFamily(family).label if family in LmsFamily.values else family, grades=n)
             for (name, family), n in sorted(per_lms.items())]
    return ResyncPreview(grades=sum(per_course.values()), lmses=lmses)


@dataclass(frozen=True)
class PolicyPreview:
    policy: str
    grades: int  # (course, learner, activity) with eligible results
    changed: int  # of which the LMS would get another grade under `policy`
    lmses: list[LmsCount] = field(default_factory=list)


def preview_policy_change(*, institution: Institution, policy: str) -> PolicyPreview:
    """For each (course, learner, activity) with eligible results: does `policy` pick another grade than the last sent?

    A grade never sent counts as changed: a resync would put it in the LMS.
    """
    scope = ResyncScope(institution=institution)
    total = 0
    per_course: dict[int, int] = defaultdict(int)
    for keys in _iter_key_batches(scope):
        for key, changed in _changed(scope, keys, policy):
            total += 1
            if changed:
                per_course[key[0]] += 1
    preview = _preview_from(per_course)
    return PolicyPreview(policy=policy, grades=total, changed=preview.grades, lmses=preview.lmses)


# --- Jobs -------------------------------------------------------------------------------------


def _requester_name(job: ResyncJob) -> str:
    return job.requested_by_name or "someone"


def start_resync(
    *,
    scope: ResyncScope,
    acting_user: AbstractBaseUser | None = None,
    instructor: LtiUser | None = None,
) -> ResyncJob:
    """Write a queued job for `scope`, audit it, and queue its planning after commit.

    Staff need `gradesync.resync_grades`; an instructor's request comes through
    `request_course_resync`, which checks the course is theirs. Raises ResyncRefused when a job
    of the same scope is queued or running (the partial unique constraint decides, so two
    simultaneous requests cannot both pass).
    """
    if instructor is None and (acting_user is None or not acting_user.has_perm(RESYNC_PERMISSION)):
        raise PermissionDenied("Only Support staff resync grades.")
    # A job whose deliveries have all settled is done, even if nobody has looked since.
    for active in _same_scope(scope).filter(status__in=ACTIVE_JOB_STATUSES):
        refresh_progress(active)
    estimated = preview_resync(scope).grades
    if acting_user is not None:
        name = acting_user.get_username()
    else:
        name = f"Instructor {instructor.name or instructor.email or instructor.sub}"
    try:
        with transaction.atomic():
            job = ResyncJob.objects.create(
                institution=scope.institution, course=scope.course, lti_user=scope.lti_user,
                activity_key=scope.activity_key, delivery=scope.delivery, completed_from=scope.completed_from,
                completed_until=scope.completed_until, only_changed=scope.only_changed,
                requested_by=acting_user, requested_by_instructor=instructor, requested_by_name=name[:200],
                estimated=estimated,
            )
            record_staff_change(
                actor=acting_user,
                action="resync.requested",
                obj=job,
                institution=scope.institution,
                changes={"scope": (None, scope.describe()), "grades": (None, estimated), "requested_by": (None, name)},
            )
    except IntegrityError:
        running = _same_scope(scope).filter(status__in=ACTIVE_JOB_STATUSES).first()
        detail = f" (#{running.pk}, asked by {_requester_name(running)} at {running.created_at:%H:%M} UTC)" if running else ""
        raise ResyncRefused(
            f"A resync of this scope is already queued or running{detail}. Wait for it to finish, or cancel it first."
        ) from None
    transaction.on_commit(lambda: _queue_job(job.pk), robust=True)
    return job


def _same_scope(scope: ResyncScope) -> QuerySet[ResyncJob]:
    return ResyncJob.objects.filter(
        institution=scope.institution, course=scope.course, lti_user=scope.lti_user,
        activity_key=scope.activity_key, delivery=scope.delivery, completed_from=scope.completed_from,
        completed_until=scope.completed_until, only_changed=scope.only_changed,
    )


def _queue_job(job_id: int, *, countdown: float | None = None) -> None:
    from .tasks import run_resync_job

    run_resync_job.apply_async(args=[job_id], queue="resync", countdown=countdown)


@dataclass(frozen=True)
class CourseResyncRequest:
    """What happened to an instructor's request: started (job id) or refused (why, and when it may be asked again)."""

    started: bool
    message: str
    job_id: int | None = None
    retry_at: datetime.datetime | None = None


@transaction.atomic
def request_course_resync(*, course: Course, instructor: LtiUser) -> CourseResyncRequest:
    """An instructor resyncs their own course: one active job per course, at most once per 10 minutes.

    The caller has checked that `instructor` launched from `course` as an instructor.
    """
    course = Course.objects.select_for_update().select_related("institution").get(pk=course.pk)  # serializes requests per course
    now = timezone.now()
    recent = (
        ResyncJob.objects.filter(course=course, requested_by_instructor__isnull=False, created_at__gt=now - INSTRUCTOR_COOLDOWN)
        .order_by("-created_at")
        .first()
    )
    if recent is not None:
        retry_at = recent.created_at + INSTRUCTOR_COOLDOWN
        return CourseResyncRequest(
            started=False,
            message=f"This course was resynced at {recent.created_at:%H:%M} UTC; you can resync it again at "
            f"{retry_at:%H:%M} UTC (once every 10 minutes).",
            retry_at=retry_at,
        )
    try:
        job = start_resync(scope=ResyncScope(institution=course.institution, course=course), instructor=instructor)
    except ResyncRefused as refusal:
        return CourseResyncRequest(started=False, message=str(refusal))
    return CourseResyncRequest(
        started=True, job_id=job.pk, message=f"Resync started: {job.estimated} grades will be sent to the LMS again."
    )


@transaction.atomic
def cancel_resync(*, job: ResyncJob, acting_user: AbstractBaseUser) -> int:
    """Cancel a queued or running job. Returns how many queued deliveries were withdrawn.

    Planning stops before its next batch; deliveries that no worker has picked up and that carry
    no newer live grade are withdrawn; the rest finish normally.
    """
    if not acting_user.has_perm(RESYNC_PERMISSION):
        raise PermissionDenied("Only Support staff cancel resyncs.")
    job = ResyncJob.objects.select_for_update().get(pk=job.pk)
    if not job.is_active:
        raise ResyncRefused(f"This resync is already {job.get_status_display().lower()}.")
    withdrawn, _ = Delivery.objects.filter(
        resync_job=job, status=DeliveryStatus.PENDING, attempts=0, version=1
    ).delete()
    now = timezone.now()
    ResyncJob.objects.filter(pk=job.pk).update(
        status=ResyncJobStatus.CANCELLED, finished_at=now, skipped=F("skipped") + withdrawn,
        message=f"Cancelled by {acting_user.get_username()}; {withdrawn} queued grades withdrawn.",
    )
    record_staff_change(
        actor=acting_user, action="resync.cancelled", obj=job, institution=job.institution,
        changes={"status": (job.status, ResyncJobStatus.CANCELLED.value), "withdrawn": (None, withdrawn)},
    )
    job.refresh_from_db()
    refresh_progress(job)
    return withdrawn


@dataclass(frozen=True)
class Progress:
    job_id: int
    status: str
    status_label: str
    estimated: int
    planned: int
    sent: int
    refused: int
    failed: int
    skipped: int
    pending: int
    planning: bool
    active: bool
    percent: int
    message: str

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def refresh_progress(job: ResyncJob) -> Progress:
    """Read the job's outcomes from its deliveries (one aggregate) and store them; finish a settled job."""
    counts = Delivery.objects.filter(resync_job=job).aggregate(
        sent=Count("id", filter=Q(status=DeliveryStatus.SENT)),
        refused=Count("id", filter=Q(status=DeliveryStatus.REFUSED)),
        failed=Count("id", filter=Q(status=DeliveryStatus.DEAD)),
        pending=Count("id", filter=Q(status__in=OPEN_STATUSES)),
    )
    fields = {name: counts[name] for name in ("sent", "refused", "failed")}
    if job.status == ResyncJobStatus.RUNNING and job.planned_at is not None and counts["pending"] == 0:
        now = timezone.now()
        if ResyncJob.objects.filter(pk=job.pk, status=ResyncJobStatus.RUNNING).update(
            status=ResyncJobStatus.DONE, finished_at=now, **fields
        ):
            job.status, job.finished_at = ResyncJobStatus.DONE, now
    if any(getattr(job, name) != value for name, value in fields.items()):
        ResyncJob.objects.filter(pk=job.pk).update(**fields)
    for name, value in fields.items():
        setattr(job, name, value)
    return progress_of(job, pending=counts["pending"])


PROGRESS_RECOUNT_SECONDS = 2


def polled_progress(job: ResyncJob) -> Progress:
    """The progress a page polls for: recounted at most every few seconds per job, whoever asks.

    A recount reads the job's deliveries (~80 ms at 100k rows); every open tab polls each second,
    and the database they load is the one the job's sends need. In between, the stored counters.
    """
    from django.core.cache import cache

    if job.is_active and cache.add(f"resync-progress:{job.pk}", 1, PROGRESS_RECOUNT_SECONDS):
        return refresh_progress(job)
    return progress_of(job)


def progress_of(job: ResyncJob, *, pending: int | None = None) -> Progress:
    settled = job.sent + job.refused + job.failed + job.skipped
    total = max(job.estimated, job.planned + job.skipped) if job.planned_at is None else job.planned + job.skipped
    if job.status in (ResyncJobStatus.DONE,):
        percent = 100
    else:
        percent = int(100 * settled / total) if total else 0
    return Progress(
        job_id=job.pk, status=job.status, status_label=job.get_status_display(), estimated=job.estimated,
        planned=job.planned, sent=job.sent, refused=job.refused, failed=job.failed, skipped=job.skipped,
        pending=pending if pending is not None else max(job.planned - job.sent - job.refused - job.failed, 0),
        planning=job.is_active and job.planned_at is None, active=job.is_active, percent=min(percent, 100), message=job.message,
    )


# --- Safety net -------------------------------------------------------------------------------

_RESTARTED = "Planning stalled"  # how the sweeper's note begins; the next batch planned clears it


def sweep_resync_jobs(*, now: datetime.datetime | None = None) -> dict[str, int]:
    """Keep dead planners from holding their scope for ever (the one-active-job constraint would).

    A queued or running job whose planning has not moved (`updated_at`, written by every batch)
    for STALLED_AFTER gets its planning task queued again, once: it continues from its cursor,
    and should the first task turn up after all, the two take turns harmlessly. A job that then
    makes no progress for RESTART_GRACE is marked failed with the reason, which frees its scope;
    what it planned is still sent. Planned jobs whose deliveries have all settled are marked
    done. The system does this, not a staff member: nothing is audited; the job's message says it.
    """
    now = now or timezone.now()
    counts = {"restarted": 0, "failed": 0, "done": 0}
    unplanned = ResyncJob.objects.filter(status__in=ACTIVE_JOB_STATUSES, planned_at__isnull=True)
    for job in unplanned.filter(message__startswith=_RESTARTED, updated_at__lt=now - RESTART_GRACE):
        if job.status == ResyncJobStatus.QUEUED:
            what = "It never started"
        else:
            what = f"{job.planned:,} of about {job.estimated:,} grades were planned; those are still sent"
        # Conditional on updated_at: a batch planned meanwhile wins.
        counts["failed"] += ResyncJob.objects.filter(pk=job.pk, status=job.status, updated_at=job.updated_at).update(
            status=ResyncJobStatus.FAILED, finished_at=now, updated_at=now,
            message=f"Stopped by the system at {now:%Y-%m-%d %H:%M} UTC: planning stalled and made no progress in "
            f"the {_minutes(now - job.updated_at)} minutes after the system restarted it (its worker probably "
            f"keeps stopping). {what}. Start the resync again to send the rest.",
        )
    for job in unplanned.filter(updated_at__lt=now - STALLED_AFTER).exclude(message__startswith=_RESTARTED):
        if ResyncJob.objects.filter(pk=job.pk, status=job.status, updated_at=job.updated_at).update(
            updated_at=now,
            message=f"{_RESTARTED}: no progress since {job.updated_at:%H:%M} UTC; the system restarted it at "
            f"{now:%H:%M} UTC.",
        ):
            counts["restarted"] += 1
            _queue_job(job.pk)
    for job in ResyncJob.objects.filter(status=ResyncJobStatus.RUNNING, planned_at__isnull=False):
        if refresh_progress(job).status == ResyncJobStatus.DONE:
            counts["done"] += 1
    return counts


def _minutes(delta: datetime.timedelta) -> int:
    return int(delta.total_seconds() // 60)


# --- Planning ---------------------------------------------------------------------------------


def run_job(job_id: int, *, slice_seconds: float = SLICE_SECONDS, batch_size: int = BATCH_SIZE) -> str:
    """Plan a job's grades batch after batch; queue the continuation when the time slice ends.

    Idempotent: returns quietly when the job is gone, finished, cancelled, or already planned.
    Two planners of one job (a resumed job whose first message turns up after all) take turns
    batch by batch on the job's row lock.
    """
    now = timezone.now()
    ResyncJob.objects.filter(pk=job_id, status=ResyncJobStatus.QUEUED).update(
        status=ResyncJobStatus.RUNNING, started_at=now, updated_at=now
    )
    deadline = time.monotonic() + slice_seconds
    try:
        while True:
            outcome = _plan_one_batch(job_id, batch_size=batch_size)
            if outcome != "more":
                break
            if time.monotonic() >= deadline:
                _queue_job(job_id)
                return "continues"
    except Exception as error:  # noqa: BLE001 - the job must stand visibly as failed, with the reason
        ResyncJob.objects.filter(pk=job_id, status__in=ACTIVE_JOB_STATUSES).update(
            status=ResyncJobStatus.FAILED, finished_at=timezone.now(), message=f"Planning failed: {error!r}"[:2000]
        )
        raise
    job = ResyncJob.objects.filter(pk=job_id).first()
    if job is not None:
        refresh_progress(job)
    return outcome


def _plan_one_batch(job_id: int, *, batch_size: int) -> str:
    """Plan the next batch of keys after the job's cursor. Returns "more", "planned" or why it stopped.

    `updated_at` records the planner's last progress, or the sweeper's restart
    (`sweep_resync_jobs` reads it); the sweeper's note is cleared once planning moves again.
    """
    with transaction.atomic():
        job = (
            ResyncJob.objects.select_for_update(of=("self",))
            .select_related("institution", "course", "lti_user", "delivery")
            .filter(pk=job_id)
            .first()
        )
        if job is None:
            return "gone"
        if job.status != ResyncJobStatus.RUNNING or job.planned_at is not None:
            return f"not running ({job.status})"
        scope = ResyncScope.of_job(job)
        cursor = tuple(job.cursor) if job.cursor else None
        keys = _keys(scope, after=cursor, limit=batch_size)
        now = timezone.now()
        if not keys:
            ResyncJob.objects.filter(pk=job.pk).update(planned_at=now, updated_at=now, message="")
            return "planned"
        ids = _plan_keys(job, scope, keys)
        ResyncJob.objects.filter(pk=job.pk).update(
            cursor=list(keys[-1]), planned=F("planned") + len(ids), skipped=F("skipped") + len(keys) - len(ids),
            updated_at=now, message="",
        )
        transaction.on_commit(lambda: _enqueue_deliveries(job_id, ids), robust=True)
    return "more"


def _enqueue_deliveries(job_id: int, ids: list[int]) -> None:
    """One message per batch: a resync worker fans it out, so planning does not wait on the broker per grade."""
    from .tasks import queue_resync_deliveries

    if ids:
        queue_resync_deliveries.apply_async(args=[job_id, ids], queue="resync")


def fan_out(job_id: int, ids: list[int]) -> int:
    """Start senders for a planned batch, unless the job was cancelled meanwhile; returns the tasks queued.

    Each LMS of the batch gets as many tasks as it allows requests in flight (services.wake_senders),
    not a task per row: 5,000 tasks per batch cost the workers a round trip each for nothing, and,
    queued in key order, kept an institution's other LMSes idle behind the first one's rows
    (bench_resync --deliver).
    """
    if ResyncJob.objects.filter(pk=job_id, status=ResyncJobStatus.CANCELLED).exists():
        return 0
    rows = Delivery.objects.filter(pk__in=ids).order_by("pk").values_list("pk", "registration_id", "is_resync")
    return services.wake_senders(list(rows))


class _Target(NamedTuple):
    """The policy's result for one key, and where its grade goes."""

    result_id: int
    course_id: int
    lti_user_id: int
    activity_key: str
    score: Decimal
    resource_link_id: int | None
    line_item_id: int | None
    line_items: int | None  # how many of the course's line items match (the activity, or the result's link)
    institution_id: int
    registration_id: int
    deployment_id: int
    last_sent: Decimal | None  # read only for an only-changed job


def _targets(scope: ResyncScope, keys: list[Key], policy: str) -> list[_Target]:
    """One query for a batch: the policy's result per key and the line item services._line_item_for would pick.

    That is the line item bound to the result's link, else the newest whose resource_id is the
    activity; a result without a link matches on the activity only, never on "any line item with
    no link".
    """
    of_course = LtiLineItem.objects.filter(context_id=OuterRef("course__context_id")).order_by("-id")
    bound = of_course.filter(resource_link_id=OuterRef("resource_link_id"))  # no link, no match: NULL = NULL is not true
    of_activity = of_course.filter(resource_id=OuterRef("activity_key"))
    candidates = of_course.filter(Q(resource_id=OuterRef("activity_key")) | Q(resource_link_id=OuterRef("resource_link_id")))
    last_sent = _LAST_SENT_SCORE if scope.only_changed else Value(None, output_field=DecimalField())
    rows = _picked_results(scope, keys, policy).annotate(
        target_line_item=Coalesce(Subquery(bound.values("id")[:1]), Subquery(of_activity.values("id")[:1])),
        line_items=Subquery(candidates.order_by().values("context_id").annotate(n=Count("id")).values("n")),
        last_sent=last_sent,
    )
    return [_Target(*row) for row in rows.values_list(
        "pk", *KEY_ORDER, "score", "resource_link_id", "target_line_item", "line_items", "course__institution_id",
        "course__deployment__registration_id", "course__deployment_id", "last_sent",
    )]


def _plan_keys(job: ResyncJob, scope: ResyncScope, keys: list[Key]) -> list[int]:
    """The set-based plan of one batch: the rows plan_delivery(resync=True) writes, in a few statements.

    Returns the ids of the deliveries written (new, or open ones brought up to the policy's grade);
    the batch's other keys are skipped.
    """
    batch = set(keys)
    chosen: dict[tuple, _Target] = {}
    several_line_items: set[tuple[int, str, int | None]] = set()
    for target in _targets(scope, keys, job.institution.grade_policy):
        if (target.course_id, target.lti_user_id, target.activity_key) not in batch:
            continue  # a grade recorded since the keys were read: the next batch, or a live sync, has it
        if scope.only_changed and target.last_sent == target.score:
            continue
        if (target.line_items or 0) > 1:
            several_line_items.add((target.course_id, target.activity_key, target.resource_link_id))
        if target.line_item_id is not None:
            pair: tuple = ("line item", target.line_item_id, target.lti_user_id)
        elif target.resource_link_id is not None:
            pair = ("link", target.resource_link_id, target.lti_user_id)
        else:
            pair = ("activity", target.course_id, target.activity_key, target.lti_user_id)
        # Two activities feeding one LMS column: it holds one grade; the first in key order wins.
        chosen.setdefault(pair, target)
    _warn_several_line_items(several_line_items)
    return _write_deliveries(job, list(chosen.values()), timezone.now())


def _warn_several_line_items(found: set[tuple[int, str, int | None]]) -> None:
    """The live path's SyncWarning "duplicate_line_items" (services._line_item_for writes it) for each
    (course, activity, link) that several line items match."""
    if not found:
        return
    courses = Course.objects.in_bulk({course_id for course_id, _, _ in found})
    links = LtiResourceLink.objects.in_bulk({link_id for _, _, link_id in found if link_id is not None})
    for course_id, activity_key, link_id in found:
        services._line_item_for(courses[course_id], activity_key, links.get(link_id))


_OPEN_SQL = "status IN ({})".format(", ".join(f"'{status.value}'" for status in OPEN_STATUSES))
# The conflict targets name the partial unique constraints on Delivery (one open row per pair).
_ON_LINE_ITEM = f"(line_item_id, lti_user_id) WHERE {_OPEN_SQL} AND line_item_id IS NOT NULL"
_ON_UNBOUND_LINK = f"(resource_link_id, lti_user_id) WHERE {_OPEN_SQL} AND line_item_id IS NULL"
_ROW_COLUMNS = [  # with their PostgreSQL types
    ("result_id", "bigint"), ("course_id", "bigint"), ("lti_user_id", "bigint"), ("activity_key", "text"),
    ("score", "numeric"), ("resource_link_id", "bigint"), ("line_item_id", "bigint"), ("institution_id", "bigint"),
    ("registration_id", "bigint"), ("deployment_id", "bigint"),
]
_SAME_FOR_ALL = [  # every other NOT NULL column too: Django's defaults are not the database's
    "status", "version", "is_resync", "attempts", "last_message", "next_attempt_at", "recorded_at", "created_at",
    "updated_at", "resync_job_id", "answer_lost",
]


def _write_deliveries(job: ResyncJob, targets: list[_Target], now: datetime.datetime) -> list[int]:
    """Write each target's delivery as plan_delivery(resync=True) does; returns their ids.

    One INSERT … ON CONFLICT DO UPDATE per partial unique constraint: a pair with an open row gets
    the new grade (version bumped, pending again unless a worker is sending it), any other pair a
    new row. A live grade committing the same pair meanwhile is waited for, then updated, never
    duplicated. Rows for neither a line item nor a link have no constraint to lean on: their open
    rows are looked up by (course, learner, activity) first.
    """
    ids: list[int] = []
    unkeyed = [t for t in targets if t.line_item_id is None and t.resource_link_id is None]
    if unkeyed:
        updated = _replan_unkeyed(job, unkeyed, now)
        ids += updated.values()
        targets = [t for t in targets if (t.course_id, t.lti_user_id, t.activity_key) not in updated]
    for conflict, part in (
        (_ON_LINE_ITEM, [t for t in targets if t.line_item_id is not None]),
        (_ON_UNBOUND_LINK, [t for t in targets if t.line_item_id is None]),
    ):
        if part:
            ids += _upsert(job, part, now, conflict)
    return ids


def _upsert(job: ResyncJob, targets: list[_Target], now: datetime.datetime, conflict: str) -> list[int]:
    ops = connection.ops
    table = ops.quote_name(Delivery._meta.db_table)
    stamp = ops.adapt_datetimefield_value(now)
    same = [DeliveryStatus.PENDING.value, 1, True, 0, "", stamp, stamp, stamp, stamp, job.pk, False]
    rows = [
        (t.result_id, t.course_id, t.lti_user_id, t.activity_key, ops.adapt_decimalfield_value(t.score, 6, 5),
         t.resource_link_id, t.line_item_id, t.institution_id, t.registration_id, t.deployment_id)
        for t in targets
    ]
    upsert = (
        f"INSERT INTO {table} ({', '.join([name for name, _ in _ROW_COLUMNS] + _SAME_FOR_ALL)}) {{rows}} "
        f"ON CONFLICT {conflict} DO UPDATE SET result_id = excluded.result_id, score = excluded.score, "
        f"version = {table}.version + 1, is_resync = excluded.is_resync, recorded_at = excluded.recorded_at, "
        f"next_attempt_at = excluded.next_attempt_at, resync_job_id = excluded.resync_job_id, "
        f"updated_at = excluded.updated_at, "
        f"status = CASE WHEN {table}.status = 'sending' THEN 'sending' ELSE 'pending' END "
        f"RETURNING id"
    )
    # (WHERE true: SQLite's parser needs it before ON CONFLICT; PostgreSQL does not mind.)
    constants = ", ".join(["%s"] * len(same))
    ids: list[int] = []
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # The rows as one JSON parameter: binding thousands of scalars (or arrays) cost more than the insert.
            names = [name for name, _ in _ROW_COLUMNS]
            record = ", ".join(f"{name} {kind}" for name, kind in _ROW_COLUMNS)
            cursor.execute(
                upsert.format(rows=f"SELECT *, {constants} FROM json_to_recordset(%s::json) AS r({record}) WHERE true"),
                same + [json.dumps([dict(zip(names, row)) for row in rows], default=str)],
            )
            ids += [row[0] for row in cursor.fetchall()]
        else:
            one = "(" + ", ".join(["%s"] * len(_ROW_COLUMNS)) + ")"
            for start in range(0, len(rows), 500):  # SQLite's limit on bound parameters
                part = rows[start:start + 500]
                cursor.execute(
                    upsert.format(rows=f"SELECT *, {constants} FROM (VALUES {', '.join([one] * len(part))}) WHERE true"),
                    same + [value for row in part for value in row],
                )
                ids += [row[0] for row in cursor.fetchall()]
    return ids


def _replan_unkeyed(job: ResyncJob, targets: list[_Target], now: datetime.datetime) -> dict[Key, int]:
    """Open rows for neither a line item nor a link get the new grade; returns {key: delivery id} of those updated."""
    wanted = {(t.course_id, t.lti_user_id, t.activity_key): t for t in targets}
    open_rows = Delivery.objects.select_for_update().filter(
        status__in=OPEN_STATUSES, line_item__isnull=True, resource_link__isnull=True,
        course_id__in={t.course_id for t in targets}, lti_user_id__in={t.lti_user_id for t in targets},
        activity_key__in={t.activity_key for t in targets},
    )
    updated: dict[Key, int] = {}
    for pk, *key in open_rows.order_by("id").values_list("pk", *KEY_ORDER):
        target = wanted.get(tuple(key))
        if target is None or tuple(key) in updated:
            continue
        Delivery.objects.filter(pk=pk).update(
            result_id=target.result_id, score=target.score, version=F("version") + 1, is_resync=True,
            recorded_at=now, next_attempt_at=now, resync_job=job, updated_at=now,
            status=Case(When(status=DeliveryStatus.SENDING, then=Value(DeliveryStatus.SENDING.value)),
                        default=Value(DeliveryStatus.PENDING.value)),
        )
        updated[tuple(key)] = pk
    return updated
