"""What an LMS admin needs to register this tool, and per-LMS presets for our side.

The tool's public paths are defined once here; `config/urls.py` mounts the views at them.
"""
from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from lti_tool.models import LtiRegistration

from .models import LmsFamily

LOGIN_PATH = "lti/login/"  # + <registration uuid>/
LAUNCH_PATH = "lti/launch/"
JWKS_PATH = "lti/jwks/"
# The registration's Canvas developer key JSON, public: Canvas's "Enter URL" fetches it without signing in.
CANVAS_JSON_PATH = "lti/registrations/<uuid:registration_uuid>/canvas.json"

# A link that opens the instructor's tools (grade sync, attempts allowed) rather than an activity:
# placed ungraded by deep linking, and as Canvas's course navigation, with this custom parameter.
TOOL_PAGE_PARAM = "tool_page"
INSTRUCTOR_TOOLS_PAGE = "instructor_tools"

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


# The order each LMS hands out its values: whether this tool's URLs must exist first (a draft
# registration, client ID later) or the LMS's client ID comes first. Shown on the add page per preset.
ONBOARDING_ORDER = {
    LmsFamily.MOODLE: [
        "Save this registration as a draft (client ID blank): its tool URLs are shown at once.",
        "The Moodle admin adds the tool with those URLs (Site administration → Plugins → External tool → "
        "Manage tools → configure a tool manually) and saves it.",
        "Moodle then shows the Client ID and Deployment ID (the tool's \"View configuration details\"): "
        "type both here, and the registration goes live.",
    ],
    LmsFamily.CANVAS: [
        "Save this registration as a draft (client ID blank): its Canvas JSON URL is shown at once.",
        "The Canvas admin creates an LTI developer key (Method \"Enter URL\" with that URL, or \"Paste JSON\"), "
        "saves it and turns it ON.",
        "The key's number is the client ID: type it here.",
        "The admin adds the app by client ID (Settings → Apps); the app's Deployment Id is this registration's "
        "deployment: type it here, and the registration goes live.",
    ],
    LmsFamily.BLACKBOARD: [
        "The vendor registers the tool once in the Anthology developer portal: the application ID it gives is "
        "the client ID, known first. Type it here with the preset's endpoints (CLIENT_ID replaced).",
        "Each school's Blackboard admin adds the tool by that application ID "
        "(LTI Tool Providers → Register LTI 1.3/Advantage Tool) and reads out the Deployment ID: type it here.",
    ],
    LmsFamily.D2L: [
        "Save this registration as a draft (client ID blank): its tool URLs are shown at once.",
        "The Brightspace admin registers the tool with them (Manage Extensibility → LTI Advantage → Register Tool); "
        "Brightspace shows the Client Id, its endpoints and the audience: type them here.",
        "The admin creates a deployment (View Deployments → New Deployment): type its Deployment Id here, "
        "and the registration goes live.",
    ],
    LmsFamily.SCHOOLOGY: [
        "Save this registration as a draft (client ID blank): its tool URLs are shown at once.",
        "The tool's LTI 1.3 app is set up in Schoology with those URLs; Schoology gives the Client ID: type it here.",
        "A school installs the app; its Deployment ID is this registration's deployment: type it here.",
    ],
    LmsFamily.SAKAI: [
        "Save this registration as a draft (client ID blank): its tool URLs are shown at once.",
        "The Sakai admin adds the tool with those URLs (or pastes a Dynamic Registration link instead); "
        "Sakai then shows its issuer, endpoints, Client ID and Deployment ID: type them here.",
    ],
}

# A draft registration has no client ID yet; django-lti's column is NOT NULL and unique per issuer
# (every hosted Canvas shares one issuer), so a draft holds a placeholder no LMS sends.
DRAFT_CLIENT_ID_PREFIX = "draft-"
NOT_ISSUED_YET = "— not issued yet —"


def new_draft_client_id() -> str:
    return f"{DRAFT_CLIENT_ID_PREFIX}{uuid.uuid4().hex}"


def is_draft_client_id(client_id: str) -> bool:
    return client_id.startswith(DRAFT_CLIENT_ID_PREFIX)


def is_draft(registration: LtiRegistration) -> bool:
    """A registration whose LMS has not issued its client ID yet: shown with its tool URLs, matching no launch."""
    return is_draft_client_id(registration.client_id or "")


def shown_client_id(registration: LtiRegistration) -> str:
    """The client ID as staff read it: a draft's placeholder is never shown."""
    return NOT_ISSUED_YET if is_draft(registration) else registration.client_id


