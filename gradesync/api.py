"""The door into grade sync. Other apps call only what is here.

`record_result` is called by courseware when an attempt is scored, inside the attempt's
transaction, so the result and its delivery row commit together or not at all.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from decimal import Decimal

from lti_tool.models import LtiDeployment, LtiLineItem, LtiResourceLink, LtiUser

from institutions.models import Course

from . import services
from .models import Result


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
    return services.record_result(
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
