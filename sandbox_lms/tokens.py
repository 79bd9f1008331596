"""The token endpoint (client credentials with a JWT assertion) and the bearer token's grant:
who calls, with which scopes, and whether the course is in that tool's context.
"""
from __future__ import annotations

import secrets
import time
from datetime import timedelta
from typing import Any

import jwt
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from .caches import TokenInfo, _tokens, cached_registration
from .models import Profile, SandboxRegistration, SandboxToken
from .platform import tool_public_key
from .protocol import LTI, SUPPORTED_SCOPES, ApiError, Refusal, _error


def _oauth_error(status: int, error: str, description: str) -> ApiError:
    return ApiError(status, {"error": error, "error_description": description})


def registration_for_assertion(assertion: str) -> SandboxRegistration | None:
    """Which registration a client assertion claims to come from (unverified; for faults and logs)."""
    try:
        issuer = jwt.decode(assertion, options={"verify_signature": False}).get("iss")
    except jwt.PyJWTError:
        return None
    registration = SandboxRegistration.objects.select_related("platform").filter(client_id=issuer).first()
    return cached_registration(registration.pk) if registration else None


def issue_token(*, form: dict[str, str], registration: SandboxRegistration | None) -> dict[str, Any]:
    """Client credentials with a JWT assertion (LTI Security Framework §4.1)."""
    if form.get("grant_type") != "client_credentials":
        raise _oauth_error(400, "unsupported_grant_type", "grant_type must be client_credentials")
    if form.get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
        raise _oauth_error(400, "invalid_request", "client_assertion_type must be jwt-bearer")
    assertion = form.get("client_assertion", "")
    if registration is None:
        raise _oauth_error(401, "invalid_client", "Unknown client: the assertion's iss is no registered client_id")
    if not registration.is_enabled:  # Moodle: a tool pending after Dynamic Registration gets no service token either
        raise _oauth_error(401, "invalid_client", "This tool is pending: an LMS administrator must enable it first")
    try:
        kid = jwt.get_unverified_header(assertion).get("kid")
        key = tool_public_key(registration, kid)
    except Refusal as refusal:
        raise _oauth_error(401, "invalid_client", refusal.message) from refusal
    except jwt.PyJWTError as error:
        raise _oauth_error(400, "invalid_request", f"Unreadable assertion: {error}") from error
    platform = registration.platform
    audiences = [platform.url("token/"), platform.issuer]
    try:
        claims = jwt.decode(
            assertion, key, algorithms=["RS256"], audience=audiences, leeway=5,
            options={"require": ["iss", "sub", "aud", "exp", "iat", "jti"]},
        )
    except jwt.PyJWTError as error:
        raise _oauth_error(400, "invalid_grant", f"Invalid assertion: {error}") from error
    if claims["iss"] != registration.client_id or claims["sub"] != registration.client_id:
        raise _oauth_error(400, "invalid_grant", "iss and sub must both be the client_id")
    requested = form.get("scope", "").split()
    # A key may hold fewer scopes than the platform supports (a Canvas admin can untick some).
    allowed = registration.scopes or SUPPORTED_SCOPES
    granted = [scope for scope in requested if scope in SUPPORTED_SCOPES and scope in allowed]
    if not granted:
        raise _oauth_error(400, "invalid_scope", "No supported scope was requested")
    deployment_id = str(claims.get(LTI + "deployment_id") or claims.get("deployment_id") or "")
    token = secrets.token_urlsafe(32)
    try:
        with transaction.atomic():
            SandboxToken.objects.create(
                registration=registration, deployment_id=deployment_id, token=token, jti=str(claims["jti"]),
                scopes=" ".join(granted), expires_at=timezone.now() + timedelta(seconds=registration.token_lifetime),
            )
    except IntegrityError as error:
        raise _oauth_error(400, "invalid_grant", "jti was already used") from error
    SandboxRegistration.objects.filter(pk=registration.pk).update(tokens_issued=F("tokens_issued") + 1)
    return {
        "access_token": token, "token_type": "Bearer", "expires_in": registration.token_lifetime,
        "scope": " ".join(granted),
    }


def token_content_type(registration: SandboxRegistration | None) -> str:
    # Moodle's token.php answers JSON with a text/html content type.
    return "text/html; charset=utf-8" if registration and registration.profile == Profile.MOODLE else "application/json"


def authenticate(authorization: str | None) -> TokenInfo:
    """The bearer token's grant, from process memory after its first use."""
    if not authorization or not authorization.startswith("Bearer "):
        raise ApiError(401, {"error": "Missing bearer token"}, headers={"WWW-Authenticate": "Bearer"})
    token = authorization[7:].strip()
    info = _tokens.get(token)
    if info is None:
        row = SandboxToken.objects.filter(token=token).values_list(
            "registration_id", "deployment_id", "scopes", "expires_at"
        ).first()
        if row is None:
            raise ApiError(401, {"error": "Invalid access token"}, headers={"WWW-Authenticate": "Bearer"})
        info = TokenInfo(row[0], row[1], frozenset(row[2].split()), row[3].timestamp())
        _tokens[token] = info
    if info.expires_at <= time.time():
        raise ApiError(401, {"error": "Access token expired"}, headers={"WWW-Authenticate": "Bearer"})
    return info


def require_scope(info: TokenInfo, *scopes: str) -> None:
    if not info.scopes.intersection(scopes):
        raise ApiError(403, {"error": "insufficient_scope", "error_description": f"Needs one of {list(scopes)}"})


def check_context(*, info: TokenInfo, registration: SandboxRegistration, course_registration_id: int,
                  course_deployment_id: str) -> None:
    """The token must belong to a tool installed where the course is now."""
    if registration.profile == Profile.CANVAS:
        if course_registration_id != info.registration_id or (
            info.deployment_id and info.deployment_id != course_deployment_id
        ):
            raise _error(Profile.CANVAS, 401, "Access Token not linked to a Tool associated with this Context")
    elif course_registration_id != info.registration_id:
        raise _error(registration.profile, 401, "Access token not valid for this context")


def check_moodle_type_id(registration: SandboxRegistration, query: dict[str, str]) -> None:
    if registration.profile == Profile.MOODLE and query.get("type_id") != str(registration.pk):
        raise _error(Profile.MOODLE, 400, "Incorrect type_id")
