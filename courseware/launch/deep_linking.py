"""The deep-linking response: the activities an instructor picked, as a signed JWT for the LMS.

Besides catalog activities, the instructor may place the instructor's tools (grade sync, attempts
allowed): always an ungraded link (no `lineItem`, so no LMS makes a gradebook column for it), told
apart at launch by its custom parameter, and no Placement (it is no activity).

Built here rather than by pylti1p3, which writes `"data": null` and other nulls that
certification suites flag. Optional fields are left out, never null.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import jwt
from django.conf import settings as django_settings
from django.db import transaction
from lti_tool.models import LtiRegistration

from institutions.keys import tool_signing_key
from institutions.tool_configuration import INSTRUCTOR_TOOLS_PAGE, TOOL_PAGE_PARAM

from ..models import Activity, ActivityKind, Launch, Placement
from .services import ACTIVITY_PARAM, PLACEMENT_PARAM

LINE_ITEM_TAG = "courseware"
INSTRUCTOR_TOOLS_TITLE = "Instructor tools"
INSTRUCTOR_TOOLS_TEXT = "For the course's instructors: grade sync and attempts allowed. Not graded; students cannot open it."
RESPONSE_LIFETIME_SECONDS = 600


class PickRefused(Exception):
    """The instructor's choice cannot be returned to this LMS; the message says why."""


@dataclass(frozen=True)
class PickedItem:
    activity: Activity
    graded: bool
    points: Decimal | None


def pick_errors(
    settings: dict[str, Any], picks: list[PickedItem], *, instructor_tools: bool = False
) -> list[tuple[int | None, str]]:
    """Everything the deep-linking request does not allow, each as (activity id or None, a reason an
    instructor can act on), so the picker shows every problem at once."""
    errors: list[tuple[int | None, str]] = []
    accept_types = settings.get("accept_types") or []
    count = len(picks) + int(instructor_tools)
    if count and "ltiResourceLink" not in accept_types:
        errors.append((None, "This LMS placement does not accept activity links (ltiResourceLink)."))
    if count > 1 and settings.get("accept_multiple") is False:
        errors.append((None, "This LMS placement accepts one activity at a time: choose only one (the instructor tools count as one)."))
    if any(pick.graded for pick in picks) and settings.get("accept_lineitem") is False:
        errors.append((None, "This LMS placement does not accept graded items (line items): add them ungraded."))
    for pick in picks:
        if pick.graded and pick.activity.kind == ActivityKind.SECTION_HEADER:
            errors.append((pick.activity.pk, f"“{pick.activity.title}” is a section header: it can only be added ungraded."))
        elif pick.graded and (pick.points is None or not pick.points.is_finite() or pick.points <= 0):
            errors.append((pick.activity.pk, f"Points for “{pick.activity.title}” must be greater than 0."))
    return errors


def validate_picks(settings: dict[str, Any], picks: list[PickedItem], *, instructor_tools: bool = False) -> None:
    """Refuse what the deep-linking request does not allow, with a reason an instructor can act on (the first)."""
    errors = pick_errors(settings, picks, instructor_tools=instructor_tools)
    if errors:
        raise PickRefused(errors[0][1])


def content_item(*, pick: PickedItem, placement: Placement, launch_url: str) -> dict[str, Any]:
    item: dict[str, Any] = {
        "type": "ltiResourceLink",
        "title": pick.activity.title,
        "url": launch_url,
        "custom": {ACTIVITY_PARAM: str(pick.activity.pk), PLACEMENT_PARAM: str(placement.pk)},
    }
    if pick.activity.summary:
        item["text"] = pick.activity.summary
    if pick.graded:
        item["lineItem"] = {
            "scoreMaximum": float(pick.points),
            "label": pick.activity.title,
            "resourceId": str(pick.activity.pk),
            "tag": LINE_ITEM_TAG,
        }
    return item


def instructor_tools_item(*, launch_url: str) -> dict[str, Any]:
    """The instructor's tools as a content item: never a `lineItem` (an LMS would make it a gradebook column)."""
    return {
        "type": "ltiResourceLink",
        "title": f"{INSTRUCTOR_TOOLS_TITLE} — {django_settings.TOOL_TITLE}",
        "url": launch_url,
        "text": INSTRUCTOR_TOOLS_TEXT,
        "custom": {TOOL_PAGE_PARAM: INSTRUCTOR_TOOLS_PAGE},
    }


def _returned_message(picks: list[PickedItem], instructor_tools: bool) -> str:
    parts = ["the instructor tools"] if instructor_tools else []
    if picks:
        parts.append(f"{len(picks)} activit{'y' if len(picks) == 1 else 'ies'}")
    return f"Added {' and '.join(parts)}." if parts else ""


@transaction.atomic
def deep_linking_response(
    *,
    launch: Launch,
    registration: LtiRegistration,
    picks: list[PickedItem],
    launch_url: str,
    instructor_tools: bool = False,
) -> str:
    """Record the placements and return the signed LtiDeepLinkingResponse JWT (the instructor tools first, if chosen)."""
    settings = launch.deep_linking_settings
    validate_picks(settings, picks, instructor_tools=instructor_tools)
    items = [instructor_tools_item(launch_url=launch_url)] if instructor_tools else []
    for pick in picks:
        placement = Placement.objects.create(
            course=launch.course,
            activity=pick.activity,
            deployment=launch.deployment,
            graded=pick.graded,
            score_maximum=pick.points if pick.graded else None,
            placed_by=launch.lti_user,
        )
        items.append(content_item(pick=pick, placement=placement, launch_url=launch_url))
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": registration.client_id,
        "aud": registration.issuer,
        "iat": now,
        "exp": now + RESPONSE_LIFETIME_SECONDS,
        "nonce": uuid.uuid4().hex,
        "https://purl.imsglobal.org/spec/lti/claim/deployment_id": launch.deployment.deployment_id,
        "https://purl.imsglobal.org/spec/lti/claim/message_type": "LtiDeepLinkingResponse",
        "https://purl.imsglobal.org/spec/lti/claim/version": "1.3.0",
        "https://purl.imsglobal.org/spec/lti-dl/claim/content_items": items,
    }
    if "data" in settings and settings["data"] is not None:
        claims["https://purl.imsglobal.org/spec/lti-dl/claim/data"] = settings["data"]
    message = _returned_message(picks, instructor_tools)
    if message:
        claims["https://purl.imsglobal.org/spec/lti-dl/claim/msg"] = message
    private_key, kid = tool_signing_key(registration)
    return jwt.encode(claims, private_key, algorithm="RS256", headers={"kid": kid})
