"""AGS line items and results, and NRPS memberships: the service endpoints other than scores,
each checking the token's scope and context before it reads or writes.
"""
from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from django.db import transaction

from .caches import TokenInfo, forget_caches
from .models import SandboxCourse, SandboxLineItem, SandboxRegistration
from .platform import _suffix, line_item_url
from .protocol import (
    ROLE_URIS,
    SCOPE_LINEITEM,
    SCOPE_LINEITEM_READONLY,
    SCOPE_NRPS,
    SCOPE_RESULT,
    _error,
    _number,
    _parse_timestamp,
)
from .tokens import check_context, check_moodle_type_id, require_scope


def line_item_json(line_item: SandboxLineItem, registration: SandboxRegistration) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": line_item_url(line_item, registration),
        "label": line_item.label,
        "scoreMaximum": line_item.score_maximum,
    }
    if line_item.resource_link_id:
        data["resourceLinkId"] = line_item.resource_link.resource_link_id
    if line_item.resource_id:
        data["resourceId"] = line_item.resource_id
    if line_item.tag:
        data["tag"] = line_item.tag
    if line_item.start_date_time:
        data["startDateTime"] = line_item.start_date_time.isoformat()
    if line_item.end_date_time:
        data["endDateTime"] = line_item.end_date_time.isoformat()
    return data


def _course_for_service(course_pk: int, info: TokenInfo, registration: SandboxRegistration) -> SandboxCourse:
    course = SandboxCourse.objects.select_related("deployment").filter(pk=course_pk).first()
    if course is None:
        raise _error(registration.profile, 404, "Course not found")
    check_context(info=info, registration=registration, course_registration_id=course.deployment.registration_id,
                  course_deployment_id=course.deployment.deployment_id)
    return course


def _line_item_for_service(pk: int, info: TokenInfo, registration: SandboxRegistration) -> SandboxLineItem:
    line_item = SandboxLineItem.objects.select_related("course__deployment", "resource_link").filter(pk=pk).first()
    if line_item is None:
        raise _error(registration.profile, 404, "Line item not found")
    deployment = line_item.course.deployment
    check_context(info=info, registration=registration, course_registration_id=deployment.registration_id,
                  course_deployment_id=deployment.deployment_id)
    return line_item


def list_line_items(
    *, course_pk: int, info: TokenInfo, registration: SandboxRegistration, query: dict[str, str]
) -> tuple[list[dict[str, Any]], str | None]:
    """The container page and the URL of the next page (None on the last)."""
    require_scope(info, SCOPE_LINEITEM, SCOPE_LINEITEM_READONLY)
    check_moodle_type_id(registration, query)
    course = _course_for_service(course_pk, info, registration)
    items = course.line_items.select_related("resource_link")
    if query.get("resource_link_id"):
        items = items.filter(resource_link__resource_link_id=query["resource_link_id"])
    if query.get("resource_id"):
        items = items.filter(resource_id=query["resource_id"])
    if query.get("tag"):
        items = items.filter(tag=query["tag"])
    try:
        limit = max(1, min(int(query.get("limit", 100)), 1000))
        page = max(1, int(query.get("page", 1)))
    except ValueError as error:
        raise _error(registration.profile, 400, "limit and page must be integers") from error
    rows = list(items[(page - 1) * limit: page * limit + 1])
    next_url = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_query = {**query, "limit": str(limit), "page": str(page + 1)}
        next_url = registration.platform.url(f"api/courses/{course.pk}/lineitems") + "?" + urlencode(next_query)
    return [line_item_json(item, registration) for item in rows], next_url


def _line_item_fields(data: Any, registration: SandboxRegistration) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise _error(registration.profile, 400, "The body must be a JSON object")
    label = data.get("label")
    if not isinstance(label, str) or not label.strip():
        raise _error(registration.profile, 400, "label must not be blank")
    maximum = _number(data.get("scoreMaximum"))
    if maximum is None or maximum <= 0:
        raise _error(registration.profile, 400, "scoreMaximum must be a number greater than 0")
    fields: dict[str, Any] = {
        "label": label, "score_maximum": maximum,
        "resource_id": str(data.get("resourceId") or ""), "tag": str(data.get("tag") or ""),
    }
    for source, target in (("startDateTime", "start_date_time"), ("endDateTime", "end_date_time")):
        if data.get(source):
            fields[target] = _parse_timestamp(data[source])
    return fields


