"""The grade to send for (course, user, activity): one place, for live sync and resync alike."""
from __future__ import annotations

from collections.abc import Iterable

from institutions.models import GradePolicy

from .models import Result


def pick_result(results: Iterable[Result], policy: str) -> Result | None:
    """The eligible result the policy sends: the highest score (latest on ties) or the most recent."""
    eligible = [r for r in results if r.is_eligible]
    if not eligible:
        return None
    if policy == GradePolicy.MOST_RECENT:
        return max(eligible, key=lambda r: (r.completed_at, r.pk))
    return max(eligible, key=lambda r: (r.score, r.completed_at, r.pk))


def policy_result(*, course_id: int, lti_user_id: int, activity_key: str, policy: str) -> Result | None:
    results = Result.objects.filter(
        course_id=course_id, lti_user_id=lti_user_id, activity_key=activity_key, is_eligible=True
    ).only("id", "score", "completed_at", "is_eligible", "resource_link_id", "recorded_at")
    return pick_result(results, policy)
