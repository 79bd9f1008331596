"""Registering a tool the Canvas way: a developer key made from the tool's JSON (pasted, or fetched from
the URL the tool publishes), then installed (a deployment), then used in a course.

Canvas's "LTI Key → Enter URL" fetches the JSON once when the key is saved; the key's number is the
client id and the installation's id is the deployment id — both shown to the admin, who gives them to the tool.
"""
from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import requests
from django.db import transaction

from .models import Profile, Role, SandboxCourse, SandboxDeployment, SandboxEnrolment, SandboxPlatform, SandboxRegistration
from .platform import add_deployment, create_course, create_user, enrol, register_tool
from .protocol import SUPPORTED_SCOPES

MAX_JSON_BYTES = 256 * 1024
FETCH_TIMEOUT_SECONDS = 10
DL_REQUEST = "LtiDeepLinkingRequest"


class DeveloperKeyRefused(Exception):
    """The tool's JSON cannot make a developer key; the message says what to fix."""


def fetch_tool_json(url: str) -> dict[str, Any]:
    """GET the tool's configuration JSON, bounded in size and time."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise DeveloperKeyRefused("The JSON URL must be an http(s) address.")
    try:
        with requests.get(url, timeout=FETCH_TIMEOUT_SECONDS, stream=True, headers={"Accept": "application/json"}) as response:
            if response.status_code != 200:
                raise DeveloperKeyRefused(f"The JSON URL answered {response.status_code} {response.reason}.")
            body = response.raw.read(MAX_JSON_BYTES + 1, decode_content=True)
    except requests.RequestException as error:
        raise DeveloperKeyRefused(f"The JSON URL could not be fetched: {error.__class__.__name__}.") from None
    if len(body) > MAX_JSON_BYTES:
        raise DeveloperKeyRefused("The JSON is larger than 256 KB.")
    return parse_tool_json(body)


def parse_tool_json(body: bytes | str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise DeveloperKeyRefused("This is not JSON.") from None
    if not isinstance(data, dict):
        raise DeveloperKeyRefused("The JSON must be an object with the tool's settings.")
    return data


def _url(data: dict[str, Any], name: str, *, required: bool = True) -> str:
    value = data.get(name, "")
    if not value and not required:
        return ""
    if not isinstance(value, str) or len(value) > 500 or urlsplit(value).scheme not in ("http", "https"):
        raise DeveloperKeyRefused(f"“{name}” must be an http(s) URL.")
    return value


def _placements(data: dict[str, Any]) -> list[dict[str, Any]]:
    extensions = data.get("extensions") or []
    if not isinstance(extensions, list):
        raise DeveloperKeyRefused("“extensions” must be a list.")
    placements = []
    for extension in extensions:
        settings = extension.get("settings") if isinstance(extension, dict) else None
        found = settings.get("placements") if isinstance(settings, dict) else None
        if isinstance(found, list):
            placements += [p for p in found if isinstance(p, dict)]
    return placements


@transaction.atomic
def create_developer_key(*, platform: SandboxPlatform, data: dict[str, Any]) -> SandboxRegistration:
    """A Canvas-like registration (profile canvas) from the tool's JSON; its client id is the key's number."""
    title = data.get("title")
    if not isinstance(title, str) or not title.strip() or len(title) > 200:
        raise DeveloperKeyRefused("“title” must be a short text naming the tool.")
    login_url = _url(data, "oidc_initiation_url")
    launch_url = _url(data, "target_link_uri")
    jwks_url = _url(data, "public_jwk_url", required=False)
    if not jwks_url and not isinstance(data.get("public_jwk"), dict):
        raise DeveloperKeyRefused("Give the tool's keys: “public_jwk_url” (or “public_jwk”).")
    scopes = data.get("scopes") or []
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise DeveloperKeyRefused("“scopes” must be a list of scope URLs.")
    custom = data.get("custom_fields") or {}
    if not isinstance(custom, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in custom.items()):
        raise DeveloperKeyRefused("“custom_fields” must map names to text values.")
    deep_linking_url = next(
        (p.get("target_link_uri") for p in _placements(data) if p.get("message_type") == DL_REQUEST and p.get("target_link_uri")),
        "",
    )
    registration = register_tool(
        platform=platform,
        name=title.strip(),
        login_url=login_url,
        launch_url=launch_url,
        jwks_url=jwks_url,
        deep_linking_url=deep_linking_url if isinstance(deep_linking_url, str) else "",
        profile=Profile.CANVAS,
        custom=custom,
        tool_public_jwks={"keys": [data["public_jwk"]]} if not jwks_url else None,
    )
    registration.scopes = [s for s in scopes if s in SUPPORTED_SCOPES]
    registration.tool_configuration = data
    registration.save(update_fields=["scopes", "tool_configuration"])
    return registration


def install(*, registration: SandboxRegistration, name: str = "Root account") -> SandboxDeployment:
    """Canvas's "+ App → By Client ID": an installation, whose id is the deployment id."""
    return add_deployment(registration=registration, name=name)


@transaction.atomic
def course_for_tool(*, deployment: SandboxDeployment, title: str) -> SandboxCourse:
    """A new course where this installation is available, with the platform's people enrolled as in its first course."""
    platform = deployment.registration.platform
    course = create_course(deployment=deployment, title=title)
    model = SandboxCourse.objects.filter(platform=platform).exclude(pk=course.pk).order_by("id").first()
    enrolments = model.enrolments.all() if model else []
    SandboxEnrolment.objects.bulk_create(SandboxEnrolment(course=course, user_id=e.user_id, role=e.role) for e in enrolments)
    if not enrolments:
        enrol(course=course, user=create_user(platform=platform, name="Ivy Instructor"), role=Role.INSTRUCTOR)
        enrol(course=course, user=create_user(platform=platform, name="Ada Learner"), role=Role.LEARNER)
    return course
