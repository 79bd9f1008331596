"""The sandbox LMS's behaviour: identity and keys, launches, deep linking, tokens, AGS, faults.

Views are thin wrappers over these functions; `sandbox_lms.api` re-exports what tests use.
Refusals are raised as `ApiError` (service endpoints) or `Refusal` (browser flows) carrying
the status and the message a real LMS would answer with.
"""
from __future__ import annotations

import json
import math
import random
import secrets
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any
from urllib.parse import urlencode

import jwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from .models import (
    GRADABLE_ROLES,
    LaunchKind,
    Profile,
    Role,
    SandboxCourse,
    SandboxDeployment,
    SandboxEnrolment,
    SandboxKey,
    SandboxLaunch,
    SandboxLineItem,
    SandboxPlatform,
    SandboxRegistration,
    SandboxRequestLog,
    SandboxResourceLink,
    SandboxResult,
    SandboxToken,
    SandboxUser,
)

LTI = "https://purl.imsglobal.org/spec/lti/claim/"
AGS_CLAIM = "https://purl.imsglobal.org/spec/lti-ags/claim/endpoint"
NRPS_CLAIM = "https://purl.imsglobal.org/spec/lti-nrps/claim/namesroleservice"
DL_SETTINGS_CLAIM = "https://purl.imsglobal.org/spec/lti-dl/claim/deep_linking_settings"
DL_CONTENT_ITEMS = "https://purl.imsglobal.org/spec/lti-dl/claim/content_items"
DL_DATA = "https://purl.imsglobal.org/spec/lti-dl/claim/data"
DL_MSG = "https://purl.imsglobal.org/spec/lti-dl/claim/msg"
DL_ERRORMSG = "https://purl.imsglobal.org/spec/lti-dl/claim/errormsg"
CANVAS_SUBMISSION = "https://canvas.instructure.com/lti/submission"

SCOPE_LINEITEM = "https://purl.imsglobal.org/spec/lti-ags/scope/lineitem"
SCOPE_LINEITEM_READONLY = "https://purl.imsglobal.org/spec/lti-ags/scope/lineitem.readonly"
SCOPE_RESULT = "https://purl.imsglobal.org/spec/lti-ags/scope/result.readonly"
SCOPE_SCORE = "https://purl.imsglobal.org/spec/lti-ags/scope/score"
SCOPE_NRPS = "https://purl.imsglobal.org/spec/lti-nrps/scope/contextmembership.readonly"
AGS_SCOPES = [SCOPE_LINEITEM, SCOPE_LINEITEM_READONLY, SCOPE_RESULT, SCOPE_SCORE]
SUPPORTED_SCOPES = [*AGS_SCOPES, SCOPE_NRPS]

SCORE_MEDIA_TYPE = "application/vnd.ims.lis.v1.score+json"
LINEITEM_MEDIA_TYPE = "application/vnd.ims.lis.v2.lineitem+json"
LINEITEMS_MEDIA_TYPE = "application/vnd.ims.lis.v2.lineitemcontainer+json"
RESULTS_MEDIA_TYPE = "application/vnd.ims.lis.v2.resultcontainer+json"
MEMBERSHIPS_MEDIA_TYPE = "application/vnd.ims.lti-nrps.v2.membershipcontainer+json"

ROLE_URIS = {
    Role.INSTRUCTOR: [
        "http://purl.imsglobal.org/vocab/lis/v2/membership#Instructor",
        "http://purl.imsglobal.org/vocab/lis/v2/institution/person#Instructor",
    ],
    Role.TEACHING_ASSISTANT: [
        "http://purl.imsglobal.org/vocab/lis/v2/membership#Instructor",
        "http://purl.imsglobal.org/vocab/lis/v2/membership/Instructor#TeachingAssistant",
    ],
    Role.LEARNER: [
        "http://purl.imsglobal.org/vocab/lis/v2/membership#Learner",
        "http://purl.imsglobal.org/vocab/lis/v2/institution/person#Student",
    ],
    Role.TEST_USER: [
        "http://purl.imsglobal.org/vocab/lis/v2/membership#Learner",
        "http://purl.imsglobal.org/vocab/lti/system/person#TestUser",
    ],
}
CAN_DEEP_LINK = (Role.INSTRUCTOR, Role.TEACHING_ASSISTANT)
LAUNCH_LIFETIME = timedelta(minutes=10)
LOG_BODY_LIMIT = 4000


