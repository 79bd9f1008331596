"""Deep linking: the tool's LtiDeepLinkingResponse checked (signature, claims, nonce, items) and
its resource links and line items added to the course.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from django.db import transaction

from .models import LaunchKind, SandboxCourse, SandboxLaunch, SandboxLineItem, SandboxResourceLink
from .platform import add_resource_link, create_line_item, tool_public_key
from .protocol import DL_CONTENT_ITEMS, DL_DATA, DL_ERRORMSG, DL_MSG, LTI, Refusal


def _nulls(value: Any, path: str = "") -> list[str]:
    if value is None:
        return [path or "(root)"]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _nulls(v, f"{path}.{k}" if path else k)]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _nulls(v, f"{path}[{i}]")]
    return []


@dataclass
class DeepLinkingOutcome:
    course: SandboxCourse
    links: list[SandboxResourceLink] = field(default_factory=list)
    line_items: list[SandboxLineItem] = field(default_factory=list)
    message: str = ""


def accept_deep_linking_response(*, launch_uuid: uuid.UUID | str, token: str) -> DeepLinkingOutcome:
    """Check the tool's LtiDeepLinkingResponse and create its resource links and line items."""
    try:
        launch = SandboxLaunch.objects.select_related("course", "deployment__registration__platform").get(
            uuid=launch_uuid, kind=LaunchKind.DEEP_LINKING
        )
    except SandboxLaunch.DoesNotExist as error:
        raise Refusal("No deep-linking request matches this return URL", status=404) from error
    registration = launch.deployment.registration
    if not token:
        raise Refusal("The response has no JWT field")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as error:
        raise Refusal(f"The JWT cannot be read: {error}") from error
    key = tool_public_key(registration, header.get("kid"))
    try:
        claims = jwt.decode(
            token, key, algorithms=["RS256"], audience=registration.platform.issuer,
            options={"require": ["exp", "iat", "iss", "aud"]}, leeway=5,
        )
    except jwt.PyJWTError as error:
        raise Refusal(f"The JWT is not valid: {error}") from error
    if claims.get("iss") != registration.client_id:
        raise Refusal(f"iss {claims.get('iss')!r} is not the tool's client_id {registration.client_id!r}")
    if not claims.get("nonce"):
        raise Refusal("nonce is missing")
    if claims.get(LTI + "message_type") != "LtiDeepLinkingResponse":
        raise Refusal("message_type must be LtiDeepLinkingResponse")
    if claims.get(LTI + "version") != "1.3.0":
        raise Refusal("version must be 1.3.0")
    if claims.get(LTI + "deployment_id") != launch.deployment.deployment_id:
        raise Refusal(f"deployment_id {claims.get(LTI + 'deployment_id')!r} does not match the request's")
    if launch.data and claims.get(DL_DATA) != launch.data:
        raise Refusal("data was not echoed exactly")
    nulls = _nulls(claims)
    if nulls:
        raise Refusal("null fields are not allowed (leave them out): " + ", ".join(nulls))
    if claims.get(DL_ERRORMSG):
        raise Refusal(f"The tool reported an error: {claims[DL_ERRORMSG]}")
    items = claims.get(DL_CONTENT_ITEMS, [])
    if not isinstance(items, list):
        raise Refusal("content_items must be a list")
    if len(items) > 1 and not launch.accept_multiple:
        raise Refusal("accept_multiple was false but several items came back")
    for item in items:
        if item.get("type") != "ltiResourceLink":
            raise Refusal(f"Unsupported content item type {item.get('type')!r}")
        line_item = item.get("lineItem")
        if line_item is not None and launch.accept_lineitem:
            maximum = line_item.get("scoreMaximum")
            if not isinstance(maximum, (int, float)) or isinstance(maximum, bool) or maximum <= 0:
                raise Refusal("lineItem.scoreMaximum must be a number greater than 0")
        custom = item.get("custom", {})
        if any(not isinstance(v, str) for v in custom.values()):
            raise Refusal("custom parameter values must be strings")
    with transaction.atomic():
        updated = SandboxLaunch.objects.filter(pk=launch.pk, response_nonce="").update(response_nonce=claims["nonce"])
        if not updated:
            raise Refusal("This deep-linking request was already answered (nonce replay)")
        outcome = DeepLinkingOutcome(course=launch.course, message=claims.get(DL_MSG, ""))
        for item in items:
            link = add_resource_link(
                course=launch.course, title=item.get("title") or "Untitled activity", url=item.get("url", ""),
                custom=item.get("custom", {}),
            )
            outcome.links.append(link)
            line_item = item.get("lineItem")
            if line_item is not None and launch.accept_lineitem:
                outcome.line_items.append(create_line_item(
                    course=launch.course, resource_link=link,
                    label=line_item.get("label") or link.title, score_maximum=float(line_item["scoreMaximum"]),
                    resource_id=line_item.get("resourceId", ""), tag=line_item.get("tag", ""),
                ))
    return outcome
