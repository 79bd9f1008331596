"""Line items: which of a course's LMS line items (gradebook columns) a grade goes to — the one
bound to the launched link, else the activity's — and finding one on the LMS when none is known.
"""
from __future__ import annotations

from typing import Callable

from django.db.models import Q
from lti_tool.models import LtiLineItem, LtiResourceLink

from institutions.models import Course

from . import ags
from .models import Delivery, SyncWarning


def line_item_candidates(course: Course, activity_key: str, resource_link: LtiResourceLink | None) -> list[LtiLineItem]:
    # Without a link, only the activity id can match (not every line item that has no link).
    matches = Q(resource_id=activity_key) | Q(resource_link=resource_link) if resource_link else Q(resource_id=activity_key)
    return list(LtiLineItem.objects.filter(context_id=course.context_id).filter(matches).order_by("-id"))


def bound_to_link(candidates: list[LtiLineItem], resource_link: LtiResourceLink | None) -> LtiLineItem | None:
    if resource_link is None:
        return None
    return next((c for c in candidates if c.resource_link_id == resource_link.pk), None)


def line_item_for(course: Course, activity_key: str, resource_link: LtiResourceLink | None,
                   candidates: list[LtiLineItem] | None = None) -> LtiLineItem | None:
    """The line item to deliver to; warns support when one activity has several in a course."""
    if candidates is None:
        candidates = line_item_candidates(course, activity_key, resource_link)
    if len({c.url for c in candidates}) > 1:
        SyncWarning.objects.update_or_create(
            course=course,
            activity_key=activity_key,
            kind="duplicate_line_items",
            defaults={
                "message": f"{len(candidates)} LMS line items in this course point at one activity: "
                + ", ".join(c.label for c in candidates)
                + ". Grades go to the one bound to the launched link; remove the extra column in the LMS."
            },
        )
    return bound_to_link(candidates, resource_link) or (candidates or [None])[0]



def resolve_line_item(delivery: Delivery, token_for: Callable[[tuple[str, ...]], str]) -> LtiLineItem | None:
    """Find the line item on the LMS by resource_link_id, resource_id, then tag. Never creates one."""
    context = delivery.course.context
    if not context.lineitems_url:
        return None
    token = token_for((ags.LINEITEM_READ_SCOPE,))
    link_id = delivery.resource_link.id_on_platform if delivery.resource_link else ""
    for filters in ({"resource_link_id": link_id}, {"resource_id": delivery.activity_key}):
        if not next(iter(filters.values())):
            continue
        items = ags.find_line_items(lineitems_url=context.lineitems_url, token=token, **filters)
        if items:
            item = items[0]
            line_item, _ = LtiLineItem.objects.update_or_create(
                url=item["id"],
                defaults={
                    "context": context,
                    "resource_link": delivery.resource_link if filters.get("resource_link_id") else None,
                    "label": (item.get("label") or delivery.result.activity_title or "Activity")[:255],
                    "maximum_score": float(item.get("scoreMaximum") or 1),
                    "resource_id": item.get("resourceId") or "",
                    "tag": item.get("tag") or "",
                },
            )
            return line_item
    return None