class ApiError(Exception):
    """A refusal of a service endpoint, answered as the profile's LMS would."""

    def __init__(
        self,
        status: int,
        body: Any,
        *,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(body if isinstance(body, str) else json.dumps(body))
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers or {}
        self.reason = reason


class Refusal(Exception):
    """A refusal in a browser flow (auth request, deep-linking return): shown with its reason."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class DropConnection(Exception):
    """Fault injection: close the client's connection without an answer."""


def _error(profile: str, status: int, message: str) -> ApiError:
    """The shape of an error body per LMS family."""
    if profile == Profile.MOODLE:
        # Moodle puts the detail in the HTTP status line; the body is plain text.
        return ApiError(status, message, content_type="text/plain", reason=message)
    if profile == Profile.CANVAS:
        return ApiError(status, {"errors": [{"message": message}]})
    return ApiError(status, {"error": message})


# --- Identity and keys --------------------------------------------------------------------------


def create_platform(*, base_url: str, name: str = "Sandbox LMS", issuer: str | None = None) -> SandboxPlatform:
    """The platform served at `base_url` (…/sandbox-lms), with a signing key. Idempotent per issuer."""
    base_url = base_url.rstrip("/")
    platform, _ = SandboxPlatform.objects.get_or_create(
        issuer=issuer or base_url, defaults={"base_url": base_url, "name": name}
    )
    if platform.base_url != base_url:
        platform.base_url = base_url
        platform.save(update_fields=["base_url"])
    if not platform.keys.exists():
        rotate_platform_key(platform=platform)
    return platform


def rotate_platform_key(*, platform: SandboxPlatform) -> SandboxKey:
    """A new signing key, published beside the old ones (which stay in the JWKS)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    kid = f"sandbox-{uuid.uuid4().hex[:16]}"
    public_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    public_jwk.update({"kid": kid, "alg": "RS256", "use": "sig"})
    return SandboxKey.objects.create(platform=platform, kid=kid, private_pem=pem, public_jwk=public_jwk)


def platform_jwks() -> dict[str, Any]:
    return {"keys": [key.public_jwk for key in SandboxKey.objects.filter(is_published=True).order_by("id")]}


def _signing_key(platform: SandboxPlatform) -> SandboxKey:
    return platform.keys.filter(is_published=True).order_by("-id").first()


def sign(platform: SandboxPlatform, claims: dict[str, Any]) -> str:
    key = _signing_key(platform)
    return jwt.encode(claims, key.private_pem, algorithm="RS256", headers={"kid": key.kid})


# --- Registry ------------------------------------------------------------------------------------


def register_tool(
    *,
    platform: SandboxPlatform,
    name: str,
    login_url: str,
    launch_url: str,
    jwks_url: str = "",
    deep_linking_url: str = "",
    redirect_uris: list[str] | None = None,
    client_id: str | None = None,
    profile: str = Profile.GENERIC,
    custom: dict[str, str] | None = None,
    tool_public_jwks: dict[str, Any] | None = None,
    login_method: str = "POST",
    token_lifetime: int = 3600,
) -> SandboxRegistration:
    registration = SandboxRegistration.objects.create(
        platform=platform,
        name=name,
        client_id=client_id or f"{random.randint(10**13, 10**14 - 1)}",
        login_url=login_url,
        launch_url=launch_url,
        jwks_url=jwks_url,
        deep_linking_url=deep_linking_url,
        redirect_uris=redirect_uris or [launch_url] + ([deep_linking_url] if deep_linking_url else []),
        profile=profile,
        custom=custom or {},
        tool_public_jwks=tool_public_jwks or {},
        login_method=login_method,
        token_lifetime=token_lifetime,
    )
    if profile == Profile.CANVAS:
        registration.rate_limit_enabled = True
        registration.save(update_fields=["rate_limit_enabled"])
    return registration


def add_deployment(*, registration: SandboxRegistration, name: str, deployment_id: str | None = None) -> SandboxDeployment:
    return SandboxDeployment.objects.create(
        registration=registration, name=name, deployment_id=deployment_id or f"{uuid.uuid4().int % 10**6}:{uuid.uuid4().hex[:20]}"
    )


def create_course(
    *, deployment: SandboxDeployment, title: str, starts_at: datetime | None = None, ends_at: datetime | None = None,
    label: str = "",
) -> SandboxCourse:
    return SandboxCourse.objects.create(
        platform=deployment.registration.platform,
        deployment=deployment,
        title=title,
        label=label or title[:20],
        context_id=uuid.uuid4().hex,
        starts_at=starts_at,
        ends_at=ends_at,
    )


def create_user(*, platform: SandboxPlatform, name: str, email: str = "", sub: str | None = None) -> SandboxUser:
    return SandboxUser.objects.create(platform=platform, name=name, email=email, sub=sub or str(uuid.uuid4()))


def enrol(*, course: SandboxCourse, user: SandboxUser, role: str) -> SandboxEnrolment:
    enrolment, _ = SandboxEnrolment.objects.update_or_create(course=course, user=user, defaults={"role": role})
    return enrolment


def add_resource_link(
    *,
    course: SandboxCourse,
    title: str,
    url: str = "",
    custom: dict[str, str] | None = None,
    line_item: dict[str, Any] | None = None,
) -> SandboxResourceLink:
    """A placement of the tool in a course; `line_item` (label, score_maximum, resource_id, tag,
    allowed_attempts) adds a gradebook column bound to it."""
    link = SandboxResourceLink.objects.create(
        course=course, title=title, url=url, custom=custom or {}, resource_link_id=uuid.uuid4().hex
    )
    if line_item is not None:
        create_line_item(course=course, resource_link=link, **{"label": title, **line_item})
    return link


def create_line_item(
    *,
    course: SandboxCourse,
    label: str,
    score_maximum: float,
    resource_link: SandboxResourceLink | None = None,
    resource_id: str = "",
    tag: str = "",
    allowed_attempts: int | None = None,
) -> SandboxLineItem:
    return SandboxLineItem.objects.create(
        course=course,
        resource_link=resource_link,
        label=label,
        score_maximum=score_maximum,
        resource_id=resource_id,
        tag=tag,
        allowed_attempts=allowed_attempts,
    )


def configure_registration(*, registration: SandboxRegistration, **fields: Any) -> SandboxRegistration:
    """Change a registration's profile, rate limit, token lifetime or faults (see `set_faults`)."""
    allowed = {
        "profile", "rate_limit_enabled", "rate_limit_capacity", "rate_limit_leak_per_second", "rate_limit_cost",
        "token_lifetime", "faults", "login_method", "custom", "jwks_url", "tool_public_jwks", "redirect_uris",
    }
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"Unknown registration settings: {sorted(unknown)}")
    if "profile" in fields and fields["profile"] not in Profile.values:
        raise ValueError(f"Unknown profile {fields['profile']!r}")
    for name, value in fields.items():
        setattr(registration, name, value)
    registration.save(update_fields=list(fields))
    forget_caches()
    return registration


