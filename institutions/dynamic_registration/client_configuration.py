"""What the tool POSTs to the platform's registration endpoint (LTI DR 1.0 §3.6), per LMS family."""
from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from lti_tool.models import LtiRegistration

from ..models import LmsFamily
from ..tool_configuration import INSTRUCTOR_TOOLS_PAGE, TOOL_PAGE_PARAM, TOOL_SCOPES, custom_parameters, tool_urls
from .platform import NOTICE_HANDLERS_SCOPE, TOOL_CONFIGURATION, OpenIdConfiguration

CANVAS = "https://canvas.instructure.com/lti/"
CLAIMS = ["iss", "sub", "name", "given_name", "family_name", "email"]


def requested_scopes(configuration: OpenIdConfiguration) -> list[str]:
    """AGS (line items, scores, results) and NRPS always; PNS notice handlers only where the platform offers them."""
    return [*TOOL_SCOPES, *([NOTICE_HANDLERS_SCOPE] if configuration.offers_notices else [])]


def client_configuration(
    *, base_url: str, registration: LtiRegistration, configuration: OpenIdConfiguration, lms_family: str
) -> dict[str, Any]:
    """Our client registration request: the OIDC client fields and the LTI tool configuration."""
    urls = tool_urls(base_url, registration)
    title = settings.TOOL_TITLE
    canvas = lms_family == LmsFamily.CANVAS
    deep_linking: dict[str, Any] = {
        "type": "LtiDeepLinkingRequest",
        "target_link_uri": urls["deep_linking"],
        "label": f"Add {title} activities",
        # Canvas names its placements; the spec's ContentArea is what Moodle, D2L and Sakai read.
        "placements": ["assignment_selection", "link_selection"] if canvas else ["ContentArea"],
    }
    messages: list[dict[str, Any]] = [
        {"type": "LtiResourceLinkRequest", "target_link_uri": urls["launch"], "label": title},
        deep_linking,
    ]
    if canvas:
        # The instructor's tools (grade sync, attempts allowed) in the course menu, for instructors only:
        # a plain link elsewhere would become a gradebook column (Moodle), so only Canvas gets one here.
        messages.append({
            "type": "LtiResourceLinkRequest",
            "target_link_uri": urls["launch"],
            "label": "Grade sync",
            "placements": ["course_navigation"],
            "custom_parameters": {TOOL_PAGE_PARAM: INSTRUCTOR_TOOLS_PAGE},
            "roles": ["http://purl.imsglobal.org/vocab/lis/v2/membership#Instructor"],
            f"{CANVAS}course_navigation/default_enabled": False,
            f"{CANVAS}visibility": "admins",
        })
    tool: dict[str, Any] = {
        "domain": urlsplit(urls["launch"]).netloc,
        "target_link_uri": urls["launch"],
        "custom_parameters": custom_parameters(lms_family),
        "claims": CLAIMS,
        "messages": messages,
        "description": f"{title}: courseware activities with grades sent to the gradebook.",
    }
    if canvas:
        tool[f"{CANVAS}privacy_level"] = "public"  # names and emails: the grade sync pages show who is who
    return {
        "application_type": "web",
        "response_types": ["id_token"],
        "grant_types": ["implicit", "client_credentials"],
        "initiate_login_uri": urls["login"],
        "redirect_uris": list(dict.fromkeys([urls["redirect"], urls["deep_linking"]])),
        "client_name": title,
        "jwks_uri": urls["jwks"],
        "token_endpoint_auth_method": "private_key_jwt",
        "scope": " ".join(requested_scopes(configuration)),
        TOOL_CONFIGURATION: tool,
    }
