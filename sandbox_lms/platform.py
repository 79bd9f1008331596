"""The platform and its registry: signing keys and JWKS, tool registrations, deployments, courses,
users, resource links and line items, the URLs it publishes, and the tool's public keys it fetches.
"""
from __future__ import annotations

import json
import random
import uuid
from datetime import datetime, timedelta
from typing import Any

import jwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.utils import timezone

from .caches import LineItemInfo, forget_caches
from .models import (
    Profile,
    SandboxCourse,
    SandboxDeployment,
    SandboxEnrolment,
    SandboxKey,
    SandboxLineItem,
    SandboxPlatform,
    SandboxRegistration,
    SandboxResourceLink,
    SandboxUser,
)
from .protocol import Refusal


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


# --- The URLs it publishes ---------------------------------------------------------------------


def line_item_url(line_item: SandboxLineItem | LineItemInfo, registration: SandboxRegistration) -> str:
    url = registration.platform.url(f"api/lineitems/{line_item.id}/lineitem")
    return url + (f"?type_id={registration.pk}" if registration.profile == Profile.MOODLE else "")


def line_items_url(course: SandboxCourse, registration: SandboxRegistration) -> str:
    url = registration.platform.url(f"api/courses/{course.pk}/lineitems")
    return url + (f"?type_id={registration.pk}" if registration.profile == Profile.MOODLE else "")


def _suffix(url: str, suffix: str) -> str:
    path, sep, query = url.partition("?")
    return f"{path}{suffix}{sep}{query}"


# --- The tool's keys ----------------------------------------------------------------------------

_http = requests.Session()
_tool_jwks: dict[str, dict[str, Any]] = {}
# Strict platforms' copies: (JWKS URL, client id) → (fetched at, JWKS).
_strict_tool_jwks: dict[tuple[str, str], tuple[datetime, dict[str, Any]]] = {}


def tool_public_key(registration: SandboxRegistration, kid: str | None) -> Any:
    """The tool's public key for `kid`, from its JWKS URL, cached as real platforms do.

    By default as Moodle: the JWKS is kept and refetched only when a signature's kid is not in it.
    With `faults["jwks_cache_seconds"]` as a strict platform (pylti1p3's fixed-TTL cache, platforms that
    cache for hours): the copy is kept that long (by `timezone.now()`) and an unknown kid is refused, not
    refetched — a tool that signs with a key it published too late is refused there.
    """

    def find(jwks: dict[str, Any]) -> dict[str, Any] | None:
        keys = jwks.get("keys", [])
        for key in keys:
            if kid is None or key.get("kid") == kid:
                return key
        return None

    def fetch() -> dict[str, Any]:
        try:
            response = _http.get(registration.jwks_url, timeout=5)
            response.raise_for_status()
            return response.json()
        except (requests.RequestException, ValueError) as error:
            raise Refusal(f"Cannot fetch the tool's JWKS from {registration.jwks_url}: {error}") from error

    strict_seconds = (registration.faults or {}).get("jwks_cache_seconds")
    if registration.jwks_url and strict_seconds:
        now, slot = timezone.now(), (registration.jwks_url, registration.client_id)
        fetched = _strict_tool_jwks.get(slot)
        if fetched is None or now - fetched[0] >= timedelta(seconds=float(strict_seconds)):
            fetched = _strict_tool_jwks[slot] = (now, fetch())
        key = find(fetched[1])
    elif registration.jwks_url:
        key = find(_tool_jwks.get(registration.jwks_url, {}))
        if key is None:
            _tool_jwks[registration.jwks_url] = fetch()
            key = find(_tool_jwks[registration.jwks_url])
    else:
        key = find(registration.tool_public_jwks or {})
    if key is None:
        raise Refusal(f"No key with kid {kid!r} in the tool's JWKS")
    return jwt.algorithms.RSAAlgorithm.from_jwk(json.dumps(key))