FAULT_FIELDS = {
    "latency_ms": "Added latency on every service request (ms)",
    "error_rate": "Fraction of service requests answered with a 5xx",
    "error_status": "The 5xx status (default 503)",
    "throttle_rate": "Fraction answered 429 with Retry-After",
    "retry_after": "Retry-After seconds for 429 (default 5)",
    "drop_rate": "Fraction whose connection is closed without an answer",
    "timeout_rate": "Fraction answered only after timeout_seconds",
    "timeout_seconds": "How long a timed-out request hangs (default 30)",
    "outage_start": "Outage window start (ISO 8601)",
    "outage_end": "Outage window end (ISO 8601)",
}


def set_faults(*, registration: SandboxRegistration, **faults: Any) -> SandboxRegistration:
    """Replace the registration's faults, e.g. `set_faults(registration=r, error_rate=1.0)`; none clears them."""
    unknown = set(faults) - set(FAULT_FIELDS)
    if unknown:
        raise ValueError(f"Unknown faults: {sorted(unknown)}")
    cleaned = {}
    for name, value in faults.items():
        if value in (None, ""):
            continue
        if isinstance(value, datetime):
            value = value.isoformat()
        cleaned[name] = value
    return configure_registration(registration=registration, faults=cleaned)


# --- Request log --------------------------------------------------------------------------------


def _truncate(text: str) -> str:
    return text if len(text) <= LOG_BODY_LIMIT else text[:LOG_BODY_LIMIT] + "…"


LOGGED_HEADERS = ("Content-Type", "Accept", "Authorization", "User-Agent")


