"""The door into grade sync. Other apps call only what is here.

`record_result` is called by courseware when an attempt is scored, inside the attempt's
transaction, so the result and its delivery row commit together or not at all.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from lti_tool.models import LtiDeployment, LtiLineItem, LtiResourceLink, LtiUser

from config.log_format import bind
from institutions.models import Course

from . import ledger, notice_handlers, queue, resync
from .models import Delivery, DeliveryStatus, ResyncJob, Result
from .resync import CourseResyncRequest

__all__ = ["LaunchFacts", "NO_LAUNCH", "record_result", "record_launch_endpoints", "course_sync_grid",
           "request_course_resync", "course_resync_state", "CourseSyncGrid", "CourseResyncRequest",
           "register_for_copy_notices", "result_sync_status", "ResultSync"]


@dataclass(frozen=True)
class LaunchFacts:
    """What the attempt's launch said: who the user was, in which course, under which deployment.

    `role` is "learner", "instructor", "test_user", "other", or "" when there was no LTI launch.
    """

    role: str
    course: Course | None
    deployment: LtiDeployment | None


NO_LAUNCH = LaunchFacts(role="", course=None, deployment=None)


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
    launch: LaunchFacts,
    link_graded: bool | None = None,
) -> Result:
    """Record a finished attempt's result (a fraction 0–1). Idempotent on `source_ref`.

    Call it inside the attempt's transaction. When the result is eligible, the grade the
    institution's policy picks is written to the delivery outbox in the same transaction and
    queued for the LMS after commit. `link_graded`: whether the link was placed graded
    (None: judge by whether a line item is bound to it).
    """
    if not (0 <= score <= 1):
        raise ValueError(f"score must be a fraction between 0 and 1, not {score}")
    # The institution on the log lines of recording; no query (the course row carries its id).
    with bind(institution=course.institution_id):
        return ledger.record_result(
            source_ref=source_ref,
            lti_user=lti_user,
            course=course,
            activity_key=activity_key,
            activity_title=activity_title,
            resource_link=resource_link,
            score=score,
            completed_at=completed_at,
            launch_role=launch.role,
            launched_course=launch.course,
            launch_deployment=launch.deployment,
            link_graded=link_graded,
        )


def record_launch_endpoints(
    *,
    resource_link: LtiResourceLink,
    ags_claim: dict | None,
    label: str,
    score_maximum: Decimal | None,
    resource_id: str = "",
) -> LtiLineItem | None:
    """Store the line item the LMS named for this resource link at launch.

    The AGS claim's `lineitem` comes in every launch and may change: the latest wins, so the
    first grade of a new course needs no lookup. Returns the bound line item, if any.
    """
    url = (ags_claim or {}).get("lineitem")
    if not url:
        return None
    # A copied course has new resource links; the URL identifies the line item across them.
    fields = {
        "context_id": resource_link.context_id,
        "resource_link_id": resource_link.pk,
        "label": (label or resource_link.title or "Activity")[:255],
        "maximum_score": float(score_maximum) if score_maximum else 1.0,
        "resource_id": resource_id,
    }
    line_item = LtiLineItem.objects.filter(url=url).first()
    if line_item is None or any(getattr(line_item, name) != value for name, value in fields.items()):
        # Written (and locked) only when it changes: a launch that locks the line item on every visit
        # deadlocks with a submit whose grade row checks its foreign key to it (the multi-host drill).
        line_item, _created = LtiLineItem.objects.update_or_create(url=url, defaults=fields)
    # Only one line item is bound to a resource link: one that the LMS now names replaces older ones.
    LtiLineItem.objects.filter(resource_link=resource_link).exclude(pk=line_item.pk).update(resource_link=None)
    return line_item


def register_for_copy_notices(*, deployment: LtiDeployment, handler_url: str) -> bool:
    """Ask the deployment's LMS to send us its context copy notices (PNS) at `handler_url`, when the
    launch said it offers them. Queued after the launch's commit, in the background; at most once a
    day per deployment. Returns whether a registration was queued."""
    if not notice_handlers.wants_registration(deployment, handler_url):
        return False
    transaction.on_commit(
        lambda: queue.send(queue.REGISTER_COPY_NOTICE_HANDLER, [deployment.pk, handler_url], queue="grades"), robust=True
    )
    return True


# --- The instructor's view of their course's grade sync --------------------------------------


@dataclass(frozen=True)
class SyncCell:
    """One learner's grade for one activity: "sent", "pending", "refused", "failed", "not_synced" or "none".

    `held` is the grade the LMS holds from an earlier send when the newest one is not (yet) there, e.g.
    "80%" for "the LMS holds 80%, a newer grade is pending"; "" when nothing was ever sent.
    `at`: when the newest grade was sent (sent), or recorded (pending, refused, failed).
    """

    state: str
    label: str
    reason: str = ""
    held: str = ""
    held_at: datetime.datetime | None = None
    at: datetime.datetime | None = None


@dataclass(frozen=True)
class SyncRow:
    learner: str
    cells: list[SyncCell]


@dataclass(frozen=True)
class CourseResyncState:
    """The course's latest resync, and when an instructor may ask for the next one."""

    job_id: int | None
    status: str
    status_label: str
    percent: int
    planned: int
    sent: int
    refused: int
    failed: int
    active: bool
    next_allowed_at: datetime.datetime | None


