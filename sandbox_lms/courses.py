"""The LMS's own course pages: the gradebook (students × line items), a line item's grades,
and copying or moving a course as Canvas does (new ids, history variables filled).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass

from django.db import transaction

from .caches import forget_caches
from .notices import send_context_copy_notice
from .models import (
    GRADABLE_ROLES,
    SandboxCourse,
    SandboxDeployment,
    SandboxEnrolment,
    SandboxLineItem,
    SandboxResourceLink,
    SandboxResult,
    SandboxUser,
)


@dataclass
class GradebookRow:
    user: SandboxUser
    role: str
    cells: list[SandboxResult | None]


def gradebook(*, course: SandboxCourse) -> tuple[list[SandboxLineItem], list[GradebookRow]]:
    """Students × line items of a course, each cell the stored result (or None)."""
    line_items = list(course.line_items.order_by("id"))
    results = {
        (r.line_item_id, r.user_id): r for r in SandboxResult.objects.filter(line_item__course=course)
    }
    rows = []
    for enrolment in course.enrolments.select_related("user").filter(role__in=GRADABLE_ROLES).order_by("user__name"):
        rows.append(GradebookRow(
            enrolment.user, enrolment.role, [results.get((item.pk, enrolment.user_id)) for item in line_items]
        ))
    return line_items, rows


def grades(*, line_item: SandboxLineItem) -> dict[str, SandboxResult]:
    """A line item's stored results keyed by the user's `sub`."""
    return {r.user.sub: r for r in line_item.results.select_related("user")}


def copy_course(
    *, course: SandboxCourse, title: str = "", deployment: SandboxDeployment | None = None, with_enrolments: bool = True
) -> SandboxCourse:
    """Copy a course like Canvas does: new context id, new resource link ids, line items copied
    (without results), history variables filled, a context copy notice sent to a tool that asked (PNS). Unlike a real LMS the enrolments come along by
    default, so the copy can be tried at once."""
    with transaction.atomic():
        copy = SandboxCourse.objects.create(
            platform=course.platform,
            deployment=deployment or course.deployment,
            title=title or f"{course.title} (copy)",
            label=course.label,
            context_id=uuid.uuid4().hex,
            history=",".join(filter(None, [course.context_id, course.history])),
            previous_course_ids=",".join(filter(None, [str(course.pk), course.previous_course_ids])),
            starts_at=course.starts_at,
            ends_at=course.ends_at,
        )
        links = {}
        # The course navigation entry is the copy's own, made on first use (not a module item to copy).
        for link in course.resource_links.exclude(resource_link_id__startswith="course-nav-").order_by("id"):
            links[link.pk] = SandboxResourceLink.objects.create(
                course=copy, title=link.title, url=link.url, custom=link.custom,
                resource_link_id=uuid.uuid4().hex,
                history=",".join(filter(None, [link.resource_link_id, link.history])),
            )
        for item in course.line_items.order_by("id"):
            SandboxLineItem.objects.create(
                course=copy, resource_link=links.get(item.resource_link_id), label=item.label,
                score_maximum=item.score_maximum, resource_id=item.resource_id, tag=item.tag,
                allowed_attempts=item.allowed_attempts, start_date_time=item.start_date_time,
                end_date_time=item.end_date_time,
            )
        if with_enrolments:
            SandboxEnrolment.objects.bulk_create(
                SandboxEnrolment(course=copy, user_id=e.user_id, role=e.role) for e in course.enrolments.all()
            )
        # Like Canvas: the tool's context copy handler (PNS) hears of the copy once it exists, best effort.
        transaction.on_commit(lambda: send_context_copy_notice(copy=copy, source=course))
    return copy


def move_course(*, course: SandboxCourse, deployment: SandboxDeployment) -> SandboxCourse:
    """Move a course to another deployment (a Canvas sub-account)."""
    course.deployment = deployment
    course.save(update_fields=["deployment"])
    forget_caches()
    return course