_LOG_INSERT_SQL = (
    "INSERT INTO sandbox_lms_sandboxrequestlog (registration_id, kind, method, path, request_headers,"
    " request_body, status, response_body, note, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)


def log_row(
    *,
    registration_id: int | None,
    kind: str,
    method: str,
    path: str,
    headers: Any,
    request_body: bytes | str,
    status: int | None,
    response_body: bytes | str,
    note: str = "",
) -> list[Any]:
    """The parameters of `_LOG_INSERT_SQL` for one exchange (created_at: now, as an aware datetime)."""
    logged_headers = {}
    for name in LOGGED_HEADERS:
        value = headers.get(name)
        if value:
            if name == "Authorization" and len(value) > 20:
                value = value[:20] + "…"
            logged_headers[name] = value
    if isinstance(request_body, bytes):
        request_body = request_body.decode("utf-8", "replace")
    if isinstance(response_body, bytes):
        response_body = response_body.decode("utf-8", "replace")
    return [registration_id, kind[:40], method[:10], path[:1000], json.dumps(logged_headers), _truncate(request_body),
            status, _truncate(response_body), note[:200], timezone.now()]


def log_exchange(**fields: Any) -> None:
    """Write one request-log entry now (one raw INSERT). The scores fast path batches instead (`sandbox_lms.fast`)."""
    row = log_row(**fields)
    row[-1] = connection.ops.adapt_datetimefield_value(row[-1])
    with connection.cursor() as cursor:
        cursor.execute(_LOG_INSERT_SQL, row)


# --- Process-memory caches (the hot path of the scores endpoint) -------------------------------

CONFIG_TTL = 1.0  # seconds a registration's settings are trusted in memory (other processes may change them)
_lock = threading.Lock()
_tokens: dict[str, TokenInfo] = {}
_registrations: dict[int, tuple[float, SandboxRegistration]] = {}
_line_items: dict[int, tuple[float, LineItemInfo]] = {}
_buckets: dict[int, list[float]] = {}
_tool_jwks: dict[str, dict[str, Any]] = {}


def forget_caches() -> None:
    """Called after every write that changes what the hot path trusts (in this process)."""
    with _lock:
        _registrations.clear()
        _line_items.clear()
        _tokens.clear()


def reset_rate_limits() -> None:
    with _lock:
        _buckets.clear()


def cached_registration(registration_id: int) -> SandboxRegistration:
    now = time.monotonic()
    hit = _registrations.get(registration_id)
    if hit and hit[0] > now:
        return hit[1]
    registration = SandboxRegistration.objects.select_related("platform").get(pk=registration_id)
    _registrations[registration_id] = (now + CONFIG_TTL, registration)
    return registration


@dataclass(frozen=True)
class TokenInfo:
    registration_id: int
    deployment_id: str
    scopes: frozenset[str]
    expires_at: float


@dataclass(frozen=True)
class LineItemInfo:
    id: int
    course_id: int
    score_maximum: float
    allowed_attempts: int | None
    registration_id: int
    deployment_id: str


def _line_item_info(line_item_id: int) -> LineItemInfo:
    now = time.monotonic()
    hit = _line_items.get(line_item_id)
    if hit and hit[0] > now:
        return hit[1]
    row = (
        SandboxLineItem.objects.filter(pk=line_item_id)
        .values_list(
            "course_id", "score_maximum", "allowed_attempts", "course__deployment__registration_id",
            "course__deployment__deployment_id",
        )
        .first()
    )
    if row is None:
        raise ApiError(404, {"error": "Line item not found"})
    info = LineItemInfo(line_item_id, *row)
    _line_items[line_item_id] = (now + CONFIG_TTL, info)
    return info


# --- Faults and throttling ----------------------------------------------------------------------


def _socket_of(environ: dict[str, Any]) -> socket.socket | None:
    sock = environ.get("gunicorn.socket")
    if sock is not None:
        return sock
    # Django's dev/live server: LimitedStream(s) → BufferedReader → SocketIO → socket.
    stream = environ.get("wsgi.input")
    for _ in range(8):
        if isinstance(stream, socket.socket):
            return stream
        if hasattr(stream, "_read"):
            stream = getattr(stream._read, "__self__", None)
        elif hasattr(stream, "raw"):
            stream = stream.raw
        elif hasattr(stream, "_sock"):
            stream = stream._sock
        else:
            return None
    return None


def drop_connection(environ: dict[str, Any]) -> None:
    sock = _socket_of(environ)
    if sock is None:
        raise RuntimeError("Cannot find the client socket to drop")
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def apply_faults(registration: SandboxRegistration) -> None:
    """Raise what the registration's faults say this request meets; sleep for added latency."""
    faults = registration.faults
    if not faults:
        return
    start, end = faults.get("outage_start"), faults.get("outage_end")
    if start or end:
        now = timezone.now()
        if (not start or datetime.fromisoformat(start) <= now) and (not end or now < datetime.fromisoformat(end)):
            raise ApiError(
                503, "503 Service Unavailable (sandbox outage window)", content_type="text/plain",
                headers={"Retry-After": "60"},
            )
    if random.random() < float(faults.get("drop_rate", 0)):
        raise DropConnection()
    if random.random() < float(faults.get("timeout_rate", 0)):
        time.sleep(float(faults.get("timeout_seconds", 30)))
        raise ApiError(504, "504 Gateway Timeout", content_type="text/plain")
    if faults.get("latency_ms"):
        time.sleep(float(faults["latency_ms"]) / 1000)
    if random.random() < float(faults.get("error_rate", 0)):
        status = int(faults.get("error_status", 503))
        raise ApiError(status, f"{status} Server Error (sandbox fault)", content_type="text/plain")
    if random.random() < float(faults.get("throttle_rate", 0)):
        raise ApiError(
            429, "429 Too Many Requests", content_type="text/plain",
            headers={"Retry-After": str(faults.get("retry_after", 5))},
        )


def throttle(registration: SandboxRegistration) -> dict[str, str]:
    """Canvas's leaky bucket per registration (per server process): 403 when it would overflow."""
    if registration.profile != Profile.CANVAS or not registration.rate_limit_enabled:
        return {}
    capacity, leak, cost = (
        registration.rate_limit_capacity, registration.rate_limit_leak_per_second, registration.rate_limit_cost,
    )
    now = time.monotonic()
    with _lock:
        level, last = _buckets.get(registration.pk, [0.0, now])
        level = max(0.0, level - (now - last) * leak)
        if level + cost > capacity:
            _buckets[registration.pk] = [level, now]
            raise ApiError(
                403, "403 Forbidden (Rate Limit Exceeded)", content_type="text/plain",
                headers={"X-Rate-Limit-Remaining": f"{max(capacity - level, 0):.1f}", "X-Request-Cost": f"{cost:.1f}"},
            )
        level += cost
        _buckets[registration.pk] = [level, now]
    return {"X-Rate-Limit-Remaining": f"{capacity - level:.1f}", "X-Request-Cost": f"{cost:.1f}"}


# --- Launches -----------------------------------------------------------------------------------


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


def line_item_url(line_item: SandboxLineItem | LineItemInfo, registration: SandboxRegistration) -> str:
    url = registration.platform.url(f"api/lineitems/{line_item.id}/lineitem")
    return url + (f"?type_id={registration.pk}" if registration.profile == Profile.MOODLE else "")


def line_items_url(course: SandboxCourse, registration: SandboxRegistration) -> str:
    url = registration.platform.url(f"api/courses/{course.pk}/lineitems")
    return url + (f"?type_id={registration.pk}" if registration.profile == Profile.MOODLE else "")


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
    if custom:
        claims[LTI + "custom"] = {
            name: substitute(value=str(value), launch=launch, profile=registration.profile)
            for name, value in custom.items()
        }
    return claims


# --- The tool's keys ----------------------------------------------------------------------------

_http = requests.Session()


def tool_public_key(registration: SandboxRegistration, kid: str | None) -> Any:
    """The tool's public key for `kid`: from its JWKS URL (cached, refetched on an unknown kid)."""

    def find(jwks: dict[str, Any]) -> dict[str, Any] | None:
        keys = jwks.get("keys", [])
        for key in keys:
            if kid is None or key.get("kid") == kid:
                return key
        return None

    if registration.jwks_url:
        key = find(_tool_jwks.get(registration.jwks_url, {}))
        if key is None:
            try:
                response = _http.get(registration.jwks_url, timeout=5)
                response.raise_for_status()
                _tool_jwks[registration.jwks_url] = response.json()
            except (requests.RequestException, ValueError) as error:
                raise Refusal(f"Cannot fetch the tool's JWKS from {registration.jwks_url}: {error}") from error
            key = find(_tool_jwks[registration.jwks_url])
    else:
        key = find(registration.tool_public_jwks or {})
    if key is None:
        raise Refusal(f"No key with kid {kid!r} in the tool's JWKS")
    return jwt.algorithms.RSAAlgorithm.from_jwk(json.dumps(key))


def _nulls(value: Any, path: str = "") -> list[str]:
    if value is None:
        return [path or "(root)"]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _nulls(v, f"{path}.{k}" if path else k)]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _nulls(v, f"{path}[{i}]")]
    return []


