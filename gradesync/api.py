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

from institutions.models import Course

from . import ledger, notice_handlers, queue, resync
from .models import Delivery, DeliveryStatus, ResyncJob, Result
from .resync import CourseResyncRequest

__all__ = ["LaunchFacts", "NO_LAUNCH", "record_result", "record_launch_endpoints", "course_sync_grid",
           "request_course_resync", "course_resync_state", "CourseSyncGrid", "CourseResyncRequest",
           "register_for_copy_notices"]


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
    line_item, _created = LtiLineItem.objects.update_or_create(
        url=url,
        defaults={
            "context_id": resource_link.context_id,
            "resource_link": resource_link,
            "label": (label or resource_link.title or "Activity")[:255],
            "maximum_score": float(score_maximum) if score_maximum else 1.0,
            "resource_id": resource_id,
        },
    )
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
    """One learner's grade for one activity: "sent", "pending", "refused", "failed", "not_synced" or "none"."""

    state: str
    label: str
    reason: str = ""


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


def _cell(delivery: dict | None, results: list[dict]) -> SyncCell:
    if delivery is not None:
        state = _DELIVERY_STATES[delivery["status"]]
        percent = f"{float(delivery['score']) * 100:.0f}%"
        if state == "sent":
            return SyncCell(state, f"Sent {percent}")
        if state == "pending":
            waiting = delivery["status"] == DeliveryStatus.RETRYING and delivery["last_message"]
            return SyncCell(state, f"Pending {percent}", delivery["last_message"] if waiting else "")
        label = "Refused by the LMS" if state == "refused" else "Failed"
        return SyncCell(state, f"{label} ({percent})", delivery["last_message"])
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
    for row in Delivery.objects.filter(course=course).order_by("-id").values(
        "lti_user_id", "activity_key", "status", "score", "last_message"
    ):
        latest.setdefault((row["lti_user_id"], row["activity_key"]), row)
    rows = [
        SyncRow(
            learner=name,
            cells=[_cell(latest.get((user_id, key)), results.get((user_id, key), [])) for key in columns],
        )
        for user_id, name in sorted(learners.items(), key=lambda item: item[1].lower())
    ]
    return CourseSyncGrid(activities=list(columns.items()), rows=rows, resync=course_resync_state(course=course))


def course_resync_state(*, course: Course, polled: bool = False) -> CourseResyncState:
    """The course's latest whole-course resync with its progress, and when an instructor may ask again.

    `polled`: for a page's progress poll, recounted at most every few seconds (resync.polled_progress).
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
    progress = resync.polled_progress(job) if polled else resync.refresh_progress(job)
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