# Where each LMS shows the platform's values the registration form asks for (the LMS admin reads them out).
REGISTRATION_FIELD_HELP = {
    "issuer": (
        "The platform's issuer, no trailing slash. Canvas: https://canvas.instructure.com for every hosted school. "
        "Moodle: \"Platform ID\" in the tool's \"View configuration details\" (the site URL). "
        "Blackboard: https://blackboard.com. D2L: \"Issuer\" on the tool's registration page (Manage Extensibility → "
        "LTI Advantage). Schoology: https://schoology.schoology.com. Sakai: \"Issuer\" in the tool's LTI 1.3 platform information."
    ),
    "client_id": (
        "Canvas: the developer key's number (\"Client ID\" column of Developer Keys). Moodle: \"Client ID\" in "
        "\"View configuration details\". Blackboard: the application ID from the Anthology developer portal. "
        "D2L: \"Client Id\" on the registration page. Schoology: the app's \"Client ID\". Sakai: \"Client ID\" in the tool's LTI 1.3 platform information."
    ),
    "auth_url": (
        "Where logins are sent. Moodle: \"Authentication request URL\". D2L: \"OpenID Connect Authentication "
        "Endpoint\". Sakai: \"OIDC Authentication URL\". Canvas, Blackboard, Schoology: the preset's value."
    ),
    "token_url": (
        "Where service tokens are requested. Moodle: \"Access token URL\". D2L: \"Brightspace OAuth2 Access Token "
        "URL\". Sakai: \"Token URL\". Canvas, Blackboard, Schoology: the preset's value."
    ),
    "keyset_url": (
        "The platform's public keys. Moodle: \"Public keyset URL\". D2L: \"Brightspace Keyset URL\". "
        "Sakai: \"Keyset URL\". Blackboard: the preset with CLIENT_ID replaced. Canvas, Schoology: the preset's value."
    ),
    "audience": (
        "Only when the platform asks for one. D2L: \"Brightspace OAuth2 Audience\" "
        "(https://api.brightspace.com/auth/token). Others: leave blank (the token URL is used)."
    ),
}


def normalised_issuer(issuer: str) -> str:
    """One platform, one spelling: "https://lms.edu/" and "https://lms.edu" are the same issuer."""
    return issuer.strip().rstrip("/")


def is_loopback_host(host: str | None) -> bool:
    """127.0.0.0/8, ::1 and localhost: only a platform on this very machine (the sandbox LMS, a dev Moodle)."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def endpoint_refusal(url: str) -> str | None:
    """Why a platform endpoint (auth, token, keyset) must not be saved, or None when it may.

    Keys and tokens cross these URLs, so plain http is allowed only to this machine and only in a
    development or sandbox installation.
    """
    parts = urlsplit(url)
    if parts.scheme == "https":
        return None
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        if settings.DEBUG or settings.SANDBOX_LMS:
            return None
        return "Plain http is allowed only for a local platform (127.0.0.1, localhost) in a development or sandbox installation: use https."
    return "Must be an https URL: keys and tokens travel over it."


def default_registration_name(*, lms: str, institution: str = "", issuer: str = "") -> str:
    """"<institution> — <LMS>" when the institution is known, else "<LMS> — <issuer host>"."""
    if institution:
        return f"{institution} — {lms}"
    host = urlsplit(issuer).hostname or ""
    return f"{lms} — {host}" if host and PLACEHOLDER.lower() not in host else ""


def canvas_json_path(registration: LtiRegistration) -> str:
    return CANVAS_JSON_PATH.replace("<uuid:registration_uuid>", str(registration.uuid))


def tool_urls(base_url: str, registration: LtiRegistration) -> dict[str, str]:
    base = base_url.rstrip("/") + "/"
    return {
        "login": f"{base}{LOGIN_PATH}{registration.uuid}/",
        "launch": f"{base}{LAUNCH_PATH}",
        "redirect": f"{base}{LAUNCH_PATH}",
        "deep_linking": f"{base}{LAUNCH_PATH}",
        "jwks": f"{base}{JWKS_PATH}",
        "canvas_json": f"{base}{canvas_json_path(registration)}",
    }


def custom_parameters(lms_family: str) -> dict[str, str]:
    return dict(CUSTOM_PARAMETERS.get(lms_family, CUSTOM_PARAMETERS["default"]))


def custom_parameters_text(lms_family: str) -> str:
    """One name=value a line, as Moodle, D2L and Sakai take custom parameters."""
    return "\n".join(f"{name}={value}" for name, value in custom_parameters(lms_family).items())


def base_url_warning(base_url: str) -> str:
    """Why an LMS on another machine could not reach the tool at `base_url`, or "" when it can."""
    parts = urlsplit(base_url)
    if is_loopback_host(parts.hostname):
        return (
            f"This tool is being reached at {base_url}, a loopback address: LMSes on other machines cannot reach "
            f"{base_url} (only a platform on this very machine, like the sandbox LMS, can). "
            "Open this page through the tool's public https address before handing these values over."
        )
    if parts.scheme != "https":
        return (
            f"This tool is being reached over plain http ({base_url}): LMSes refuse or cannot trust tool URLs "
            "without https. Open this page through the tool's public https address before handing these values over."
        )
    return ""


def canvas_developer_key(base_url: str, registration: LtiRegistration) -> dict[str, Any]:
    """The JSON that Canvas's "LTI Key → Paste JSON" (or "Enter URL") accepts as it is. No secret in it."""
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
                            # The instructor's tools (grade sync, attempts allowed) without a gradebook column:
                            # "admins" is Canvas's word for teachers and admins, so students never see the tab.
                            "placement": "course_navigation",
                            "message_type": "LtiResourceLinkRequest",
                            "target_link_uri": urls["launch"],
                            "text": "Grade sync (instructor tools)",
                            "visibility": "admins",
                            "default": "enabled",
                            "custom_fields": {TOOL_PAGE_PARAM: INSTRUCTOR_TOOLS_PAGE},
                        },
                    ],
                },
            }
        ],
        "custom_fields": custom_parameters(LmsFamily.CANVAS),
    }