# --- Deep linking -------------------------------------------------------------------------------


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


# --- Token endpoint -----------------------------------------------------------------------------


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
    granted = [scope for scope in requested if scope in SUPPORTED_SCOPES]
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


# --- AGS: scores --------------------------------------------------------------------------------


def _parse_timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def record_score(
    *, line_item_id: int, info: TokenInfo, registration: SandboxRegistration, content_type: str, body: bytes,
    query: dict[str, str], db: Any = None,
) -> dict[str, Any]:
    """POST {lineitem}/scores as the registration's LMS would take it; returns the answer body."""
    profile = registration.profile
    require_scope(info, SCOPE_SCORE)
    check_moodle_type_id(registration, query)
    item = _line_item_info(line_item_id)
    check_context(info=info, registration=registration, course_registration_id=item.registration_id,
                  course_deployment_id=item.deployment_id)
    incorrect = _error(profile, 400, "Incorrect score received")  # Moodle's one answer for a bad score
    if content_type.split(";")[0].strip() != SCORE_MEDIA_TYPE:
        raise incorrect if profile == Profile.MOODLE else _error(
            profile, 415, f"Content-Type must be {SCORE_MEDIA_TYPE}"
        )
    try:
        score = json.loads(body)
        if not isinstance(score, dict):
            raise ValueError
    except ValueError as error:
        raise incorrect if profile == Profile.MOODLE else _error(profile, 400, "The body is not a JSON object") from error
    for name in ("userId", "activityProgress", "gradingProgress", "timestamp"):
        if not score.get(name):
            raise incorrect if profile == Profile.MOODLE else _error(profile, 400, f"{name} is required")
    timestamp = _parse_timestamp(score["timestamp"])
    if timestamp is None:
        raise incorrect if profile == Profile.MOODLE else _error(
            profile, 400, "timestamp must be ISO 8601 with a timezone"
        )
    given = score.get("scoreGiven")
    maximum = score.get("scoreMaximum")
    if given is not None:
        given = _number(given)
        if maximum is None and profile == Profile.MOODLE:
            maximum = 1.0  # Moodle's default
        maximum = _number(maximum)
        if given is None or given < 0 or maximum is None or maximum <= 0:
            if profile == Profile.MOODLE:
                raise incorrect
            raise _error(profile, 422 if profile == Profile.CANVAS else 400,
                         "scoreGiven must be a number ≥ 0 sent with scoreMaximum > 0")
    graded_states = ("FullyGraded", "PendingManual") if profile == Profile.CANVAS else ("FullyGraded",)
    counts = score["gradingProgress"] in graded_states and given is not None
    result = given * item.score_maximum / maximum if counts else None

    extension = score.get(CANVAS_SUBMISSION) or {}
    new_submission = bool(profile == Profile.CANVAS and extension.get(
        "new_submission", extension.get("submission_type") != "none"
    ))
    db = db or DjangoDB()
    # Accepted when the stored timestamp is below this bound (strictly, or not above it for Canvas).
    if profile == Profile.MOODLE:
        bound, accept_equal = timestamp.replace(microsecond=0), False  # Moodle compares whole seconds
    else:
        bound, accept_equal = timestamp, profile == Profile.CANVAS
    attempts = item.allowed_attempts if new_submission else None
    sql = _upsert_sql(db.vendor, accept_equal, attempts is not None)
    params: list[Any] = [
        item.id, given if counts else None, maximum if counts else None, result,
        str(score["activityProgress"])[:20], str(score["gradingProgress"])[:20], str(score.get("comment") or ""),
        db.datetime(timestamp), db.datetime(timezone.now()), int(new_submission),
        item.course_id, str(score["userId"]), *GRADABLE_ROLES,
    ]
    if attempts is not None:
        params.append(attempts)
    params.append(db.datetime(bound))
    if attempts is not None:
        params.append(attempts)
    for _ in range(3):
        # The hot path: one statement takes the score, or takes nothing when a rule refuses it.
        rows = db.execute(sql, params)
        if rows:
            user_id = rows[0][0]
            break
        # Refused (the rare path): say why, as the LMS would.
        rows = db.execute(_ENROLMENT_SQL, [item.course_id, score["userId"]])
        if not rows or rows[0][1] not in GRADABLE_ROLES:
            if profile == Profile.MOODLE:
                raise incorrect
            raise _error(profile, 422, "User not found in course or is not a student")
        stored = db.execute(_RESULT_SQL, [item.id, rows[0][0]])
        submissions = 0
        if stored:
            _check_timestamp(profile, _as_datetime(stored[0][0]), timestamp, score["timestamp"])
            submissions = stored[0][1]
        if attempts is not None and submissions >= attempts:
            raise ApiError(422, {"errors": {
                "type": "unprocessable_entity",
                "message": "The maximum number of allowed attempts has been reached for this submission",
            }})
        # Nothing refuses it now: the cell changed between the two statements; take the score again.
    else:
        raise _error(profile, 409, "The score conflicted with concurrent changes; send it again")
    line_url = line_item_url(item, registration)
    return {"resultUrl": _suffix(line_url, f"/results/{user_id}")}


