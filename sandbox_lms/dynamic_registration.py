"""LTI Dynamic Registration 1.0, the platform's side: the openid configuration the sandbox publishes,
the registration token its admin page hands the tool, and the registration endpoint that turns the
tool's posted configuration into a registration and a deployment.

Profiles answer as their LMS does: Moodle creates the tool *pending* (its admin enables it) and uses
the tool type's id as the deployment id; Canvas creates it enabled, with a numeric client id, and offers
the Platform Notification Service (the noticehandlers scope); generic follows the spec.
"""
from __future__ import annotations

import ipaddress
import json
import random
import secrets
import string
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from django.core import signing
from django.core.cache import cache
from django.db import transaction

from .caches import forget_caches
from .models import Profile, SandboxDeployment, SandboxPlatform, SandboxRegistration
from .platform import add_deployment, register_tool
from .protocol import SUPPORTED_SCOPES, ApiError

TOKEN_SALT = "sandbox-lms.dynamic-registration"
TOKEN_MAX_AGE = 60 * 60
MAX_BODY_BYTES = 256 * 1024
NOTICE_HANDLERS_SCOPE = "https://purl.imsglobal.org/spec/lti/scope/noticehandlers"
PLATFORM_CONFIGURATION = "https://purl.imsglobal.org/spec/lti-platform-configuration"
TOOL_CONFIGURATION = "https://purl.imsglobal.org/spec/lti-tool-configuration"
PRODUCT_FAMILY = {Profile.MOODLE: "moodle", Profile.CANVAS: "canvas", Profile.GENERIC: "sandbox"}
MESSAGE_TYPES = ("LtiResourceLinkRequest", "LtiDeepLinkingRequest")


def supported_scopes(profile: str) -> list[str]:
    """AGS and NRPS everywhere; the Platform Notification Service only where the LMS offers it (Canvas)."""
    services = [scope for scope in SUPPORTED_SCOPES if scope != NOTICE_HANDLERS_SCOPE]
    return [*services, *([NOTICE_HANDLERS_SCOPE] if profile == Profile.CANVAS else [])]


def openid_configuration_url(platform: SandboxPlatform, profile: str) -> str:
    return platform.url(".well-known/openid-configuration") + "?" + urlencode({"platform": platform.pk, "profile": profile})


def openid_configuration(platform: SandboxPlatform, profile: str) -> dict[str, Any]:
    """The platform's OpenID configuration with its LTI part (LTI DR 1.0 §3.5.1), as `profile`'s LMS publishes it."""
    deep_linking_placements = (
        ["assignment_selection", "link_selection", "course_navigation"] if profile == Profile.CANVAS else ["ContentArea"]
    )
    return {
        "issuer": platform.issuer,
        "authorization_endpoint": platform.url("auth/"),
        "registration_endpoint": platform.url("register/"),
        "jwks_uri": platform.url("jwks/"),
        "token_endpoint": platform.url("token/"),
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", *supported_scopes(profile)],
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public", "pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "claims_supported": ["sub", "iss", "name", "given_name", "family_name", "email"],
        PLATFORM_CONFIGURATION: {
            "product_family_code": PRODUCT_FAMILY.get(profile, "sandbox"),
            "version": "1.0 (sandbox)",
            "messages_supported": [
                {"type": "LtiResourceLinkRequest"},
                {"type": "LtiDeepLinkingRequest", "placements": deep_linking_placements},
            ],
            "variables": [
                "Context.id", "Context.id.history", "ResourceLink.id", "ResourceLink.id.history",
                *(["Canvas.course.startAt", "Canvas.course.endAt", "Canvas.course.previousCourseIds"]
                  if profile == Profile.CANVAS else ["CourseSection.timeFrame.begin", "CourseSection.timeFrame.end"]),
            ],
        },
    }


def issue_registration_token(platform: SandboxPlatform, profile: str) -> str:
    """A signed, one-time, one-hour token naming the platform and the profile the new tool gets."""
    if profile not in Profile.values:
        raise ValueError(f"Unknown profile {profile!r}")
    return signing.dumps({"platform": platform.pk, "profile": profile, "once": secrets.token_hex(8)}, salt=TOKEN_SALT)


@dataclass(frozen=True)
class TokenGrant:
    platform: SandboxPlatform
    profile: str
    once: str


