"""What an LMS admin needs to register this tool, and per-LMS presets for our side.

The tool's public paths are defined once here; `config/urls.py` mounts the views at them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from lti_tool.models import LtiRegistration

from .models import LmsFamily

LOGIN_PATH = "lti/login/"  # + <registration uuid>/
LAUNCH_PATH = "lti/launch/"
JWKS_PATH = "lti/jwks/"

AGS_SCOPES = [
    "https://purl.imsglobal.org/spec/lti-ags/scope/lineitem",
    "https://purl.imsglobal.org/spec/lti-ags/scope/lineitem.readonly",
    "https://purl.imsglobal.org/spec/lti-ags/scope/result.readonly",
    "https://purl.imsglobal.org/spec/lti-ags/scope/score",
]
NRPS_SCOPE = "https://purl.imsglobal.org/spec/lti-nrps/scope/contextmembership.readonly"
TOOL_SCOPES = [*AGS_SCOPES, NRPS_SCOPE]

# Course dates and copy history reach us as custom parameters with substitution variables.
# Canvas has its own course-date variables; the others use the LTI standard section time frame.
_COMMON_CUSTOM = {
    "context_id_history": "$Context.id.history",
    "resource_link_id_history": "$ResourceLink.id.history",
}
CUSTOM_PARAMETERS = {
    LmsFamily.CANVAS: {
        "course_start_date": "$Canvas.course.startAt",
        "course_end_date": "$Canvas.course.endAt",
        **_COMMON_CUSTOM,
        "canvas_previous_course_ids": "$Canvas.course.previousCourseIds",
    },
    "default": {
        "course_start_date": "$CourseSection.timeFrame.begin",
        "course_end_date": "$CourseSection.timeFrame.end",
        **_COMMON_CUSTOM,
    },
}


@dataclass(frozen=True)
class Preset:
    """Platform values for a hosted LMS. `HOST` in a value must be replaced by the school's host."""

    lms_family: str
    name: str
    issuer: str
    auth_url: str
    token_url: str
    keyset_url: str
    audience: str = ""


PLACEHOLDER = "HOST.example"

PRESETS = {
    "canvas": Preset(
        LmsFamily.CANVAS,
        "Canvas (Instructure cloud)",
        issuer="https://canvas.instructure.com",
        auth_url="https://sso.canvaslms.com/api/lti/authorize_redirect",
        token_url="https://sso.canvaslms.com/login/oauth2/token",
        keyset_url="https://sso.canvaslms.com/api/lti/security/jwks",
    ),
    "blackboard": Preset(
        LmsFamily.BLACKBOARD,
        "Blackboard Learn (Anthology)",
        issuer="https://blackboard.com",
        auth_url="https://developer.blackboard.com/api/v1/gateway/oidcauth",
        token_url="https://developer.blackboard.com/api/v1/gateway/oauth2/jwttoken",
        # The JWKS URL carries the application id Blackboard gave us, which is our client id.
        keyset_url="https://developer.blackboard.com/api/v1/management/applications/CLIENT_ID/jwks.json",
    ),
    "d2l": Preset(
        LmsFamily.D2L,
        "D2L Brightspace",
        issuer=f"https://{PLACEHOLDER}",
        auth_url=f"https://{PLACEHOLDER}/d2l/lti/authenticate",
        token_url="https://auth.brightspace.com/core/connect/token",
        keyset_url=f"https://{PLACEHOLDER}/d2l/.well-known/jwks",
        audience="https://api.brightspace.com/auth/token",
    ),
    "schoology": Preset(
        LmsFamily.SCHOOLOGY,
        "Schoology",
        issuer="https://schoology.schoology.com",
        auth_url="https://lti-service.svc.schoology.com/lti-service/authorize-redirect",
        token_url="https://lti-service.svc.schoology.com/lti-service/access-token",
        keyset_url="https://lti-service.svc.schoology.com/lti-service/.well-known/jwks",
    ),
    "moodle": Preset(
        LmsFamily.MOODLE,
        "Moodle (self-hosted)",
        issuer=f"https://{PLACEHOLDER}",
        auth_url=f"https://{PLACEHOLDER}/mod/lti/auth.php",
        token_url=f"https://{PLACEHOLDER}/mod/lti/token.php",
        keyset_url=f"https://{PLACEHOLDER}/mod/lti/certs.php",
    ),
}


def tool_urls(base_url: str, registration: LtiRegistration) -> dict[str, str]:
    base = base_url.rstrip("/") + "/"
    return {
        "login": f"{base}{LOGIN_PATH}{registration.uuid}/",
        "launch": f"{base}{LAUNCH_PATH}",
        "redirect": f"{base}{LAUNCH_PATH}",
        "deep_linking": f"{base}{LAUNCH_PATH}",
        "jwks": f"{base}{JWKS_PATH}",
    }


def custom_parameters(lms_family: str) -> dict[str, str]:
    return dict(CUSTOM_PARAMETERS.get(lms_family, CUSTOM_PARAMETERS["default"]))


def canvas_developer_key(base_url: str, registration: LtiRegistration) -> dict[str, Any]:
    """The JSON that Canvas's "LTI Key → Paste JSON" accepts as it is."""
    urls = tool_urls(base_url, registration)
    title = settings.TOOL_TITLE
    return {
        "title": title,
        "description": f"{title}: courseware activities with grades sent to the Canvas gradebook.",
        "oidc_initiation_url": urls["login"],
        "target_link_uri": urls["launch"],
        "public_jwk_url": urls["jwks"],
        "scopes": TOOL_SCOPES,
        "extensions": [
            {
                "domain": urlsplit(urls["launch"]).hostname,
                "platform": "canvas.instructure.com",
                "privacy_level": "public",
                "settings": {
                    "text": title,
                    "placements": [
                        {
                            "placement": "assignment_selection",
                            "message_type": "LtiDeepLinkingRequest",
                            "target_link_uri": urls["deep_linking"],
                            "text": f"Add {title} activity",
                        },
                        {
                            "placement": "link_selection",
                            "message_type": "LtiDeepLinkingRequest",
                            "target_link_uri": urls["deep_linking"],
                            "text": f"Add {title} activities",
                        },
                        {
                            "placement": "course_navigation",
                            "message_type": "LtiResourceLinkRequest",
                            "target_link_uri": urls["launch"],
                            "text": "Grade sync",
                            "visibility": "admins",
                            "default": "disabled",
                        },
                    ],
                },
            }
        ],
        "custom_fields": custom_parameters(LmsFamily.CANVAS),
    }
