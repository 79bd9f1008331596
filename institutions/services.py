"""Writes for tenants and onboarding. Admin views, actions and commands all call these."""
from __future__ import annotations

import datetime
from urllib.parse import unquote

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from lti_tool.models import LtiContext, LtiDeployment

from .audit import record_staff_change
from .models import (
    ContextCopyNotice,
    CopiedVia,
    Course,
    CourseDatesSource,
    DeploymentOwnership,
    GradePolicy,
    Institution,
)

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
    context_history: object = None,
) -> Course:
    """Create or update the course of an LTI context at launch.

    Dates from the LMS replace earlier LMS dates; dates set by support are kept. A date that
    does not parse is ignored, and so is a pair where the end comes before the start.
    `context_history`: the launch's `$Context.id.history` custom value; a course without lineage
    is linked to the course it was copied from (see `link_copied_course`).
    """
    starts_at = parse_lms_datetime(start_value)
    ends_at = parse_lms_datetime(end_value, end_of_day=True)
    if starts_at and ends_at and ends_at < starts_at:
        starts_at = ends_at = None
    course = Course.objects.filter(context=context).first()
    created = False
    if course is None or _course_changes(course, deployment, institution, title, starts_at, ends_at):
        # Locked only to create or change it: a launch of an unchanged course (nearly all) takes no lock on
        # it, so it never waits for a submit's foreign-key checks on the course while holding the resource
        # link django-lti just locked — the deadlock the multi-host drill found.
        course, created = Course.objects.select_for_update().get_or_create(
            context=context,
            defaults={"institution": institution, "deployment": deployment, "title": title},
        )
        fields = _course_changes(course, deployment, institution, title, starts_at, ends_at)
        if fields:
            for name, value in fields.items():
                setattr(course, name, value)
            course.save(update_fields=[*fields, "updated_at"])
    if created or not course.copied_from_id:
        link_copied_course(course=course, context_history=context_history, new=created)
    return course


def _course_changes(course: Course, deployment: LtiDeployment, institution: Institution, title: str,
                    starts_at: datetime.datetime | None, ends_at: datetime.datetime | None) -> dict[str, object]:
    """What a launch changes in its course: title, deployment, owner, LMS dates (never dates set by support)."""
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
    return fields


# --- Course copy lineage ------------------------------------------------------------------------

# The custom parameter our tool configuration maps to `$Context.id.history` (tool_configuration.py).
CONTEXT_HISTORY_PARAM = "context_id_history"
# Canvas sends up to 1000 ids; the most recent few are the ones that can name a source we know.
MAX_HISTORY_IDS = 50
MAX_HISTORY_CHARACTERS = 16 * 1024
MAX_CONTEXT_ID = 255
MAX_LINEAGE_DEPTH = 50


def history_ids(value: object) -> list[str]:
    """The context ids of a `$Context.id.history` value, most recent first (LTI Core B.3).

    Comma-separated and URL-encoded; `""` (an original course), an unresolved "$Context.id.history",
    Canvas's "truncated" marker, ids longer than an LTI id and control characters are ignored, never refused.
    """
    if not isinstance(value, str):
        return []
    text = value.strip()
    if not text or text.startswith("$"):
        return []
    parts = text[:MAX_HISTORY_CHARACTERS].split(",")
    if len(text) > MAX_HISTORY_CHARACTERS:
        parts = parts[:-1]  # cut mid-id: not an id
    ids: list[str] = []
    for part in parts:
        context_id = unquote(part.strip())
        if (
            context_id and context_id != "truncated" and len(context_id) <= MAX_CONTEXT_ID
            and context_id.isprintable() and context_id not in ids
        ):
            ids.append(context_id)
        if len(ids) >= MAX_HISTORY_IDS:
            break
    return ids


