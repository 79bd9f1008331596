"""Verify an LTI 1.3 launch (id_token) completely before anything is written.

pylti1p3 leaves gaps (it does not verify `aud`/`azp`, allows no `iat` skew, never consumes
nonces, and django-lti creates deployments while validating); this module closes them and
owns the order: the POST's shape, then every check of the 1EdTech Security Framework §5.1.3
(the token must also answer the login of its state: that login's nonce, registration and
target_link_uri, see login.py), then the tenant checks. Each refusal carries a reason a person
can read and an HTTP status. The unverified claims are read only to find the registration and
key; the same payload is then verified, so checks made on them hold for the signed token.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from django.core.cache import cache
from django.db import transaction
from django.http import HttpRequest
from lti_tool.models import LtiDeployment, LtiPlatformInstance, LtiRegistration
from lti_tool.utils import DjangoToolConfig
from pylti1p3.exception import LtiException
from pylti1p3.contrib.django import DjangoCacheDataStorage, DjangoMessageLaunch

from .claims import check_claim_shapes
from .login import asked_at_login
from .platform_keys import decode_platform_token
from .refusals import LaunchRefused, has_unsafe_characters, posted_form, shown

IAT_LEEWAY_SECONDS = 5
MAX_TOKEN_AGE_SECONDS = 3600
# Real id_tokens are 2-10 KB (a Canvas token with many custom parameters ~12 KB).
MAX_TOKEN_CHARACTERS = 64 * 1024
MAX_ID = 255
MAX_KID = 255
MAX_AUDIENCES = 10
STATE = re.compile(r"state-[0-9a-f-]{36}")  # what pylti1p3's login issues: "state-" + a uuid4
LTI = "https://purl.imsglobal.org/spec/lti/claim/"
DL = "https://purl.imsglobal.org/spec/lti-dl/claim/"
RESOURCE_LINK_REQUEST = "LtiResourceLinkRequest"
DEEP_LINKING_REQUEST = "LtiDeepLinkingRequest"
MESSAGE_TYPES = {RESOURCE_LINK_REQUEST, DEEP_LINKING_REQUEST}


@dataclass
class VerifiedLaunch:
    registration: LtiRegistration
    deployment: LtiDeployment
    claims: dict[str, Any]
    header: dict[str, Any] = field(default_factory=dict)
    message_launch: DjangoMessageLaunch | None = None

    def claim(self, name: str, default: Any = None) -> Any:
        return self.claims.get(LTI + name, default)

    @property
    def message_type(self) -> str:
        return self.claim("message_type", "")

    @property
    def return_url(self) -> str:
        return (self.claim("launch_presentation") or {}).get("return_url") or ""

    @property
    def custom(self) -> dict[str, str]:
        custom = self.claim("custom") or {}
        return {k: v for k, v in custom.items() if isinstance(v, str)} if isinstance(custom, dict) else {}


def _posted_once(form: Any, name: str) -> str:
    values = form.getlist(name)
    if len(values) > 1:
        raise LaunchRefused(f"The launch carries {len(values)} values of {name}; an LMS sends exactly one.")
    return values[0] if values else ""


def _unverified(id_token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims before the signature is checked: only to find the key and registration."""
    try:
        header = jwt.get_unverified_header(id_token)
        claims = jwt.decode(id_token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise LaunchRefused("The launch token is not a valid JWT.")
    if header.get("alg") != "RS256":
        raise LaunchRefused(f"The launch token is signed with {shown(header.get('alg'))}; only RS256 is accepted.", status=401)
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > MAX_KID:
        raise LaunchRefused("The launch token's header names no key (kid), or not as a short string.", status=401)
    for name in ("iat", "exp", "nbf"):
        value = claims.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not math.isfinite(value))
        ):
            raise LaunchRefused(f"The launch token's {name} is not a number of seconds since 1970.", status=401)
    return header, claims


