"""The LMS's context copy notices (LTI Platform Notification Service 1.0), received at our handler.

Canvas and D2L POST `{"notices": [{"jwt": …}]}` to the handler we registered (gradesync registers it,
after a launch that offered PNS). Each notice is a JWT signed with the platform's launch keys: it is
verified as completely as a launch (signature, issuer and audience of an active registration, exp and
iat, a deployment of ours that is active and owned, notice type and shape) before anything is written.
The whole POST is accepted or refused: a refusal is a 4xx with a reason and writes nothing. Canvas
does not retry a notice, so nothing here may answer 500 for what a platform sends.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any

import jwt
from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from lti_tool.models import LtiDeployment, LtiRegistration

from gradesync import api as gradesync_api
from institutions.services import record_context_copy_notice

from ..models import Launch
from .platform_keys import decode_platform_token
from .refusals import has_unsafe_characters, shown

logger = logging.getLogger(__name__)

LTI = "https://purl.imsglobal.org/spec/lti/claim/"
NOTICE_CLAIM = LTI + "notice"
ORIGIN_CONTEXTS_CLAIM = LTI + "origin_contexts"
CONTEXT_COPY_NOTICE = "LtiContextCopyNotice"

MAX_BODY_BYTES = 512 * 1024
MAX_NOTICES = 20
MAX_TOKEN_CHARACTERS = 64 * 1024
MAX_ID = 255
MAX_AUDIENCES = 10
MAX_ORIGIN_CONTEXTS = 10
IAT_LEEWAY_SECONDS = 5
MAX_NOTICE_AGE_SECONDS = 3600


class NoticeRefused(Exception):
    """A notice (or a POST of notices) we do not accept, with a reason the platform's admin can act on."""

    def __init__(self, reason: str, *, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class VerifiedNotice:
    deployment: LtiDeployment
    notice_id: str
    context_id: str
    origin_context_ids: list[str]
    claims: dict[str, Any]


def _is_identifier(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_ID and not has_unsafe_characters(value)


def _unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise NoticeRefused("A notice is not a valid JWT.")
    if header.get("alg") != "RS256":
        raise NoticeRefused(f"A notice is signed with {shown(header.get('alg'))}; only RS256 is accepted.", status=401)
    if not _is_identifier(header.get("kid")):
        raise NoticeRefused("A notice's header names no key (kid), or not as a short string.", status=401)
    for name in ("iat", "exp", "nbf"):
        value = claims.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not math.isfinite(value))
        ):
            raise NoticeRefused(f"A notice's {name} is not a number of seconds since 1970.", status=401)
    return header, claims


def _registration_for(claims: dict[str, Any]) -> LtiRegistration:
    """The active registration the notice is addressed to: its issuer, and every audience ours."""
    issuer, audiences = claims.get("iss"), claims.get("aud")
    if isinstance(audiences, str):
        audiences = [audiences]
    if (
        not _is_identifier(issuer) or not isinstance(audiences, list) or not audiences
        or len(audiences) > MAX_AUDIENCES or not all(map(_is_identifier, audiences))
    ):
        raise NoticeRefused("A notice's issuer or audience is missing or malformed.", status=401)
    trusted = {r.client_id: r for r in LtiRegistration.objects.active().filter(issuer=issuer, client_id__in=audiences)}
    if not trusted or len(trusted) != len(set(audiences)):
        raise NoticeRefused(
            f"A notice is from {shown(issuer)} for client id {', '.join(shown(a) for a in audiences[:3])}, "
            "which is not an active registration of this tool (or names another tool too).",
            status=401,
        )
    azp = claims.get("azp")
    if azp is not None and azp not in trusted:
        raise NoticeRefused(f"A notice's azp {shown(azp)} is not our client id.", status=401)
    return trusted[azp] if azp is not None else trusted[audiences[0]]


def _deployment_for(registration: LtiRegistration, claims: dict[str, Any]) -> LtiDeployment:
    deployment_id = claims.get(LTI + "deployment_id")
    if not _is_identifier(deployment_id):
        raise NoticeRefused("A notice names no deployment_id (a string of at most 255 characters).")
    deployment = (
        LtiDeployment.objects.select_related("ownership__institution", "registration")
        .filter(registration=registration, deployment_id=deployment_id)
        .first()
    )
    ownership = getattr(deployment, "ownership", None) if deployment is not None else None
    if deployment is None or not deployment.is_active or ownership is None or not ownership.institution.is_active:
        raise NoticeRefused(
            f"A notice is for deployment {shown(deployment_id)}, which is not an active deployment of an "
            "institution in this tool.",
            status=403,
        )
    return deployment