def find_source_course(*, course: Course, context_ids: list[str]) -> Course | None:
    """The course `course` was copied from: the first of `context_ids` (most recent first) that is a
    course of the same institution under the same LMS registration. Never another institution's."""
    context_ids = [c for c in context_ids if isinstance(c, str) and 0 < len(c) <= MAX_CONTEXT_ID][:MAX_HISTORY_IDS]
    if not context_ids:
        return None
    known = {}
    for candidate in (
        Course.objects.for_institution(course.institution)
        .filter(deployment__registration_id=course.deployment.registration_id, context__id_on_platform__in=context_ids)
        .exclude(pk=course.pk)
        .select_related("context")
        .order_by("-id")
    ):
        # Same id under two deployments of one registration: the copy's own deployment first.
        if candidate.context.id_on_platform not in known or candidate.deployment_id == course.deployment_id:
            known[candidate.context.id_on_platform] = candidate
    source = next((known[c] for c in context_ids if c in known), None)
    if source is not None and _descends_from(source, course):
        return None  # a forged history must not make a course its own ancestor
    return source


def _descends_from(course: Course, ancestor: Course) -> bool:
    current_id = course.copied_from_id
    for _ in range(MAX_LINEAGE_DEPTH):
        if current_id is None:
            return False
        if current_id == ancestor.pk:
            return True
        current_id = Course.objects.filter(pk=current_id).values_list("copied_from_id", flat=True).first()
    return True  # deeper than any real copy chain: treat as a loop


def _set_lineage(course: Course, source: Course, via: str) -> None:
    course.copied_from, course.copied_via = source, via
    Course.objects.filter(pk=course.pk, copied_from__isnull=True).update(copied_from=source, copied_via=via)


def link_copied_course(*, course: Course, context_history: object, new: bool = False) -> Course | None:
    """Link a course without lineage to the course it was copied from, and return that source.

    The launch's `$Context.id.history` first; for a `new` course, also a context copy notice the LMS
    sent before anyone launched in it (PNS), which is then linked to the course. Canvas's
    `$Canvas.course.previousCourseIds` are Canvas course ids, which no launch gives us as such (its
    context id is another, opaque id), so they cannot name one of our courses and are not read.
    """
    if course.copied_from_id:
        return course.copied_from
    source = find_source_course(course=course, context_ids=history_ids(context_history))
    if source is not None:
        _set_lineage(course, source, CopiedVia.CONTEXT_HISTORY)
    if not new:
        return source
    notices = ContextCopyNotice.objects.filter(
        course__isnull=True,
        deployment__registration_id=course.deployment.registration_id,
        deployment__ownership__institution=course.institution,
        context_id_on_platform=course.context.id_on_platform,
    )
    notice = notices.order_by("-received_at", "-id").first()
    if notice is None:
        return source
    notices.update(course=course)
    if source is None:
        source = find_source_course(course=course, context_ids=notice.origin_context_ids)
        if source is not None:
            _set_lineage(course, source, CopiedVia.COPY_NOTICE)
    return source


@transaction.atomic
def record_context_copy_notice(
    *, deployment: LtiDeployment, notice_id: str, context_id: str, origin_context_ids: list[str], claims: dict
) -> tuple[ContextCopyNotice, bool]:
    """Keep a verified LtiContextCopyNotice once per notice id (a repeat is no change: False).

    Linked to the new course when we know it, and that course's lineage set from the notice's origin
    when it has none. Only courses of the institution owning `deployment`, under its registration.
    """
    notice, created = ContextCopyNotice.objects.get_or_create(
        deployment=deployment,
        notice_id=notice_id,
        defaults={"context_id_on_platform": context_id, "origin_context_ids": origin_context_ids, "claims": claims},
    )
    if not created:
        return notice, False
    institution = deployment.ownership.institution
    course = (
        Course.objects.for_institution(institution)
        .filter(deployment__registration_id=deployment.registration_id, context__id_on_platform=context_id)
        .select_related("context", "deployment", "institution")
        .order_by("-id")
        .first()
    )
    if course is not None:
        notice.course = course
        notice.save(update_fields=["course"])
        if not course.copied_from_id:
            source = find_source_course(course=course, context_ids=origin_context_ids)
            if source is not None:
                _set_lineage(course, source, CopiedVia.COPY_NOTICE)
    return notice, True
