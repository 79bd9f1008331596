"""Resync: resend the policy's current grades at any scope, as a job worked through in batches.

start_resync             permission, one active job per scope (the database decides), the job
                         row and its audit entry; the planning task is queued after commit.
request_course_resync    the instructor's door: their own course, at most once per 10 minutes.
plan_next_batches        the task's body: claim the job, plan keys (course, learner, activity)
                         in set-based batches, re-queue itself when its time slice ends.
cancel_resync            stop planning; withdraw the job's deliveries no worker has picked up.
refresh_progress         counters from the job's deliveries (one aggregate); DONE once planned
                         and every delivery has settled.
preview_resync           how many grades a scope holds, on which LMSes.
preview_policy_change    how many grades a new policy would change in the LMS.

Planning writes the same outbox rows `services.plan_delivery(resync=True)` writes, a batch at a
time: a few queries per 500 grades instead of several per grade. When a live grade opens a row
for one of the batch's pairs at the same moment, the batch rolls back and is planned again
grade by grade through `plan_delivery` itself.

Cancelling: planning stops before the next batch, and the job's deliveries still pending, never
attempted and holding no newer live grade (version 1) are withdrawn (deleted: nothing was sent,
the LMS still holds what it held), so their queued messages find nothing to send. Deliveries being
sent, retrying, or carrying a live grade that arrived meanwhile finish normally.
"""
from __future__ import annotations

import datetime
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import NamedTuple

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, F, Q, QuerySet
from django.utils import timezone
from lti_tool.models import LtiLineItem, LtiUser

from institutions.audit import record_staff_change
from institutions.models import Course, Institution, LmsFamily

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
from .policy import pick_result

RESYNC_PERMISSION = "gradesync.resync_grades"
BATCH_SIZE = 2000
SLICE_SECONDS = 60.0  # one task runs at most this long, then queues its continuation
INSTRUCTOR_COOLDOWN = datetime.timedelta(minutes=10)

Key = tuple[int, int, str]  # (course id, LTI user id, activity key)


class ResyncRefused(Exception):
    """A resync that may not start now; the message says why, in words for the person who asked."""


class _Row(NamedTuple):
    """The fields of a Result that the policy reads (policy.pick_result)."""

    pk: int
    score: Decimal
    completed_at: datetime.datetime
    resource_link_id: int | None
    is_eligible: bool = True


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


def _rows_by_key(scope: ResyncScope, keys: list[Key]) -> dict[Key, list[_Row]]:
    """Every eligible result of the given keys (the policy chooses among all, window or not)."""
    wanted = set(keys)
    rows: dict[Key, list[_Row]] = defaultdict(list)
    results = scope.keyed_results().filter(_at_least(keys[0]), _at_most(keys[-1]))
    for course_id, user_id, key, pk, score, completed_at, link_id in results.values_list(
        *KEY_ORDER, "pk", "score", "completed_at", "resource_link_id"
    ):
        if (course_id, user_id, key) in wanted:
            rows[(course_id, user_id, key)].append(_Row(pk, score, completed_at, link_id))
    return rows


def _last_sent_scores(keys: Iterable[Key]) -> dict[Key, Decimal]:
    """The score last sent for each key (by our newest SENT delivery)."""
    keys = list(keys)
    if not keys:
        return {}
    wanted = set(keys)
    sent: dict[Key, Decimal] = {}
    rows = (
        Delivery.objects.filter(
            status=DeliveryStatus.SENT,
            course_id__in={k[0] for k in keys},
            lti_user_id__in={k[1] for k in keys},
            activity_key__in={k[2] for k in keys},
        )
        .order_by("-id")
        .values_list(*KEY_ORDER, "score")
    )
    for course_id, user_id, key, score in rows:
        if (course_id, user_id, key) in wanted:
            sent.setdefault((course_id, user_id, key), score)
    return sent


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


def _picked(rows: dict[Key, list[_Row]], policy: str) -> dict[Key, _Row]:
    return {key: chosen for key, found in rows.items() if (chosen := pick_result(found, policy)) is not None}


def preview_resync(scope: ResyncScope) -> ResyncPreview:
    """How many grades the job would send, per LMS. Reads in batches; no writes."""
    per_course: dict[int, int] = defaultdict(int)
    policy = scope.institution.grade_policy
    for keys in _iter_key_batches(scope):
        if scope.only_changed:
            chosen = _picked(_rows_by_key(scope, keys), policy)
            last = _last_sent_scores(chosen)
            keys = [k for k, row in chosen.items() if last.get(k) != row.score]
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
        chosen = _picked(_rows_by_key(scope, keys), policy)
        last = _last_sent_scores(chosen)
        total += len(chosen)
        for key, row in chosen.items():
            if last.get(key) != row.score:
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


