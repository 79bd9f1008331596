"""The ledger: a finished attempt's result, with its eligibility verdict, and the outbox row of the
grade the institution's policy picks — written in the caller's transaction, its senders woken after commit.
"""
from __future__ import annotations

import datetime
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone
from lti_tool.models import LtiLineItem, LtiResourceLink, LtiUser

from institutions.models import Course

from . import line_items, wakeups
from .eligibility import check_result, first_failure
from .models import OPEN_STATUSES, Delivery, DeliveryStatus, Result
from .policy import policy_result


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
    candidates = line_items.line_item_candidates(course, activity_key, resource_link)
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
    bound = line_items.bound_to_link(candidates, resource_link)
    failure = first_failure(check_result(result, course=course, line_item=bound))
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
    """Write (or update) the open delivery of the policy's grade; its LMS's senders are woken after commit.

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
    line_item = line_items.line_item_for(course, activity_key, link, candidates)
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
        wakeups.wake_after_commit(open_row.pk, open_row.registration_id, resync=resync)
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
    wakeups.wake_after_commit(delivery.pk, delivery.registration_id, resync=resync)
    return delivery


def _status_after_new_grade(status: str) -> str:
    # A row in flight keeps SENDING: the sender sees the new version and sends again.
    return status if status == DeliveryStatus.SENDING else DeliveryStatus.PENDING
