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



# The tag our deep-linking responses put on every line item they create (courseware's
# deep_linking.LINE_ITEM_TAG; grade sync cannot import courseware). The LMS keeps it in a course copy.
COURSEWARE_TAG = "courseware"
LINE_ITEM_URL_MAX = 200  # django-lti's LtiLineItem.url


def _matching(items: list[dict], filters: dict[str, str], activity_key: str) -> dict | None:
    """The one line item of a query that is the activity's. By link or resource id the LMS filtered
    already; our tag is on every activity's line item, so it binds only a single item that names no
    other activity. Never a guess among several."""
    items = [
        item for item in items
        if isinstance(item, dict) and isinstance(item.get("id"), str) and 0 < len(item["id"]) <= LINE_ITEM_URL_MAX
    ]
    if "tag" not in filters:
        return items[0] if items else None
    ours = [item for item in items if (item.get("resourceId") or "") in ("", activity_key)]
    return ours[0] if len(ours) == 1 else None


def resolve_line_item(delivery: Delivery, token_for: Callable[[tuple[str, ...]], str]) -> LtiLineItem | None:
    """Find the line item on the LMS by resource_link_id, resource_id, then tag. Never creates one.

    Only the delivery's course's line items container is asked: in a copied course that is the
    copy's own, so a grade never goes to the source course's column nor to a new one (AGS §3.2.15).
    """
    context = delivery.course.context
    if not context.lineitems_url:
        return None
    token = token_for((ags.LINEITEM_READ_SCOPE,))
    link_id = delivery.resource_link.id_on_platform if delivery.resource_link else ""
    for filters in ({"resource_link_id": link_id}, {"resource_id": delivery.activity_key}, {"tag": COURSEWARE_TAG}):
        if not next(iter(filters.values())):
            continue
        item = _matching(
            ags.find_line_items(lineitems_url=context.lineitems_url, token=token, **filters), filters, delivery.activity_key
        )
        if item is not None:
            line_item, _ = LtiLineItem.objects.update_or_create(
                url=item["id"],
                defaults={
                    "context": context,
                    "resource_link": delivery.resource_link if filters.get("resource_link_id") else None,
                    "label": str(item.get("label") or delivery.result.activity_title or "Activity")[:255],
                    "maximum_score": _score_maximum(item.get("scoreMaximum")),
                    # Bound by our tag alone, it is this activity's: remembered so the next grade needs no lookup.
                    "resource_id": str(item.get("resourceId") or (delivery.activity_key if "tag" in filters else ""))[:255],
                    "tag": str(item.get("tag") or "")[:255],
                },
            )
            return line_item
    return None


def _score_maximum(value: object) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 1.0
    return number if number > 0 and number != float("inf") else 1.0
