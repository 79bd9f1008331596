"""Resync jobs: start one (permission, one active job per scope, audit, planning queued after commit), an
instructor's request for their course, cancelling; a job's progress, counted from its deliveries, and its finish.

Progress is written, not computed on read: as a job's grades land the sender asks for a recount
(`count_progress`, queued by `sender.note_resync_landings`: at most one per job every couple of
seconds, and at once when the job's last grade lands), the planner recounts when planning ends,
and beat's watchdog catches the rest. Pages read the stored counters (`progress_of`).
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.db.models import Count, F, Q, QuerySet
from django.utils import timezone
from django.utils.translation import ngettext
from lti_tool.models import LtiUser

from institutions.audit import record_staff_change
from institutions.models import Course

from .. import queue
from ..models import ACTIVE_JOB_STATUSES, OPEN_STATUSES, Delivery, DeliveryStatus, ResyncJob, ResyncJobStatus
from .scope import ResyncRefused, ResyncScope, preview_resync

RESYNC_PERMISSION = "gradesync.resync_grades"
INSTRUCTOR_COOLDOWN = datetime.timedelta(minutes=10)


def _requester_name(job: ResyncJob) -> str:
    return job.requested_by_name or "someone"


def start_resync(
    *,
    scope: ResyncScope,
    acting_user: AbstractBaseUser | None = None,
    instructor: LtiUser | None = None,
    estimated: int | None = None,
) -> ResyncJob:
    """Write a queued job for `scope`, audit it, and queue its planning after commit.

    `estimated`: the scope's grade count when the caller has just previewed it (else counted here).

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
    if estimated is None:
        estimated = preview_resync(scope).grades
    if acting_user is not None:
        name = acting_user.get_username()
    else:
        name = instructor_name(instructor)
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
                actor_name=name if acting_user is None else None,  # the instructor, not "system"
            )
    except IntegrityError:
        running = _same_scope(scope).filter(status__in=ACTIVE_JOB_STATUSES).first()
        detail = f" (#{running.pk}, asked by {_requester_name(running)} at {running.created_at:%H:%M} UTC)" if running else ""
        raise ResyncRefused(
            f"A resync of this scope is already queued or running{detail}. Wait for it to finish, or cancel it first.",
            job_id=running.pk if running else None,  # the admin links the refusal to that job
        ) from None
    transaction.on_commit(lambda: _queue_job(job.pk), robust=True)
    return job


def instructor_name(instructor: LtiUser) -> str:
    """Who asked, as support needs it to find them in the LMS: "Ada Lovelace (instructor, LMS user id 42)"."""
    return f"{instructor.name or instructor.email or 'An instructor'} (instructor, LMS user id {instructor.sub})"[:200]


def _same_scope(scope: ResyncScope) -> QuerySet[ResyncJob]:
    return ResyncJob.objects.filter(
        institution=scope.institution, course=scope.course, lti_user=scope.lti_user,
        activity_key=scope.activity_key, delivery=scope.delivery, completed_from=scope.completed_from,
        completed_until=scope.completed_until, only_changed=scope.only_changed,
    )


def _queue_job(job_id: int, *, countdown: float | None = None) -> None:
    queue.send(queue.RUN_RESYNC_JOB, [job_id], queue="resync", countdown=countdown)


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
        started=True, job_id=job.pk, message=ngettext(
            "Resync started: %(n)d grade will be sent to the LMS again.",
            "Resync started: %(n)d grades will be sent to the LMS again.", job.estimated,
        ) % {"n": job.estimated}
    )


@dataclass(frozen=True)
class CancelReport:
    """What a cancel did to the job's grades: withdrawn before any worker took them, already in flight
    (they finish, and are counted), and still retrying (the LMS has not taken them; retried until sent
    or given up). The job itself is Cancelled at once either way."""

    job_id: int
    withdrawn: int
    in_flight: int
    retrying: int

    @property
    def message(self) -> str:
        parts = [
            ngettext("%(n)d queued grade withdrawn", "%(n)d queued grades withdrawn", self.withdrawn) % {"n": self.withdrawn},
            ngettext("%(n)d already in flight (it finishes and is counted)",
                     "%(n)d already in flight (they finish and are counted)", self.in_flight) % {"n": self.in_flight},
            ngettext("%(n)d still retrying (the LMS has not taken it yet; it keeps retrying until sent or given up)",
                     "%(n)d still retrying (the LMS has not taken them yet; they keep retrying until sent or given up)",
                     self.retrying) % {"n": self.retrying},
        ]
        return f"Resync #{self.job_id} cancelled: " + "; ".join(parts) + "."


@transaction.atomic
def cancel_resync(*, job: ResyncJob, acting_user: AbstractBaseUser) -> CancelReport:
    """Cancel a queued or running job: it is Cancelled at once, and the report says what became of its grades.

    Planning stops before its next batch; deliveries that no worker has picked up and that carry
    no newer live grade are withdrawn; the rest (sending now, or retrying, or carrying a live
    grade) finish normally and are still counted on the job.
    """
    if not acting_user.has_perm(RESYNC_PERMISSION):
        raise PermissionDenied("Only Support staff cancel resyncs.")
    job = ResyncJob.objects.select_for_update().get(pk=job.pk)
    if not job.is_active:
        raise ResyncRefused(f"This resync is already {job.get_status_display().lower()}.")
    withdrawn, _ = Delivery.objects.filter(
        resync_job=job, status=DeliveryStatus.PENDING, attempts=0, version=1
    ).delete()
    left = Delivery.objects.filter(resync_job=job, status__in=OPEN_STATUSES).aggregate(
        in_flight=Count("id", filter=Q(status=DeliveryStatus.SENDING)),
        retrying=Count("id", filter=~Q(status=DeliveryStatus.SENDING)),
    )
    report = CancelReport(job.pk, withdrawn, left["in_flight"], left["retrying"])
    now = timezone.now()
    ResyncJob.objects.filter(pk=job.pk).update(
        status=ResyncJobStatus.CANCELLED, finished_at=now, skipped=F("skipped") + withdrawn,
        message=f"Cancelled by {acting_user.get_username()} at {now:%Y-%m-%d %H:%M:%S} UTC. {report.message}",
    )
    record_staff_change(
        actor=acting_user, action="resync.cancelled", obj=job, institution=job.institution,
        changes={
            "status": (job.status, ResyncJobStatus.CANCELLED.value), "withdrawn": (None, withdrawn),
            "in_flight": (None, report.in_flight), "retrying": (None, report.retrying),
        },
    )
    job.refresh_from_db()
    refresh_progress(job)
    return report


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


def count_progress(job_id: int) -> str:
    """Recount a job whose grades are landing (the sender queues this); returns its status, or "gone"."""
    job = ResyncJob.objects.filter(pk=job_id).first()
    if job is None:
        return "gone"
    return refresh_progress(job).status


def polled_progress(job: ResyncJob) -> Progress:
    """The progress a page polls for: the stored counters, never a recount.

    Every open tab polls each second, and the database they would load is the one the job's sends
    need; the counters are written as the grades land (see the module's docstring).
    """
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