def _notice_facts(claims: dict[str, Any]) -> tuple[str, str, list[str]]:
    """The notice's id, the new course's context id and the courses it was copied from."""
    if claims.get(LTI + "version") != "1.3.0":
        raise NoticeRefused("A notice is not LTI 1.3.0 (its version claim).")
    notice = claims.get(NOTICE_CLAIM)
    if not isinstance(notice, dict):
        raise NoticeRefused("A notice has no notice claim (id, timestamp, type).")
    if notice.get("type") != CONTEXT_COPY_NOTICE:
        raise NoticeRefused(
            f"This handler receives only {CONTEXT_COPY_NOTICE}, not {shown(notice.get('type'))}; "
            "register another handler for other notice types."
        )
    if not _is_identifier(notice.get("id")):
        raise NoticeRefused("A notice's id is missing or not a string of at most 255 characters.")
    context = claims.get(LTI + "context")
    if not isinstance(context, dict) or not _is_identifier(context.get("id")):
        raise NoticeRefused("A context copy notice names no new course (context id).")
    origins = claims.get(ORIGIN_CONTEXTS_CLAIM, [])
    if (
        not isinstance(origins, list) or len(origins) > MAX_ORIGIN_CONTEXTS
        or not all(_is_identifier(origin) for origin in origins)
    ):
        raise NoticeRefused(
            f"A context copy notice's origin_contexts must be a list of at most {MAX_ORIGIN_CONTEXTS} context ids."
        )
    return notice["id"], context["id"], list(dict.fromkeys(origins))


def verify_notice(token: Any) -> VerifiedNotice:
    """Every check of one notice JWT; raises NoticeRefused with the first that fails. Writes nothing."""
    if not isinstance(token, str) or not token:
        raise NoticeRefused('Each notice must be {"jwt": "<a signed JWT>"}.')
    if len(token) > MAX_TOKEN_CHARACTERS:
        raise NoticeRefused(f"A notice is larger than {MAX_TOKEN_CHARACTERS // 1024} KB.", status=413)
    header, unverified = _unverified(token)
    registration = _registration_for(unverified)
    claims = decode_platform_token(
        token, header["kid"], registration, required=["exp", "iat", "iss", "aud"],
        max_age=MAX_NOTICE_AGE_SECONDS, leeway=IAT_LEEWAY_SECONDS, refused=NoticeRefused, what="A notice",
    )
    deployment = _deployment_for(registration, claims)
    notice_id, context_id, origins = _notice_facts(claims)
    return VerifiedNotice(deployment, notice_id, context_id, origins, claims)


def _notice_tokens(request: HttpRequest) -> list[Any]:
    """The JWTs of a POST of notices, its size and shape checked."""
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > MAX_BODY_BYTES:
        raise NoticeRefused(f"The notices are larger than {MAX_BODY_BYTES // 1024} KB.", status=413)
    body = request.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        raise NoticeRefused(f"The notices are larger than {MAX_BODY_BYTES // 1024} KB.", status=413)
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise NoticeRefused('The body is not JSON: send {"notices": [{"jwt": …}]}.')
    notices = data.get("notices") if isinstance(data, dict) else None
    if not isinstance(notices, list) or not notices:
        raise NoticeRefused('The body must be {"notices": [{"jwt": …}, …]} with at least one notice.')
    if len(notices) > MAX_NOTICES:
        raise NoticeRefused(f"At most {MAX_NOTICES} notices in one POST.", status=413)
    return [notice.get("jwt") if isinstance(notice, dict) else None for notice in notices]


def receive_copy_notices(request: HttpRequest) -> tuple[int, int]:
    """Verify every notice of the POST, then keep them all (each once). Returns (received, new)."""
    verified = [verify_notice(token) for token in _notice_tokens(request)]
    new = 0
    with transaction.atomic():
        for notice in verified:
            _, created = record_context_copy_notice(
                deployment=notice.deployment, notice_id=notice.notice_id, context_id=notice.context_id,
                origin_context_ids=notice.origin_context_ids, claims=notice.claims,
            )
            new += created
    return len(verified), new


@csrf_exempt
def notice_handler(request: HttpRequest) -> JsonResponse:
    """Our PNS notice handler: public (the platform sends no credentials), the JWTs are the proof."""
    if request.method != "POST":
        return JsonResponse({"error": "This address receives LMS notices by POST."}, status=405, headers={"Allow": "POST"})
    try:
        received, new = receive_copy_notices(request)
    except NoticeRefused as refusal:
        logger.info("copy notice refused: %s", refusal.reason)
        return JsonResponse({"error": refusal.reason}, status=refusal.status)
    return JsonResponse({"received": received, "new": new})


def register_for_copy_notices(request: HttpRequest, launch: Launch) -> None:
    """After a launch whose LMS offers context copy notices, have our handler registered there (in the background)."""
    gradesync_api.register_for_copy_notices(
        deployment=launch.deployment, handler_url=request.build_absolute_uri(reverse("lti-notices"))
    )