# --- Planning ---------------------------------------------------------------------------------


def run_job(job_id: int, *, slice_seconds: float = SLICE_SECONDS, batch_size: int = BATCH_SIZE) -> str:
    """Plan a job's grades batch after batch; queue the continuation when the time slice ends.

    Idempotent: returns quietly when the job is gone, finished, cancelled, or already planned.
    """
    now = timezone.now()
    ResyncJob.objects.filter(pk=job_id, status=ResyncJobStatus.QUEUED).update(
        status=ResyncJobStatus.RUNNING, started_at=now
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
    """Plan the next batch of keys after the job's cursor. Returns "more", "planned" or why it stopped."""
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
        if not keys:
            ResyncJob.objects.filter(pk=job.pk).update(planned_at=timezone.now())
            return "planned"
        try:
            with transaction.atomic():
                planned, skipped, ids = _plan_keys(job, scope, keys)
        except IntegrityError:
            # A live grade opened a row for one of these pairs meanwhile: plan them one by one.
            planned, skipped, ids = _plan_keys_one_by_one(job, scope, keys)
        ResyncJob.objects.filter(pk=job.pk).update(
            cursor=list(keys[-1]), planned=F("planned") + planned, skipped=F("skipped") + skipped
        )
        transaction.on_commit(lambda: _enqueue_deliveries(job_id, ids), robust=True)
    return "more"


def _enqueue_deliveries(job_id: int, ids: list[int]) -> None:
    """One message per batch: a resync worker fans it out, so planning does not wait on the broker per grade."""
    from .tasks import queue_resync_deliveries

    if ids:
        queue_resync_deliveries.apply_async(args=[job_id, ids], queue="resync")


def fan_out(job_id: int, ids: list[int]) -> int:
    """Queue each planned delivery on the resync queue, unless the job was cancelled meanwhile."""
    if ResyncJob.objects.filter(pk=job_id, status=ResyncJobStatus.CANCELLED).exists():
        return 0
    from .tasks import deliver_grade

    # services.enqueue_delivery, with one broker connection for the whole batch.
    with deliver_grade.app.producer_or_acquire() as producer:
        for delivery_id in ids:
            deliver_grade.apply_async(args=[delivery_id], queue="resync", producer=producer)
    return len(ids)


def _plan_keys(job: ResyncJob, scope: ResyncScope, keys: list[Key]) -> tuple[int, int, list[int]]:
    """The set-based plan of one batch: the same rows plan_delivery(resync=True) writes, in a few queries."""
    policy = job.institution.grade_policy
    chosen = _picked(_rows_by_key(scope, keys), policy)
    skipped = len(keys) - len(chosen)
    if scope.only_changed:
        last = _last_sent_scores(chosen)
        unchanged = [k for k, row in chosen.items() if last.get(k) == row.score]
        for key in unchanged:
            del chosen[key]
        skipped += len(unchanged)
    if not chosen:
        return 0, skipped, []
    courses = {
        c.pk: c for c in Course.objects.filter(pk__in={k[0] for k in chosen}).select_related("deployment")
    }
    items_by_context: dict[int, list[LtiLineItem]] = defaultdict(list)
    for item in LtiLineItem.objects.filter(context_id__in={c.context_id for c in courses.values()}).order_by("-id").only(
        "id", "context_id", "resource_link_id", "resource_id", "url"
    ):
        items_by_context[item.context_id].append(item)
    targets: dict[Key, tuple[int | None, int | None]] = {}  # key -> (line item id, resource link id)
    for key, row in chosen.items():
        course = courses[key[0]]
        targets[key] = (_line_item_id(items_by_context[course.context_id], key[2], row.resource_link_id), row.resource_link_id)
    # Open rows of the batch's line items (a handful): no list of thousands of users to send and parse.
    open_rows = Delivery.objects.select_for_update().filter(status__in=OPEN_STATUSES).filter(
        Q(line_item_id__in={t[0] for t in targets.values() if t[0] is not None})
        | Q(line_item__isnull=True, resource_link_id__in={t[1] for t in targets.values() if t[0] is None})
    )
    open_by_pair = {
        ((row.line_item_id, None) if row.line_item_id else (None, row.resource_link_id), row.lti_user_id): row
        for row in open_rows.only("id", "line_item_id", "resource_link_id", "lti_user_id", "status", "version")
    }
    now = timezone.now()
    updated: list[Delivery] = []
    created: list[tuple] = []
    seen: set = set()
    for key, row in list(chosen.items()):
        line_item_id, link_id = targets[key]
        pair = ((line_item_id, None) if line_item_id else (None, link_id), key[1])
        if pair in seen:  # two activities feed one LMS column: it holds one grade; the first planned wins
            del chosen[key]
            skipped += 1
            continue
        seen.add(pair)
        existing = open_by_pair.get(pair)
        if existing is not None:
            existing.result_id, existing.score, existing.version = row.pk, row.score, F("version") + 1
            existing.is_resync, existing.recorded_at, existing.next_attempt_at = True, now, now
            existing.status = existing.status if existing.status == DeliveryStatus.SENDING else DeliveryStatus.PENDING
            existing.resync_job = job
            updated.append(existing)
            continue
        course = courses[key[0]]
        created.append(
            (row.pk, course.pk, course.institution_id, course.deployment.registration_id, course.deployment_id,
             key[1], link_id, line_item_id, key[2], row.score)
        )
    if updated:
        Delivery.objects.bulk_update(
            updated, ["result", "score", "version", "is_resync", "recorded_at", "next_attempt_at", "status", "resync_job"]
        )
    return len(chosen), skipped, [d.pk for d in updated] + _insert_deliveries(job, created, now)


_INSERT_COLUMNS = [
    "result_id", "course_id", "institution_id", "registration_id", "deployment_id", "lti_user_id", "resource_link_id",
    "line_item_id", "activity_key", "score", "status", "version", "is_resync", "attempts", "next_attempt_at",
    "last_message", "recorded_at", "created_at", "updated_at", "resync_job_id",
]


def _insert_deliveries(job: ResyncJob, rows: list[tuple], now: datetime.datetime) -> list[int]:
    """Insert new resync deliveries in one statement, returning their ids.

    What bulk_create writes, without preparing 20 fields per row through the ORM: at 100k grades
    that preparation was most of the planning time.
    """
    if not rows:
        return []
    ops = connection.ops
    stamp = ops.adapt_datetimefield_value(now)
    params: list = []
    for result_id, course_id, institution_id, registration_id, deployment_id, user_id, link_id, line_item_id, key, score in rows:
        params += [
            result_id, course_id, institution_id, registration_id, deployment_id, user_id, link_id, line_item_id, key,
            ops.adapt_decimalfield_value(score, 6, 5), DeliveryStatus.PENDING.value, 1, True, 0, stamp, "", stamp,
            stamp, stamp, job.pk,
        ]
    one = "(" + ", ".join(["%s"] * len(_INSERT_COLUMNS)) + ")"
    ids: list[int] = []
    chunk = 500  # SQLite's limit on bound parameters
    width = len(_INSERT_COLUMNS)
    table = connection.ops.quote_name(Delivery._meta.db_table)
    with connection.cursor() as cursor:
        for start in range(0, len(rows), chunk):
            part = params[start * width:(start + chunk) * width]
            count = len(part) // width
            cursor.execute(
                f"INSERT INTO {table} ({', '.join(_INSERT_COLUMNS)}) VALUES {', '.join([one] * count)} RETURNING id",
                part,
            )
            ids += [row[0] for row in cursor.fetchall()]
    return ids


def _line_item_id(items: list[LtiLineItem], activity_key: str, link_id: int | None) -> int | None:
    """The line item services._line_item_for picks: the one bound to the link, else the newest for the activity.

    A result without a link matches on the activity only (not on every unbound line item of the course).
    """
    candidates = [
        i for i in items if (link_id is not None and i.resource_link_id == link_id) or i.resource_id == activity_key
    ]
    bound = [i for i in candidates if link_id is not None and i.resource_link_id == link_id]
    picked = bound or candidates
    return picked[0].pk if picked else None


def _plan_keys_one_by_one(job: ResyncJob, scope: ResyncScope, keys: list[Key]) -> tuple[int, int, list[int]]:
    courses = {c.pk: c for c in Course.objects.filter(pk__in={k[0] for k in keys}).select_related("institution", "deployment")}
    users = LtiUser.objects.in_bulk({k[1] for k in keys})
    policy = job.institution.grade_policy
    last = _last_sent_scores(keys) if scope.only_changed else {}
    planned = skipped = 0
    for course_id, user_id, key in keys:
        if scope.only_changed:
            rows = _rows_by_key(scope, [(course_id, user_id, key)]).get((course_id, user_id, key), [])
            chosen = pick_result(rows, policy)
            if chosen is None or last.get((course_id, user_id, key)) == chosen.score:
                skipped += 1
                continue
        delivery = services.plan_delivery(
            course=courses[course_id], lti_user=users[user_id], activity_key=key, resource_link=None, resync=True, policy=policy
        )
        if delivery is None:
            skipped += 1
            continue
        Delivery.objects.filter(pk=delivery.pk).update(resync_job=job)
        planned += 1
    return planned, skipped, []  # plan_delivery queues its own deliveries
