"""Writes for tenants and onboarding. Admin views, actions and commands all call these."""
from __future__ import annotations

import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from lti_tool.models import LtiContext, LtiDeployment

from .audit import record_staff_change
from .models import Course, CourseDatesSource, DeploymentOwnership, GradePolicy, Institution

CHANGE_GRADE_POLICY_PERMISSION = "institutions.change_grade_policy"


@transaction.atomic
def change_grade_policy(*, institution: Institution, policy: str, acting_user: AbstractBaseUser) -> bool:
    """Set the institution's grade policy. Only holders of `change_grade_policy` may.

    Returns False when the policy was already `policy` (nothing recorded).
    """
    if not acting_user.has_perm(CHANGE_GRADE_POLICY_PERMISSION):
        raise PermissionDenied("Only Support staff change the grade policy.")
    if policy not in GradePolicy.values:
        raise ValidationError(f"Unknown grade policy {policy!r}.")
    institution = Institution.objects.select_for_update().get(pk=institution.pk)
    old = institution.grade_policy
    if old == policy:
        return False
    institution.grade_policy = policy
    institution.save(update_fields=["grade_policy", "updated_at"])
    record_staff_change(
        actor=acting_user,
        action="grade_policy.changed",
        obj=institution,
        institution=institution,
        changes={"grade_policy": (GradePolicy(old).label, GradePolicy(policy).label)},
    )
    return True


@transaction.atomic
def assign_deployment(
    *, deployment: LtiDeployment, institution: Institution, activate: bool, acting_user: AbstractBaseUser
) -> DeploymentOwnership:
    """Give a deployment to an institution (at most one owner) and optionally activate it."""
    deployment = LtiDeployment.objects.select_for_update().get(pk=deployment.pk)
    ownership = DeploymentOwnership.objects.filter(deployment=deployment).select_related("institution").first()
    if ownership is not None and ownership.institution_id != institution.pk:
        raise ValidationError(
            f"Deployment {deployment.deployment_id} already belongs to {ownership.institution}. "
            "Remove that ownership first."
        )
    changes = {}
    if ownership is None:
        ownership = DeploymentOwnership.objects.create(
            deployment=deployment, institution=institution, assigned_by=acting_user
        )
        changes["institution"] = (None, str(institution))
    if activate and not deployment.is_active:
        deployment.is_active = True
        deployment.save(update_fields=["is_active", "datetime_modified"])
        changes["is_active"] = (False, True)
    if changes:
        record_staff_change(
            actor=acting_user, action="deployment.assigned", obj=deployment, institution=institution, changes=changes
        )
    return ownership


# --- Courses from launches --------------------------------------------------------------------

_LMS_DATETIME_FORMATS = [
    "%Y-%m-%d %H:%M:%S %z",  # Canvas: 2018-01-15 00:00:00 -0700
    "%Y-%m-%d %H:%M %z",
    "%Y-%m-%dT%H:%M:%S%z",
    "%Y-%m-%dT%H:%M:%S.%f%z",
]


def parse_lms_datetime(value: object, *, end_of_day: bool = False) -> datetime.datetime | None:
    """A course date as an LMS sends it in a custom parameter, or None when it is not a date.

    Accepts ISO 8601 and Canvas's "2018-01-15 00:00:00 -0700"; an unresolved substitution
    variable ("$Canvas.course.startAt"), an empty string or garbage give None, never an error.
    A date without a time means the start of that day, or its end for an end date; a time
    without a zone is taken as UTC.
    """
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text or text.startswith("$"):
        return None
    parsed: datetime.datetime | None = None
    for fmt in _LMS_DATETIME_FORMATS:
        try:
            parsed = datetime.datetime.strptime(text, fmt)
            break
        except ValueError:
            continue
    if parsed is None:
        try:
            parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
        if len(text) == 10 and end_of_day:  # a bare date
            parsed = parsed.replace(hour=23, minute=59, second=59, microsecond=999999)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    try:
        parsed.astimezone(datetime.timezone.utc)  # how it is stored: "0001-01-01T00:00+14:00" has no UTC time
    except OverflowError:
        return None
    return parsed


def upsert_course_from_launch(
    *,
    context: LtiContext,
    deployment: LtiDeployment,
    institution: Institution,
    title: str,
    start_value: object,
    end_value: object,
) -> Course:
    """Create or update the course of an LTI context at launch.

    Dates from the LMS replace earlier LMS dates; dates set by support are kept. A date that
    does not parse is ignored, and so is a pair where the end comes before the start.
    """
    starts_at = parse_lms_datetime(start_value)
    ends_at = parse_lms_datetime(end_value, end_of_day=True)
    if starts_at and ends_at and ends_at < starts_at:
        starts_at = ends_at = None
    course, created = Course.objects.select_for_update().get_or_create(
        context=context,
        defaults={"institution": institution, "deployment": deployment, "title": title},
    )
    fields: dict[str, object] = {}
    if course.title != title and title:
        fields["title"] = title
    if course.deployment_id != deployment.pk:
        fields["deployment"] = deployment
    if course.institution_id != institution.pk:
        fields["institution"] = institution
    if course.dates_source != CourseDatesSource.SUPPORT and (starts_at or ends_at):
        new_start = starts_at or course.starts_at
        new_end = ends_at or course.ends_at
        if not (new_start and new_end and new_end < new_start):
            if (new_start, new_end) != (course.starts_at, course.ends_at):
                fields.update(starts_at=new_start, ends_at=new_end)
            if course.dates_source != CourseDatesSource.LMS:
                fields["dates_source"] = CourseDatesSource.LMS
    if fields:
        for name, value in fields.items():
            setattr(course, name, value)
        course.save(update_fields=[*fields, "updated_at"])
    return course