def create_line_item_from_service(
    *, course_pk: int, info: TokenInfo, registration: SandboxRegistration, body: bytes, query: dict[str, str]
) -> dict[str, Any]:
    require_scope(info, SCOPE_LINEITEM)
    check_moodle_type_id(registration, query)
    course = _course_for_service(course_pk, info, registration)
    try:
        data = json.loads(body)
    except ValueError as error:
        raise _error(registration.profile, 400, "The body is not JSON") from error
    fields = _line_item_fields(data, registration)
    link = None
    if data.get("resourceLinkId"):
        link = course.resource_links.filter(resource_link_id=data["resourceLinkId"]).first()
        if link is None:
            raise _error(registration.profile, 404, "resourceLinkId is not a link of this tool in this course")
    line_item = SandboxLineItem.objects.create(course=course, resource_link=link, **fields)
    return line_item_json(line_item, registration)


def get_line_item(*, pk: int, info: TokenInfo, registration: SandboxRegistration, query: dict[str, str]) -> dict[str, Any]:
    require_scope(info, SCOPE_LINEITEM, SCOPE_LINEITEM_READONLY)
    check_moodle_type_id(registration, query)
    return line_item_json(_line_item_for_service(pk, info, registration), registration)


def update_line_item(
    *, pk: int, info: TokenInfo, registration: SandboxRegistration, body: bytes, query: dict[str, str]
) -> dict[str, Any]:
    """PUT replaces the definition; a new scoreMaximum rescales the stored results."""
    require_scope(info, SCOPE_LINEITEM)
    check_moodle_type_id(registration, query)
    line_item = _line_item_for_service(pk, info, registration)
    try:
        data = json.loads(body)
    except ValueError as error:
        raise _error(registration.profile, 400, "The body is not JSON") from error
    fields = _line_item_fields(data, registration)
    with transaction.atomic():
        old_maximum = line_item.score_maximum
        for name, value in fields.items():
            setattr(line_item, name, value)
        line_item.save()
        if fields["score_maximum"] != old_maximum:
            for result in line_item.results.exclude(score_given=None):
                result.result = result.score_given * line_item.score_maximum / result.score_maximum
                result.save(update_fields=["result"])
    forget_caches()
    return line_item_json(line_item, registration)


def delete_line_item(*, pk: int, info: TokenInfo, registration: SandboxRegistration, query: dict[str, str]) -> None:
    require_scope(info, SCOPE_LINEITEM)
    check_moodle_type_id(registration, query)
    _line_item_for_service(pk, info, registration).delete()
    forget_caches()


def list_results(*, pk: int, info: TokenInfo, registration: SandboxRegistration, query: dict[str, str]) -> list[dict[str, Any]]:
    require_scope(info, SCOPE_RESULT)
    check_moodle_type_id(registration, query)
    line_item = _line_item_for_service(pk, info, registration)
    results = line_item.results.select_related("user").exclude(result=None).order_by("user_id")
    if query.get("user_id"):
        results = results.filter(user__sub=query["user_id"])
    url = line_item_url(line_item, registration)
    answer = []
    for result in results:
        row = {
            "id": _suffix(url, f"/results/{result.user_id}"),
            "scoreOf": url,
            "userId": result.user.sub,
            "resultScore": result.result,
            "resultMaximum": line_item.score_maximum,
        }
        if result.comment:
            row["comment"] = result.comment
        answer.append(row)
    return answer


def list_memberships(*, course_pk: int, info: TokenInfo, registration: SandboxRegistration) -> dict[str, Any]:
    require_scope(info, SCOPE_NRPS)
    course = _course_for_service(course_pk, info, registration)
    return {
        "id": registration.platform.url(f"api/courses/{course.pk}/memberships"),
        "context": {"id": course.context_id, "label": course.label, "title": course.title},
        "members": [
            {"status": "Active", "name": e.user.name, "email": e.user.email, "user_id": e.user.sub, "roles": ROLE_URIS[e.role]}
            for e in course.enrolments.select_related("user").order_by("id")
        ],
    }