class DjangoDB:
    """Runs the scores statements on Django's connection (the fast path brings a pool of its own)."""

    @property
    def vendor(self) -> str:
        return connection.vendor

    def datetime(self, value: datetime) -> Any:
        return connection.ops.adapt_datetimefield_value(value)

    def execute(self, sql: str, params: list[Any]) -> list[tuple]:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall() if cursor.description else []


_ENROLMENT_SQL = (
    "SELECT e.user_id, e.role FROM sandbox_lms_sandboxenrolment e"
    " JOIN sandbox_lms_sandboxuser u ON u.id = e.user_id WHERE e.course_id = %s AND u.sub = %s"
)
_RESULT_SQL = 'SELECT "timestamp", submission_count FROM sandbox_lms_sandboxresult WHERE line_item_id = %s AND user_id = %s'
_upsert_cache: dict[tuple[str, bool, bool], str] = {}


def _upsert_sql(vendor: str, accept_equal: bool, limit_attempts: bool) -> str:
    """INSERT … SELECT (the enrolment) … ON CONFLICT DO UPDATE … WHERE (the timestamp and attempts rules) RETURNING.

    Parameters: line item, score_given, score_maximum, result, activity_progress, grading_progress,
    comment, timestamp, updated_at, new submission (0/1), course, user sub, the gradable roles,
    [allowed attempts], the timestamp bound, [allowed attempts]."""
    key = (vendor, accept_equal, limit_attempts)
    sql = _upsert_cache.get(key)
    if sql is None:
        pg = vendor == "postgresql"  # INSERT … SELECT needs typed parameters on PostgreSQL
        f, ts, i = ("::float8", "::timestamptz", "::integer") if pg else ("", "", "")
        roles = ", ".join(["%s"] * len(GRADABLE_ROLES))
        sql = (
            "INSERT INTO sandbox_lms_sandboxresult (line_item_id, user_id, score_given, score_maximum, result,"
            ' activity_progress, grading_progress, comment, "timestamp", updated_at, submission_count)'
            f" SELECT %s{i}, e.user_id, %s{f}, %s{f}, %s{f}, %s, %s, %s, %s{ts}, %s{ts}, %s{i}"
            " FROM sandbox_lms_sandboxenrolment e JOIN sandbox_lms_sandboxuser u ON u.id = e.user_id"
            f" WHERE e.course_id = %s{i} AND u.sub = %s AND e.role IN ({roles})"
            + (f" AND %s{i} > 0" if limit_attempts else "")
            + " ON CONFLICT (line_item_id, user_id) DO UPDATE SET score_given = excluded.score_given,"
            " score_maximum = excluded.score_maximum, result = excluded.result,"
            " activity_progress = excluded.activity_progress, grading_progress = excluded.grading_progress,"
            ' comment = excluded.comment, "timestamp" = excluded."timestamp", updated_at = excluded.updated_at,'
            " submission_count = sandbox_lms_sandboxresult.submission_count + excluded.submission_count"
            f' WHERE sandbox_lms_sandboxresult."timestamp" {"<=" if accept_equal else "<"} %s{ts}'
            + (f" AND sandbox_lms_sandboxresult.submission_count < %s{i}" if limit_attempts else "")
            + " RETURNING user_id"
        )
        _upsert_cache[key] = sql
    return sql