@dataclass(frozen=True)
class CourseSyncGrid:
    activities: list[tuple[str, str]]  # (activity key, title)
    rows: list[SyncRow]
    resync: CourseResyncState


_DELIVERY_STATES = {
    DeliveryStatus.SENT: "sent",
    DeliveryStatus.PENDING: "pending",
    DeliveryStatus.SENDING: "pending",
    DeliveryStatus.RETRYING: "pending",
    DeliveryStatus.REFUSED: "refused",
    DeliveryStatus.DEAD: "failed",
}


def _percent(score) -> str:
    return f"{float(score) * 100:.0f}%"


def _cell(delivery: dict | None, results: list[dict], held: dict | None = None) -> SyncCell:
    if delivery is not None:
        state = _DELIVERY_STATES[delivery["status"]]
        percent = _percent(delivery["score"])
        if state == "sent":
            return SyncCell(state, f"Sent {percent}", at=delivery["sent_at"])
        # What the LMS still holds from an earlier send, so "a newer grade is pending" reads apart from "never sent".
        earlier = {"held": _percent(held["score"]), "held_at": held["sent_at"]} if held is not None else {}
        if state == "pending":
            waiting = delivery["status"] == DeliveryStatus.RETRYING and delivery["last_message"]
            return SyncCell(state, f"Pending {percent}", delivery["last_message"] if waiting else "",
                            at=delivery["recorded_at"], **earlier)
        label = "Refused by the LMS" if state == "refused" else "Failed"
        return SyncCell(state, f"{label} ({percent})", delivery["last_message"], at=delivery["recorded_at"], **earlier)
    if any(r["is_eligible"] for r in results):
        return SyncCell("pending", "Not sent yet")
    if results:
        return SyncCell("not_synced", "Not synced", results[-1]["ineligible_reason"])
    return SyncCell("none", "—")


def course_sync_grid(*, course: Course, activities: list[tuple[str, str]] = ()) -> CourseSyncGrid:
    """Learners × graded activities of one course, each cell's sync state, and the course's resync.

    `activities` are the course's graded activities as (key, title); activities with results are
    added. The caller has checked the course is the requester's own.
    """
    columns = dict(activities)
    results: dict[tuple[int, str], list[dict]] = {}
    learners: dict[int, str] = {}
    for row in Result.objects.filter(course=course, lti_user__isnull=False).order_by("id").values(
        "lti_user_id", "lti_user__name", "lti_user__email", "lti_user__sub", "launch_role", "activity_key",
        "activity_title", "is_eligible", "ineligible_reason",
    ):
        if row["launch_role"] == "learner" or row["is_eligible"]:
            learners[row["lti_user_id"]] = row["lti_user__name"] or row["lti_user__email"] or row["lti_user__sub"]
        columns.setdefault(row["activity_key"], row["activity_title"] or row["activity_key"])
        results.setdefault((row["lti_user_id"], row["activity_key"]), []).append(row)
    latest: dict[tuple[int, str], dict] = {}
    last_sent: dict[tuple[int, str], dict] = {}
    for row in Delivery.objects.filter(course=course).order_by("-id").values(
        "lti_user_id", "activity_key", "status", "score", "last_message", "recorded_at", "sent_at"
    ):
        latest.setdefault((row["lti_user_id"], row["activity_key"]), row)
        if row["status"] == DeliveryStatus.SENT:
            last_sent.setdefault((row["lti_user_id"], row["activity_key"]), row)
    rows = [
        SyncRow(
            learner=name,
            cells=[
                _cell(latest.get((user_id, key)), results.get((user_id, key), []), last_sent.get((user_id, key)))
                for key in columns
            ],
        )
        for user_id, name in sorted(learners.items(), key=lambda item: item[1].lower())
    ]
    return CourseSyncGrid(activities=list(columns.items()), rows=rows, resync=course_resync_state(course=course))


