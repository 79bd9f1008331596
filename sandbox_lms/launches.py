"""OIDC login and launches: the login initiation, the tool's auth request answered with a signed
id_token, and the claims of a resource-link or deep-linking launch (custom variables substituted).
"""
from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.utils import timezone

from .models import (
    LaunchKind,
    Profile,
    SandboxCourse,
    SandboxEnrolment,
    SandboxLaunch,
    SandboxResourceLink,
    SandboxUser,
)
from .notices import offers_pns, pns_claim
from .platform import line_item_url, line_items_url, sign
from .protocol import (
    AGS_CLAIM,
    AGS_SCOPES,
    CAN_DEEP_LINK,
    DL_SETTINGS_CLAIM,
    LTI,
    NRPS_CLAIM,
    PNS_CLAIM,
    ROLE_URIS,
    Refusal,
)


LAUNCH_LIFETIME = timedelta(minutes=10)

# The course navigation entry ("Grade sync" in the course's menu, Canvas's course_navigation placement):
# one resource link per course, kept out of the course's activities and out of its copies. Its custom
# parameter is what the tool's configuration asks for that placement (tool_page=instructor_tools).
COURSE_NAVIGATION_PREFIX = "course-nav-"
COURSE_NAVIGATION_TITLE = "Grade sync"
COURSE_NAVIGATION_CUSTOM = {"tool_page": "instructor_tools"}


def course_navigation_link(*, course: SandboxCourse) -> SandboxResourceLink:
    """The course's navigation entry for the tool (made on first use)."""
    link, _created = SandboxResourceLink.objects.get_or_create(
        resource_link_id=f"{COURSE_NAVIGATION_PREFIX}{course.pk}",
        defaults={"course": course, "title": COURSE_NAVIGATION_TITLE, "custom": dict(COURSE_NAVIGATION_CUSTOM)},
    )
    return link


@dataclass(frozen=True)
class LoginInitiation:
    """Third-party login initiation: send the browser to `url` with `params` by `method`."""

    url: str
    params: dict[str, str]
    method: str = "POST"

    @property
    def get_url(self) -> str:
        return f"{self.url}{'&' if '?' in self.url else '?'}{urlencode(self.params)}"


def start_launch(
    *,
    user: SandboxUser,
    resource_link: SandboxResourceLink | None = None,
    course: SandboxCourse | None = None,
    deep_linking: bool = False,
    accept_multiple: bool = True,
    accept_lineitem: bool = True,
    method: str | None = None,
) -> LoginInitiation:
    """Start a resource-link launch (or a deep-linking request in `course`) as `user`."""
    course = course or resource_link.course
    deployment = course.deployment
    registration = deployment.registration
    if not registration.is_enabled:
        raise Refusal(f"The tool {registration.name} is pending: the LMS admin has not enabled it yet.", status=403)
    enrolment = SandboxEnrolment.objects.filter(course=course, user=user).first()
    if enrolment is None:
        raise Refusal(f"{user} is not enrolled in {course}.", status=403)
    if deep_linking and enrolment.role not in CAN_DEEP_LINK:
        raise Refusal("Only instructors add activities from the tool.", status=403)
    launch = SandboxLaunch.objects.create(
        kind=LaunchKind.DEEP_LINKING if deep_linking else LaunchKind.RESOURCE_LINK,
        user=user,
        course=course,
        deployment=deployment,
        resource_link=None if deep_linking else resource_link,
        data=secrets.token_urlsafe(16) if deep_linking else "",
        accept_multiple=accept_multiple,
        accept_lineitem=accept_lineitem,
    )
    target = (registration.deep_linking_url or registration.launch_url) if deep_linking else (
        resource_link.url or registration.launch_url
    )
    params = {
        "iss": registration.platform.issuer,
        "login_hint": user.sub,
        "target_link_uri": target,
        "lti_message_hint": str(launch.uuid),
        "client_id": registration.client_id,
        "lti_deployment_id": deployment.deployment_id,
    }
    return LoginInitiation(url=registration.login_url, params=params, method=method or registration.login_method)


@dataclass(frozen=True)
class Authorized:
    redirect_uri: str
    id_token: str
    state: str
    registration_id: int


def authorize(*, params: dict[str, str]) -> Authorized:
    """Check the tool's OIDC auth request and answer with a signed id_token for its launch."""
    for name, expected in (("scope", "openid"), ("response_type", "id_token"), ("response_mode", "form_post")):
        if params.get(name) != expected:
            raise Refusal(f"invalid_request: {name} must be {expected!r}")
    for name in ("client_id", "redirect_uri", "login_hint", "nonce", "state", "lti_message_hint"):
        if not params.get(name):
            raise Refusal(f"invalid_request: {name} is missing")
    try:
        hint = uuid.UUID(params["lti_message_hint"])
    except ValueError:
        hint = None
    launch = SandboxLaunch.objects.select_related(
        "user", "course", "deployment__registration__platform", "resource_link"
    ).filter(uuid=hint).first() if hint else None
    if launch is None:
        raise Refusal("invalid_request: lti_message_hint does not match a launch of this platform")
    registration = launch.deployment.registration
    if params["client_id"] != registration.client_id:
        raise Refusal("unauthorized_client: client_id does not match the launch")
    if params["redirect_uri"] not in registration.allowed_redirect_uris:
        raise Refusal(f"invalid_request: redirect_uri {params['redirect_uri']} is not registered")
    if params["login_hint"] != launch.user.sub:
        raise Refusal("login_required: login_hint does not match the user who launched")
    if timezone.now() - launch.created_at > LAUNCH_LIFETIME:
        raise Refusal("invalid_request: the launch has expired; launch again")
    token = sign(registration.platform, id_token_claims(launch=launch, nonce=params["nonce"]))
    return Authorized(params["redirect_uri"], token, params["state"], registration.pk)


