"""The platform's Notification Service (LTI PNS 1.0, as Canvas offers it).

Launches of a PNS profile (Canvas) carry the PNS claim naming `pns_url`. The tool registers one
handler per notice type there (PUT `{notice_type, handler}` with a token for the noticehandlers
scope; `""` removes it; the handler must be on the tool's own host). When a course is copied, the
platform POSTs `{"notices": [{"jwt": …}]}` with an LtiContextCopyNotice signed like its launches to
the registered handler: once, best effort — Canvas does not retry a notice the tool did not take.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import requests
from django.utils import timezone

from .caches import TokenInfo, forget_caches
from .models import Profile, SandboxCourse, SandboxRegistration
from .platform import sign
from .protocol import LTI, SCOPE_NOTICEHANDLERS, ApiError, _error
from .request_logging import log_exchange
from .tokens import require_scope

CONTEXT_COPY_NOTICE = "LtiContextCopyNotice"
NOTICE_TYPES = ["LtiHelloWorldNotice", CONTEXT_COPY_NOTICE]
HANDLER_MAX = 500
SEND_TIMEOUT = (3.05, 10)
NOTICE_LIFETIME_SECONDS = 3600

_http = requests.Session()
_http.headers["User-Agent"] = "SandboxLMS/1.0 (PNS)"


def offers_pns(registration: SandboxRegistration) -> bool:
    return registration.profile == Profile.CANVAS


def pns_url(registration: SandboxRegistration) -> str:
    return registration.platform.url(f"api/lti/registrations/{registration.pk}/notice-handlers")


def pns_claim(registration: SandboxRegistration) -> dict[str, Any]:
    """The launch claim by which the platform offers its notices (Canvas's shape)."""
    return {
        "service_versions": ["1.0"],
        "platform_notification_service_url": pns_url(registration),
        "scope": [SCOPE_NOTICEHANDLERS],
        "notice_types_supported": NOTICE_TYPES,
    }


def _registration_for_service(registration_pk: int, info: TokenInfo) -> SandboxRegistration:
    registration = SandboxRegistration.objects.select_related("platform").filter(pk=registration_pk).first()
    if registration is None or not offers_pns(registration):
        raise ApiError(404, {"errors": [{"message": "The specified resource does not exist."}]})
    if info.registration_id != registration.pk:
        raise _error(Profile.CANVAS, 401, "Access Token not linked to this tool")
    require_scope(info, SCOPE_NOTICEHANDLERS)
    return registration


def notice_handlers(*, registration_pk: int, info: TokenInfo) -> dict[str, Any]:
    """GET: the tool's handlers, every notice type listed (`""` when none)."""
    registration = _registration_for_service(registration_pk, info)
    handlers = registration.notice_handlers or {}
    return {
        "client_id": registration.client_id,
        "deployment_id": info.deployment_id,
        "notice_handlers": [{"notice_type": kind, "handler": handlers.get(kind, "")} for kind in NOTICE_TYPES],
    }


def register_handler(*, registration_pk: int, info: TokenInfo, body: bytes) -> dict[str, Any]:
    """PUT: set (or with `""` remove) the tool's handler of one notice type."""
    registration = _registration_for_service(registration_pk, info)
    try:
        data = json.loads(body)
    except ValueError as error:
        raise _error(Profile.CANVAS, 400, "The body must be JSON") from error
    if not isinstance(data, dict) or data.get("notice_type") not in NOTICE_TYPES:
        raise _error(Profile.CANVAS, 400, f"notice_type must be one of {NOTICE_TYPES}")
    handler = data.get("handler")
    if not isinstance(handler, str) or len(handler) > HANDLER_MAX:
        raise _error(Profile.CANVAS, 400, "handler must be a URL (or \"\" to remove it)")
    if handler:
        parts = urlsplit(handler)
        tool_host = urlsplit(registration.launch_url).hostname
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _error(Profile.CANVAS, 400, "handler must be an http(s) URL")
        if parts.hostname != tool_host:
            raise _error(Profile.CANVAS, 400, f"handler must be on the tool's domain ({tool_host})")
    handlers = dict(registration.notice_handlers or {})
    if handler:
        handlers[data["notice_type"]] = handler
    else:
        handlers.pop(data["notice_type"], None)
    SandboxRegistration.objects.filter(pk=registration.pk).update(notice_handlers=handlers)
    forget_caches()
    return {"notice_type": data["notice_type"], "handler": handler}


def context_copy_notice_claims(*, copy: SandboxCourse, source: SandboxCourse) -> dict[str, Any]:
    registration = copy.deployment.registration
    now = int(time.time())
    return {
        "iss": registration.platform.issuer,
        "aud": registration.client_id,
        "azp": registration.client_id,
        "iat": now,
        "exp": now + NOTICE_LIFETIME_SECONDS,
        "nonce": uuid.uuid4().hex,
        LTI + "version": "1.3.0",
        LTI + "deployment_id": copy.deployment.deployment_id,
        LTI + "notice": {
            "id": str(uuid.uuid4()),
            "timestamp": timezone.now().isoformat(timespec="seconds"),
            "type": CONTEXT_COPY_NOTICE,
        },
        LTI + "context": {
            "id": copy.context_id,
            "label": copy.label,
            "title": copy.title,
            "type": ["http://purl.imsglobal.org/vocab/lis/v2/course#CourseOffering"],
        },
        LTI + "origin_contexts": [source.context_id],
    }


def send_context_copy_notice(*, copy: SandboxCourse, source: SandboxCourse) -> int | None:
    """POST the copy's LtiContextCopyNotice to the tool's handler, if it registered one. Best effort,
    no retry; the exchange is in the request log (kind "copy_notice"). Returns the tool's status."""
    # Read now: the handler may have been registered since the caller loaded the course.
    registration = SandboxRegistration.objects.select_related("platform").get(pk=copy.deployment.registration_id)
    handler = (registration.notice_handlers or {}).get(CONTEXT_COPY_NOTICE)
    if not offers_pns(registration) or not handler:
        return None
    body = json.dumps({"notices": [{"jwt": sign(registration.platform, context_copy_notice_claims(copy=copy, source=source))}]})
    headers = {"Content-Type": "application/json"}
    try:
        response = _http.post(handler, data=body, headers=headers, timeout=SEND_TIMEOUT)
    except requests.RequestException as error:
        log_exchange(registration_id=registration.pk, kind="copy_notice", method="POST", path=handler, headers=headers,
                     request_body=body, status=None, response_body="", note=f"not delivered: {type(error).__name__}")
        return None
    log_exchange(registration_id=registration.pk, kind="copy_notice", method="POST", path=handler, headers=headers,
                 request_body=body, status=response.status_code, response_body=response.text)
    return response.status_code