def course_resync_state(*, course: Course, polled: bool = False) -> CourseResyncState:
    """The course's latest whole-course resync with its progress, and when an instructor may ask again.

    `polled`: for a page's progress poll (the same stored counters: reading them never recounts).
    """
    job = ResyncJob.objects.filter(course=course, lti_user__isnull=True, activity_key="", delivery__isnull=True).order_by("-id").first()
    last_asked = (
        ResyncJob.objects.filter(course=course, requested_by_instructor__isnull=False).order_by("-created_at").values_list("created_at", flat=True).first()
    )
    next_allowed = last_asked + resync.INSTRUCTOR_COOLDOWN if last_asked else None
    if next_allowed is not None and next_allowed <= timezone.now():
        next_allowed = None
    if job is None:
        return CourseResyncState(None, "", "", 0, 0, 0, 0, 0, False, next_allowed)
    progress = resync.progress_of(job)  # its counters are written as its grades land (resync.jobs)
    return CourseResyncState(
        job.pk, progress.status, progress.status_label, progress.percent, progress.planned, progress.sent,
        progress.refused, progress.failed, progress.active, next_allowed,
    )


def request_course_resync(*, course: Course, instructor: LtiUser) -> CourseResyncRequest:
    """An instructor resyncs their own course (the caller checked they launched from it as instructor).

    One active job per course and at most one instructor request per 10 minutes per course: a
    refusal says why and when to try again.
    """
    return resync.request_course_resync(course=course, instructor=instructor)


# --- The learner's view of one attempt's grade --------------------------------------------------


@dataclass(frozen=True)
class ResultSync:
    """Whether a finished attempt's grade reached the LMS gradebook, in words a learner understands.

    `state`: "sent", "pending", "refused", "failed", "kept" (the policy keeps another attempt, whose
    grade the LMS holds or is getting), "not_eligible" or "unknown" (not recorded by grade sync).
    """

    state: str
    message: str
    at: datetime.datetime | None = None


def result_sync_status(*, source_ref: str) -> ResultSync:
    """The sync state of the result recorded under `source_ref` (courseware's attempt reference).

    The grade the LMS gets is the one the institution's policy picks (Highest or Most Recent), so
    the newest delivery of the learner's activity in the course is read, not only this result's.
    """
    result = Result.objects.select_related("course__institution").filter(source_ref=source_ref).first()
    if result is None:
        return ResultSync("unknown", "This attempt was not recorded for grade sync.")
    if not result.is_eligible:
        reason = result.ineligible_reason or "the rules for grade sync were not met"
        return ResultSync("not_eligible", f"Not sent to your LMS gradebook: {reason}")
    deliveries = Delivery.objects.filter(
        course=result.course, lti_user=result.lti_user, activity_key=result.activity_key
    ).order_by("-id")
    newest = deliveries.values("result_id", "status", "score", "sent_at", "recorded_at", "last_message").first()
    policy = result.course.institution.get_grade_policy_display()
    if newest is None:
        return ResultSync("pending", "Your grade is being sent to your LMS gradebook.", result.recorded_at)
    state = _DELIVERY_STATES[newest["status"]]
    grade = _percent(newest["score"])
    # Another attempt's grade (the policy's pick); the same grade from an earlier attempt is this one's too.
    if newest["result_id"] != result.pk and newest["score"] != result.score and state in {"sent", "pending"}:
        where = "your LMS gradebook holds" if state == "sent" else "is being sent to your LMS gradebook:"
        return ResultSync(
            "kept", f"Your institution's grade policy ({policy}) keeps another attempt: {where} {grade}.",
            newest["sent_at"] or newest["recorded_at"],
        )
    if state == "sent":
        return ResultSync("sent", f"Sent to your LMS gradebook: {grade}.", newest["sent_at"])
    if state == "pending":
        return ResultSync("pending", f"Your grade ({grade}) is being sent to your LMS gradebook.", newest["recorded_at"])
    if state == "refused":
        return ResultSync(
            "refused", f"Your LMS refused the grade ({grade}); your instructor and support can see why. "
            f"The LMS said: {newest['last_message'] or 'no reason given'}", newest["recorded_at"],
        )
    return ResultSync("failed", f"Your grade ({grade}) could not be sent to your LMS; it is listed for support to send again.",
                      newest["recorded_at"])