@dataclass
class Exchange:
    """The answer of the scores endpoint to one request, for whichever server front sends it."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    reason: str | None = None
    registration_id: int | None = None
    dropped: bool = False  # fault injection: close the connection without an answer


def _payload(body: Any) -> bytes:
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    return (body if isinstance(body, str) else json.dumps(body)).encode()


def scores_exchange(
    *, line_item_id: int, authorization: str | None, content_type: str, body: bytes, query: dict[str, str],
    db: Any = None,
) -> Exchange:
    """POST {lineitem}/scores from the bearer token to the answer: faults, throttling, then the score.

    Shared by the Django view and the fast WSGI front (`sandbox_lms.fast`); the caller logs the exchange."""
    registration = None
    extra: dict[str, str] = {}
    try:
        info = authenticate(authorization)
        registration = cached_registration(info.registration_id)
        apply_faults(registration)
        extra = throttle(registration)
        answer = record_score(line_item_id=line_item_id, info=info, registration=registration,
                              content_type=content_type, body=body, query=query, db=db)
        exchange = Exchange(200, _payload(answer))
    except ApiError as error:
        exchange = Exchange(error.status, _payload(error.body), error.content_type, dict(error.headers), error.reason)
    except DropConnection:
        return Exchange(499, b"", registration_id=registration.pk, dropped=True)
    if registration is not None:
        exchange.registration_id = registration.pk
        for name, value in extra.items():
            exchange.headers.setdefault(name, value)
    return exchange


def _as_datetime(value: Any) -> datetime:
    """A timestamp column read by a raw cursor (SQLite gives text)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=dt_timezone.utc)