def _is_identifier(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_ID and not has_unsafe_characters(value)


def _registration_for(claims: dict[str, Any]) -> LtiRegistration:
    """The registration the token is for: every audience trusted, azp ours (Security Framework §5.1.3 steps 3-5)."""
    issuer = claims.get("iss")
    audiences = claims.get("aud")
    if not issuer or not audiences:
        raise LaunchRefused("The launch token has no issuer or no audience.", status=401)
    if isinstance(audiences, str):
        audiences = [audiences]
    if (
        not _is_identifier(issuer)
        or not isinstance(audiences, list)
        or len(audiences) > MAX_AUDIENCES
        or not all(map(_is_identifier, audiences))
    ):
        raise LaunchRefused(
            f"The launch token's issuer or audience is malformed: they must be strings (at most {MAX_AUDIENCES} "
            f"audiences) of at most {MAX_ID} characters.",
            status=401,
        )
    azp = claims.get("azp")
    if azp is not None and not _is_identifier(azp):
        raise LaunchRefused("The launch token's azp is not a client id (a short string).", status=401)
    trusted = {r.client_id: r for r in LtiRegistration.objects.active().filter(issuer=issuer, client_id__in=audiences)}
    if not trusted:
        raise LaunchRefused(
            f"This tool is not registered for the LMS {shown(issuer)} with client id "
            f"{', '.join(shown(a) for a in audiences[:3])}. "
            "Ask your LMS administrator to contact the vendor's integration team.",
            status=401,
        )
    untrusted = [audience for audience in audiences if audience not in trusted]
    if untrusted:
        raise LaunchRefused(
            f"The launch token is also addressed to {shown(untrusted[0])}, an audience this tool does not trust "
            "for that LMS (a token for another tool). Ask your LMS administrator to check the tool's client id.",
            status=401,
        )
    if len(audiences) > 1 and azp is None:
        raise LaunchRefused("The launch token names several audiences and no azp naming our client id.", status=401)
    registration = trusted.get(azp) if azp is not None else trusted[audiences[0]]
    if registration is None:
        raise LaunchRefused(f"The launch token's azp {shown(azp)} is not our client id.", status=401)
    return registration


def _state(form: Any, request: HttpRequest) -> str:
    state = _posted_once(form, "state")
    if not state:
        raise LaunchRefused("The launch has no state: it did not start with a login from this tool.", status=401)
    if not STATE.fullmatch(state):
        raise LaunchRefused("The launch's state was not issued by this tool's login.", status=401)
    # pylti1p3's login stored the state in a short-lived cookie named after itself.
    if request.COOKIES.get(f"lti1p3-{state}") != state:
        raise LaunchRefused(
            "This browser did not keep the login cookie (third-party cookies may be blocked in the LMS frame). "
            "Open the activity in a new window and try again.",
            status=401,
        )
    return state


def _message_launch(request: HttpRequest) -> DjangoMessageLaunch:
    """pylti1p3's launch object, for what the login stored with the state and, once verified, for django-lti."""
    try:
        return DjangoMessageLaunch(request, DjangoToolConfig(), launch_data_storage=DjangoCacheDataStorage())
    except LtiException:
        raise LaunchRefused(
            "This browser did not keep the login session cookie (third-party cookies may be blocked in the "
            "LMS frame). Open the activity in a new window and try again.",
            status=401,
        )


def _check_login(message_launch: DjangoMessageLaunch, registration: LtiRegistration, claims: dict[str, Any]) -> None:
    """The token answers the login of this state: its nonce, registration and target_link_uri."""
    asked = asked_at_login(message_launch)
    if asked is None:
        raise LaunchRefused(
            "The login that started this launch has expired or was not made by this tool. Launch again from the LMS.",
            status=401,
        )
    if claims["nonce"] != asked.get("nonce"):
        raise LaunchRefused("The launch's nonce was not issued by this tool's login for this launch (state).", status=401)
    if (asked.get("issuer"), asked.get("client_id")) != (registration.issuer, registration.client_id):
        raise LaunchRefused("The launch token is for another registration than the login that started it.", status=401)
    target = claims.get(LTI + "target_link_uri")
    # A deep-linking request may omit target_link_uri (its message type says where to go); when sent, it must match.
    if (target is not None or claims.get(LTI + "message_type") == RESOURCE_LINK_REQUEST) and target != asked.get("target_link_uri"):
        raise LaunchRefused(
            f"The launch's target_link_uri {shown(target)} is not the one its login asked for "
            f"({shown(asked.get('target_link_uri'))}).",
            status=401,
        )


def _consume_nonce(nonce: str, expires_at: float) -> None:
    # Consumed once: a replayed id_token finds the nonce already used. Remembered as long as the token
    # could still pass the exp and iat checks.
    now = time.time()
    # Compared before subtracting: an exp of 10**400 is a valid integer but no float.
    remaining = MAX_TOKEN_AGE_SECONDS if expires_at > now + MAX_TOKEN_AGE_SECONDS else max(expires_at - now, 0)
    ttl = int(remaining) + IAT_LEEWAY_SECONDS + 60
    if not cache.add(f"lti:nonce-used:{nonce}", 1, ttl):
        raise LaunchRefused("This launch was already used (a replayed token). Launch again from the LMS.", status=401)


def verify_launch(request: HttpRequest) -> VerifiedLaunch:
    """All Security Framework checks of the id_token, then the deployment's status. Writes nothing but,
    for a genuine token naming an unknown deployment, that pending deployment."""
    form = posted_form(request)
    id_token = _posted_once(form, "id_token")
    if not id_token:
        raise LaunchRefused("The LMS sent no id_token: this address is only for LTI launches.")
    if len(id_token) > MAX_TOKEN_CHARACTERS:
        raise LaunchRefused(
            f"The launch token is {len(id_token) // 1024} KB; this tool accepts at most {MAX_TOKEN_CHARACTERS // 1024} KB.",
            status=413,
        )
    header, unverified = _unverified(id_token)
    _state(form, request)
    registration = _registration_for(unverified)
    claims = decode_platform_token(
        id_token, header["kid"], registration, required=["exp", "iat", "iss", "aud", "nonce"],
        max_age=MAX_TOKEN_AGE_SECONDS, leeway=IAT_LEEWAY_SECONDS, refused=LaunchRefused,
        what="The launch token", again=" Launch again from the LMS.",
    )
    _check_message(claims)
    check_claim_shapes(claims)
    message_launch = _message_launch(request)
    _check_login(message_launch, registration, claims)
    _consume_nonce(claims["nonce"], claims["exp"])
    deployment = _deployment_for(registration, claims)
    # Hand pylti1p3 the verified token, so django-lti's launch wrapper can read it.
    message_launch.set_jwt({"header": header, "body": claims})
    message_launch._validated = True
    message_launch._registration = registration.to_registration()
    message_launch._tool_config.registration = registration
    message_launch._tool_config.deployment = deployment
    return VerifiedLaunch(
        registration=registration, deployment=deployment, claims=claims, header=header, message_launch=message_launch
    )


def _check_message(claims: dict[str, Any]) -> None:
    message_type = claims.get(LTI + "message_type")
    if not isinstance(message_type, str) or message_type not in MESSAGE_TYPES:
        named = shown(message_type)[1:-1] if isinstance(message_type, str) and message_type else "unnamed"
        raise LaunchRefused(f"This tool does not handle {named} messages.")
    if claims.get(LTI + "version") != "1.3.0":
        raise LaunchRefused("Only LTI 1.3.0 launches are accepted.")
    if not claims.get(LTI + "deployment_id"):
        raise LaunchRefused("The launch names no deployment_id.")
    if not claims.get("sub"):
        raise LaunchRefused("The launch names no user (sub): anonymous launches are not supported.")
    if not isinstance(claims.get(LTI + "roles"), list):
        raise LaunchRefused("The launch has no roles claim.")
    context = claims.get(LTI + "context")
    if not isinstance(context, dict) or not context.get("id"):
        raise LaunchRefused("The launch names no course (context).")
    if message_type == RESOURCE_LINK_REQUEST:
        link = claims.get(LTI + "resource_link")
        if not isinstance(link, dict) or not link.get("id"):
            raise LaunchRefused("The launch names no resource link.")
        if not claims.get(LTI + "target_link_uri"):
            raise LaunchRefused("The launch has no target_link_uri.")
    else:
        settings = claims.get(DL + "deep_linking_settings")
        if not isinstance(settings, dict) or not settings.get("deep_link_return_url"):
            raise LaunchRefused("The deep-linking request has no deep_link_return_url.")


def _platform_instance(registration: LtiRegistration, claims: dict[str, Any]) -> LtiPlatformInstance | None:
    """What the launch says of the LMS instance, so the integration team knows whose deployment is pending."""
    claim = claims.get(LTI + "tool_platform")
    if not isinstance(claim, dict) or not _is_identifier(claim.get("guid")):
        return None
    # Created, never rewritten: a launch may describe its own new pending deployment, nothing more.
    instance, _ = LtiPlatformInstance.objects.get_or_create(
        issuer=registration.issuer,
        guid=claim["guid"],
        defaults={
            key: value[:500]
            for key in ("name", "url", "contact_email", "description", "product_family_code", "version")
            if isinstance(value := claim.get(key), str) and not has_unsafe_characters(value)
        },
    )
    return instance


def _deployment_for(registration: LtiRegistration, claims: dict[str, Any]) -> LtiDeployment:
    deployment_id = claims[LTI + "deployment_id"]
    if not _is_identifier(deployment_id):  # claims.py checks it too; this guards the one write below
        raise LaunchRefused(f"The launch's deployment_id must be a string of at most {MAX_ID} characters.")
    return_url = ((claims.get(LTI + "launch_presentation") or {}).get("return_url")) or ""
    deployment = (
        LtiDeployment.objects.select_related("ownership__institution")
        .filter(registration=registration, deployment_id=deployment_id)
        .first()
    )
    if deployment is None:
        # The token is genuine: show the integration team a pending deployment to assign. This is the
        # one write a refused launch makes (with the platform instance that describes it).
        with transaction.atomic():
            deployment, _ = LtiDeployment.objects.get_or_create(
                registration=registration,
                deployment_id=deployment_id,
                defaults={"is_active": False, "platform_instance": _platform_instance(registration, claims)},
            )
        raise LaunchRefused(
            "This course's LMS deployment is not set up in the tool yet. The vendor's integration team "
            f"has been shown deployment {deployment_id}; ask your LMS administrator to contact them.",
            status=403,
            return_url=return_url,
            pending=True,
        )
    ownership = getattr(deployment, "ownership", None)
    if not deployment.is_active or ownership is None:
        raise LaunchRefused(
            f"This course's LMS deployment ({deployment_id}) is waiting for activation by the vendor's "
            "integration team.",
            status=403,
            return_url=return_url,
            pending=True,
        )
    if not ownership.institution.is_active:
        raise LaunchRefused(
            f"The institution {ownership.institution} is not active in this tool. Contact the vendor's support.",
            status=403,
            return_url=return_url,
        )
    return deployment