def canvas_date(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S %z") if value else ""


def substitute(*, value: str, launch: SandboxLaunch, profile: str) -> str:
    """Resolve one custom parameter value; unknown variables stay as they are (like LMSes do)."""
    if not value.startswith("$"):
        return value
    course, link, user = launch.course, launch.resource_link, launch.user
    common = {
        "$Context.id": course.context_id,
        "$Context.title": course.title,
        "$Context.id.history": course.history,
        "$ResourceLink.id": link.resource_link_id if link else "",
        "$ResourceLink.id.history": link.history if link else "",
        "$User.id": user.sub,
        "$Person.name.full": user.name,
        "$Person.email.primary": user.email,
    }
    if profile == Profile.CANVAS:
        common.update({
            "$Canvas.course.id": str(course.pk),
            "$Canvas.course.startAt": canvas_date(course.starts_at),
            "$Canvas.course.endAt": canvas_date(course.ends_at),
            "$Canvas.course.previousCourseIds": course.previous_course_ids,
        })
    else:
        common.update({
            "$CourseSection.timeFrame.begin": course.starts_at.isoformat() if course.starts_at else "",
            "$CourseSection.timeFrame.end": course.ends_at.isoformat() if course.ends_at else "",
        })
    return common.get(value, value)


def id_token_claims(*, launch: SandboxLaunch, nonce: str) -> dict[str, Any]:
    course, user, deployment = launch.course, launch.user, launch.deployment
    registration = deployment.registration
    platform = registration.platform
    role = SandboxEnrolment.objects.get(course=course, user=user).role
    now = int(time.time())
    given, _, family = user.name.partition(" ")
    claims: dict[str, Any] = {
        "iss": platform.issuer,
        "aud": registration.client_id,
        "azp": registration.client_id,
        "sub": user.sub,
        "exp": now + 300,
        "iat": now,
        "nonce": nonce,
        "name": user.name,
        "given_name": given,
        "family_name": family,
        "email": user.email,
        LTI + "message_type": launch.kind,
        LTI + "version": "1.3.0",
        LTI + "deployment_id": deployment.deployment_id,
        LTI + "roles": ROLE_URIS[role],
        LTI + "context": {
            "id": course.context_id,
            "label": course.label,
            "title": course.title,
            "type": ["http://purl.imsglobal.org/vocab/lis/v2/course#CourseOffering"],
        },
        LTI + "tool_platform": {
            "guid": str(platform.guid),
            "name": platform.name,
            "product_family_code": registration.profile if registration.profile != Profile.GENERIC else "sandbox",
            "version": "1.0",
        },
        LTI + "launch_presentation": {
            "document_target": "iframe",
            "return_url": platform.url(f"courses/{course.pk}/return/"),
            "locale": "en",
        },
        NRPS_CLAIM: {
            "context_memberships_url": platform.url(f"api/courses/{course.pk}/memberships"),
            "service_versions": ["2.0"],
        },
    }
    ags: dict[str, Any] = {"scope": AGS_SCOPES, "lineitems": line_items_url(course, registration)}
    custom = dict(registration.custom)
    if launch.kind == LaunchKind.RESOURCE_LINK:
        link = launch.resource_link
        custom.update(link.custom)
        claims[LTI + "target_link_uri"] = link.url or registration.launch_url
        claims[LTI + "resource_link"] = {"id": link.resource_link_id, "title": link.title}
        items = list(link.line_items.all()[:2])
        if len(items) == 1:
            ags["lineitem"] = line_item_url(items[0], registration)
    else:
        claims[LTI + "target_link_uri"] = registration.deep_linking_url or registration.launch_url
        claims[DL_SETTINGS_CLAIM] = {
            "deep_link_return_url": platform.url(f"deep-linking/{launch.uuid}/return/"),
            "accept_types": ["ltiResourceLink"],
            "accept_presentation_document_targets": ["iframe", "window"],
            "accept_multiple": launch.accept_multiple,
            "accept_lineitem": launch.accept_lineitem,
            "auto_create": True,
            "data": launch.data,
        }
    claims[AGS_CLAIM] = ags
    if offers_pns(registration):
        claims[PNS_CLAIM] = pns_claim(registration)
    if custom:
        claims[LTI + "custom"] = {
            name: substitute(value=str(value), launch=launch, profile=registration.profile)
            for name, value in custom.items()
        }
    return claims