def _suffix(url: str, suffix: str) -> str:
    path, sep, query = url.partition("?")
    return f"{path}{suffix}{sep}{query}"


def _check_timestamp(profile: str, stored: datetime, incoming: datetime, raw: str) -> None:
    if profile == Profile.MOODLE:
        if math.floor(stored.timestamp()) >= math.floor(incoming.timestamp()):
            raise _error(Profile.MOODLE, 409, "Refusing score with an earlier timestamp")
    elif profile == Profile.CANVAS:
        if incoming < stored:
            stored_text = stored.astimezone(dt_timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            raise _error(Profile.CANVAS, 400, f"Provided timestamp of {raw} before last updated timestamp of {stored_text}")
    elif incoming <= stored:
        raise _error(profile, 409, "The score's timestamp is not later than the last one")


# --- AGS: line items and results ----------------------------------------------------------------


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


# --- Gradebook, copy, move ----------------------------------------------------------------------


@dataclass
class GradebookRow:
    user: SandboxUser
    role: str
    cells: list[SandboxResult | None]


def gradebook(*, course: SandboxCourse) -> tuple[list[SandboxLineItem], list[GradebookRow]]:
    """Students × line items of a course, each cell the stored result (or None)."""
    line_items = list(course.line_items.order_by("id"))
    results = {
        (r.line_item_id, r.user_id): r for r in SandboxResult.objects.filter(line_item__course=course)
    }
    rows = []
    for enrolment in course.enrolments.select_related("user").filter(role__in=GRADABLE_ROLES).order_by("user__name"):
        rows.append(GradebookRow(
            enrolment.user, enrolment.role, [results.get((item.pk, enrolment.user_id)) for item in line_items]
        ))
    return line_items, rows


def grades(*, line_item: SandboxLineItem) -> dict[str, SandboxResult]:
    """A line item's stored results keyed by the user's `sub`."""
    return {r.user.sub: r for r in line_item.results.select_related("user")}


def copy_course(
    *, course: SandboxCourse, title: str = "", deployment: SandboxDeployment | None = None, with_enrolments: bool = True
) -> SandboxCourse:
    """Copy a course like Canvas does: new context id, new resource link ids, line items copied
    (without results), history variables filled. Unlike a real LMS the enrolments come along by
    default, so the copy can be tried at once."""
    with transaction.atomic():
        copy = SandboxCourse.objects.create(
            platform=course.platform,
            deployment=deployment or course.deployment,
            title=title or f"{course.title} (copy)",
            label=course.label,
            context_id=uuid.uuid4().hex,
            history=",".join(filter(None, [course.context_id, course.history])),
            previous_course_ids=",".join(filter(None, [str(course.pk), course.previous_course_ids])),
            starts_at=course.starts_at,
            ends_at=course.ends_at,
        )
        links = {}
        for link in course.resource_links.order_by("id"):
            links[link.pk] = SandboxResourceLink.objects.create(
                course=copy, title=link.title, url=link.url, custom=link.custom,
                resource_link_id=uuid.uuid4().hex,
                history=",".join(filter(None, [link.resource_link_id, link.history])),
            )
        for item in course.line_items.order_by("id"):
            SandboxLineItem.objects.create(
                course=copy, resource_link=links.get(item.resource_link_id), label=item.label,
                score_maximum=item.score_maximum, resource_id=item.resource_id, tag=item.tag,
                allowed_attempts=item.allowed_attempts, start_date_time=item.start_date_time,
                end_date_time=item.end_date_time,
            )
        if with_enrolments:
            SandboxEnrolment.objects.bulk_create(
                SandboxEnrolment(course=copy, user_id=e.user_id, role=e.role) for e in course.enrolments.all()
            )
    return copy


def move_course(*, course: SandboxCourse, deployment: SandboxDeployment) -> SandboxCourse:
    """Move a course to another deployment (a Canvas sub-account)."""
    course.deployment = deployment
    course.save(update_fields=["deployment"])
    forget_caches()
    return course