def read_registration_token(authorization: str | None) -> TokenGrant:
    """The grant a Bearer registration token carries, or a 401 as an OAuth error."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _error(401, "invalid_token", "A registration token is required (Authorization: Bearer …).")
    try:
        grant = signing.loads(token.strip(), salt=TOKEN_SALT, max_age=TOKEN_MAX_AGE)
    except signing.SignatureExpired:
        raise _error(401, "invalid_token", "The registration token has expired: start again from the LMS.") from None
    except signing.BadSignature:
        raise _error(401, "invalid_token", "The registration token is not one this platform issued.") from None
    platform = SandboxPlatform.objects.filter(pk=grant.get("platform")).first()
    if platform is None or grant.get("profile") not in Profile.values:
        raise _error(401, "invalid_token", "The registration token names no platform here.")
    return TokenGrant(platform=platform, profile=grant["profile"], once=str(grant.get("once", "")))


def _error(status: int, error: str, description: str) -> ApiError:
    return ApiError(status, {"error": error, "error_description": description})


def _invalid(description: str) -> ApiError:
    return _error(400, "invalid_client_metadata", description)


def _url(value: object, what: str) -> str:
    """An https URL, or http to this machine (the sandbox and the tool under test)."""
    if not isinstance(value, str) or not value or len(value) > 500:
        raise _invalid(f"{what} must be a URL (at most 500 characters).")
    parts = urlsplit(value)
    host = parts.hostname or ""
    loopback = host == "localhost"
    try:
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if not host or not (parts.scheme == "https" or (parts.scheme == "http" and loopback)):
        raise _invalid(f"{what} must be https (or http to localhost): {value}")
    return value


def _strings(value: object, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise _invalid(f"{what} must be an object of strings.")
    return value


@dataclass(frozen=True)
class DynamicRegistration:
    registration: SandboxRegistration
    deployment: SandboxDeployment
    answer: dict[str, Any]


def register_dynamically(*, authorization: str | None, body: bytes) -> DynamicRegistration:
    """The registration endpoint: check the token and the tool's configuration, register it, answer as the LMS does."""
    grant = read_registration_token(authorization)
    if len(body) > MAX_BODY_BYTES:
        raise _invalid("The client configuration is too large.")
    try:
        posted = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _invalid("The body must be a JSON client configuration.") from None
    if not isinstance(posted, dict):
        raise _invalid("The body must be a JSON object.")
    for name, required in (("response_types", "id_token"), ("grant_types", "implicit"), ("grant_types", "client_credentials")):
        if not isinstance(posted.get(name), list) or required not in posted[name]:
            raise _invalid(f"{name} must include {required!r}.")
    login_url = _url(posted.get("initiate_login_uri"), "initiate_login_uri")
    jwks_url = _url(posted.get("jwks_uri"), "jwks_uri")
    redirect_uris = posted.get("redirect_uris")
    if not isinstance(redirect_uris, list) or not redirect_uris or len(redirect_uris) > 20:
        raise _invalid("redirect_uris must list the tool's redirect URIs.")
    redirect_uris = [_url(uri, "redirect_uris") for uri in redirect_uris]
    name = posted.get("client_name")
    if not isinstance(name, str) or not name.strip():
        raise _invalid("client_name is required.")
    if posted.get("token_endpoint_auth_method", "private_key_jwt") != "private_key_jwt":
        raise _invalid("token_endpoint_auth_method must be private_key_jwt.")
    scope = posted.get("scope", "")
    if not isinstance(scope, str):
        raise _invalid("scope must be a space-separated string.")
    tool = posted.get(TOOL_CONFIGURATION)
    if not isinstance(tool, dict):
        raise _invalid(f"{TOOL_CONFIGURATION} is required.")
    if not isinstance(tool.get("domain"), str) or not tool["domain"]:
        raise _invalid("The tool configuration's domain is required.")
    launch_url = _url(tool.get("target_link_uri"), "target_link_uri")
    custom = _strings(tool.get("custom_parameters"), "custom_parameters")
    messages = tool.get("messages", [])
    if not isinstance(messages, list) or not all(isinstance(m, dict) and m.get("type") in MESSAGE_TYPES for m in messages):
        raise _invalid(f"messages must be a list of {' or '.join(MESSAGE_TYPES)} messages.")
    deep_linking_url = ""
    for message in messages:
        if "target_link_uri" in message:
            _url(message["target_link_uri"], "a message's target_link_uri")
        _strings(message.get("custom_parameters"), "a message's custom_parameters")
        if message["type"] == "LtiDeepLinkingRequest" and not deep_linking_url:
            deep_linking_url = message.get("target_link_uri") or launch_url
    if grant.once and not cache.add(f"sandbox-lms:dr-token:{grant.once}", True, TOKEN_MAX_AGE):
        raise _error(401, "invalid_token", "The registration token was already used.")

    profile = grant.profile
    granted = [s for s in scope.split() if s in supported_scopes(profile)]
    with transaction.atomic():
        registration = register_tool(
            platform=grant.platform, name=name.strip()[:200], login_url=login_url, launch_url=launch_url,
            jwks_url=jwks_url, deep_linking_url=deep_linking_url, redirect_uris=redirect_uris,
            client_id=_client_id(profile), profile=profile, custom=custom,
        )
        registration.registered_dynamically = True
        registration.is_enabled = profile != Profile.MOODLE  # Moodle: "Pending" until its admin enables the tool
        registration.tool_configuration = posted
        registration.scopes = granted
        registration.save(update_fields=["registered_dynamically", "is_enabled", "tool_configuration", "scopes"])
        # Moodle's deployment id is the tool type's id; Canvas's is "<account id>:<hash>".
        deployment = add_deployment(
            registration=registration, name="Root account",
            deployment_id=str(registration.pk) if profile == Profile.MOODLE else None,
        )
    answer = {
        **{k: v for k, v in posted.items() if k != TOOL_CONFIGURATION},
        "client_id": registration.client_id,
        "scope": " ".join(granted),
        TOOL_CONFIGURATION: {**tool, "deployment_id": deployment.deployment_id},
    }
    return DynamicRegistration(registration=registration, deployment=deployment, answer=answer)


def _client_id(profile: str) -> str:
    if profile == Profile.CANVAS:
        return f"10000000000{random.randint(100, 999_999)}"
    return "".join(random.choices(string.ascii_letters + string.digits, k=15))


def enable_registration(*, registration: SandboxRegistration) -> SandboxRegistration:
    """The sandbox admin's Enable on a pending tool (Moodle's "Activate")."""
    registration.is_enabled = True
    registration.save(update_fields=["is_enabled"])
    forget_caches()
    return registration
