"""Who gets a grade synced: each rule named, with the fact behind it in words support can read."""
from __future__ import annotations

from dataclasses import dataclass

from lti_tool.models import LtiLineItem

from institutions.models import Course

from .models import Result

LEARNER = "learner"
ROLE_WORDS = {
    "learner": "Learner (student)",
    "instructor": "Instructor",
    "test_user": "Student view (test user)",
    "other": "No course role",
    "": "No LTI launch (direct login)",
}


@dataclass(frozen=True)
class RuleCheck:
    rule: str
    title: str
    passed: bool
    fact: str


def _fmt(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S %Z") if value else "not set"


def bound_line_item(result: Result) -> LtiLineItem | None:
    if result.resource_link_id is None:
        return None
    return LtiLineItem.objects.filter(resource_link_id=result.resource_link_id).order_by("-id").first()


def check_result(result: Result, *, course: Course | None = None, line_item: LtiLineItem | None = None) -> list[RuleCheck]:
    """Every eligibility rule for one result, passed or not, in the order support reads them."""
    course = course or result.course
    role = result.launch_role
    checks = [
        RuleCheck(
            "learner",
            "Learner in the course",
            role == LEARNER,
            f"Role at launch: {ROLE_WORDS.get(role, role)}.",
        )
    ]
    launched = result.launched_course
    checks.append(
        RuleCheck(
            "launched_from_course",
            "Launched from this course",
            result.launched_course_id == course.pk,
            "Launched from this course."
            if result.launched_course_id == course.pk
            else (f"Launched from another course: {launched}." if launched else "No launch from any course."),
        )
    )
    within = (course.starts_at is None or result.completed_at >= course.starts_at) and (
        course.ends_at is None or result.completed_at <= course.ends_at
    )
    checks.append(
        RuleCheck(
            "within_course_dates",
            "Completed within the course dates",
            within,
            f"Completed {_fmt(result.completed_at)}; course runs {_fmt(course.starts_at)} to {_fmt(course.ends_at)}.",
        )
    )
    if line_item is None:
        line_item = bound_line_item(result)
    graded = result.link_graded if result.link_graded is not None else line_item is not None
    checks.append(
        RuleCheck(
            "graded_link",
            "The link is graded",
            bool(graded),
            "Graded link." if graded else "The link was added ungraded (no line item in the LMS).",
        )
    )
    lookup_possible = bool(course.context.lineitems_url)
    checks.append(
        RuleCheck(
            "line_item_bound",
            "Bound to an LMS line item",
            line_item is not None or (bool(graded) and lookup_possible),
            f"Line item {line_item.url}." if line_item is not None
            else ("Not bound yet; it will be looked up in the LMS's line items." if lookup_possible
                  else "No line item and the LMS gave no line items service for this course."),
        )
    )
    deployment = course.deployment
    ownership = getattr(deployment, "ownership", None)
    accepts = deployment.is_active and ownership is not None and ownership.institution.is_active
    if not deployment.is_active:
        fact = f"Deployment {deployment.deployment_id} is inactive."
    elif ownership is None:
        fact = f"Deployment {deployment.deployment_id} belongs to no institution."
    elif not ownership.institution.is_active:
        fact = f"{ownership.institution} does not accept grades (inactive)."
    else:
        fact = f"Deployment {deployment.deployment_id} of {ownership.institution} is active."
    checks.append(RuleCheck("deployment_accepts", "Deployment active and owned by an active institution", accepts, fact))
    return checks


def first_failure(checks: list[RuleCheck]) -> RuleCheck | None:
    return next((check for check in checks if not check.passed), None)
