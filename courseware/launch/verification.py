"""Verify an LTI 1.3 launch (id_token) completely before anything is written.

pylti1p3 leaves gaps (it does not verify `aud`/`azp`, allows no `iat` skew, never consumes
nonces, and django-lti creates deployments while validating); this module closes them and
owns the order: every check of the 1EdTech Security Framework §5.1.3 first, then the tenant
checks. Each refusal carries a reason a person can read and an HTTP status.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from django.core.cache import cache
from django.http import HttpRequest
from lti_tool.models import LtiDeployment, LtiPlatformInstance, LtiRegistration
from lti_tool.utils import DjangoToolConfig
from pylti1p3.exception import LtiException
from pylti1p3.contrib.django import DjangoCacheDataStorage, DjangoMessageLaunch
from pylti1p3.session import SessionService

from .claims import check_claim_shapes
from .platform_keys import PlatformKeyError, platform_key
from .refusals import LaunchRefused

IAT_LEEWAY_SECONDS = 5
MAX_TOKEN_AGE_SECONDS = 3600
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


def _unverified(id_token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        header = jwt.get_unverified_header(id_token)
        claims = jwt.decode(id_token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise LaunchRefused("The launch token is not a valid JWT.")
    return header, claims


def _registration_for(claims: dict[str, Any]) -> LtiRegistration:
    issuer = claims.get("iss")
    audiences = claims.get("aud")
    if isinstance(audiences, str):
        audiences = [audiences]
    if not issuer or not isinstance(audiences, list) or not audiences:
        raise LaunchRefused("The launch token has no issuer or no audience.", status=401)
    registrations = list(LtiRegistration.objects.active().filter(issuer=issuer, client_id__in=audiences))
    if not registrations:
        raise LaunchRefused(
            f"This tool is not registered for the LMS {issuer} with client id {', '.join(map(str, audiences))}. "
            "Ask your LMS administrator to contact the vendor's integration team.",
            status=401,
        )
    if len(audiences) > 1:
        # Several audiences: the one we act for is named by azp (Security Framework §5.1.3 step 4-5).
        azp = claims.get("azp")
        matching = [r for r in registrations if r.client_id == azp]
        if not matching:
            raise LaunchRefused("The launch token names several audiences and its azp is not our client id.", status=401)
        return matching[0]
    return registrations[0]


def _check_state(request: HttpRequest) -> None:
    state = request.POST.get("state", "")
    if not state:
        raise LaunchRefused("The launch has no state: it did not start with a login from this tool.", status=401)
    # pylti1p3's login stored the state in a short-lived cookie named after itself.
    if request.COOKIES.get(f"lti1p3-{state}") != state:
        raise LaunchRefused(
            "This browser did not keep the login cookie (third-party cookies may be blocked in the LMS frame). "
            "Open the activity in a new window and try again.",
            status=401,
        )


def _message_launch(request: HttpRequest) -> DjangoMessageLaunch:
    """pylti1p3's launch object, for its nonce store and, once verified, for django-lti's sync."""
    try:
        return DjangoMessageLaunch(request, DjangoToolConfig(), launch_data_storage=DjangoCacheDataStorage())
    except LtiException:
        raise LaunchRefused(
            "This browser did not keep the login session cookie (third-party cookies may be blocked in the "
            "LMS frame). Open the activity in a new window and try again.",
            status=401,
        )


def _consume_nonce(message_launch: DjangoMessageLaunch, nonce: str, expires_at: int) -> None:
    session: SessionService = message_launch.get_session_service()
    if not session.check_nonce(nonce):
        raise LaunchRefused("The launch's nonce was not issued by this tool's login.", status=401)
    # Consumed once: a replayed id_token finds the nonce already used.
    ttl = max(expires_at - int(time.time()), 0) + IAT_LEEWAY_SECONDS + 60
    if not cache.add(f"lti:nonce-used:{nonce}", 1, ttl):
        raise LaunchRefused("This launch was already used (a replayed token). Launch again from the LMS.", status=401)


def verify_launch(request: HttpRequest) -> VerifiedLaunch:
    """All Security Framework checks of the id_token, then the deployment's status."""
    id_token = request.POST.get("id_token", "")
    if not id_token:
        raise LaunchRefused("The LMS sent no id_token: this address is only for LTI launches.")
    header, unverified = _unverified(id_token)
    if header.get("alg") != "RS256":
        raise LaunchRefused(f"The launch token is signed with {header.get('alg')!r}; only RS256 is accepted.", status=401)
    if not header.get("kid"):
        raise LaunchRefused("The launch token's header names no key (kid).", status=401)
    _check_state(request)
    registration = _registration_for(unverified)
    try:
        key = platform_key(registration, header["kid"])
    except PlatformKeyError as error:
        raise LaunchRefused(str(error), status=401)
    try:
        claims = jwt.decode(
            id_token,
            key,
            algorithms=["RS256"],
            audience=registration.client_id,
            issuer=registration.issuer,
            leeway=IAT_LEEWAY_SECONDS,
            options={"require": ["exp", "iat", "iss", "aud", "nonce"]},
        )
    except jwt.ExpiredSignatureError:
        raise LaunchRefused("The launch token has expired. Launch again from the LMS.", status=401)
    except jwt.ImmatureSignatureError:
        raise LaunchRefused("The launch token was issued in the future (check the LMS clock).", status=401)
    except jwt.InvalidSignatureError:
        raise LaunchRefused("The launch token's signature does not match the LMS's key (forged or altered).", status=401)
    except jwt.MissingRequiredClaimError as error:
        raise LaunchRefused(f"The launch token lacks the required claim {error.claim!r}.", status=401)
    except jwt.PyJWTError as error:
        raise LaunchRefused(f"The launch token is not valid: {error}.", status=401)
    if claims["iat"] < time.time() - MAX_TOKEN_AGE_SECONDS:
        raise LaunchRefused("The launch token is too old. Launch again from the LMS.", status=401)
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    if len(audiences) > 1 and claims.get("azp") != registration.client_id:
        raise LaunchRefused("The launch token names several audiences and its azp is not our client id.", status=401)
    _check_message(claims)
    check_claim_shapes(claims)
    message_launch = _message_launch(request)
    _consume_nonce(message_launch, claims["nonce"], int(claims["exp"]))
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
    if message_type not in MESSAGE_TYPES:
        raise LaunchRefused(f"This tool does not handle {message_type or 'unnamed'} messages.")
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
    if not isinstance(claim, dict) or not claim.get("guid"):
        return None
    instance, _ = LtiPlatformInstance.objects.update_or_create(
        issuer=registration.issuer,
        guid=str(claim["guid"])[:255],
        defaults={
            key: str(claim.get(key) or "")[:500]
            for key in ("name", "url", "contact_email", "description", "product_family_code", "version")
        },
    )
    return instance


def _deployment_for(registration: LtiRegistration, claims: dict[str, Any]) -> LtiDeployment:
    deployment_id = str(claims[LTI + "deployment_id"])
    return_url = ((claims.get(LTI + "launch_presentation") or {}).get("return_url")) or ""
    deployment = (
        LtiDeployment.objects.select_related("ownership__institution")
        .filter(registration=registration, deployment_id=deployment_id)
        .first()
    )
    if deployment is None:
        # The token is genuine: show the integration team a pending deployment to assign.
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
