"""The words of LTI 1.3, AGS and NRPS the sandbox speaks (claims, scopes, media types, role URIs),
the refusals a request meets, shaped as each LMS profile answers them, and the readers of wire values.
"""
from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

from .models import Profile, Role


LTI = "https://purl.imsglobal.org/spec/lti/claim/"
AGS_CLAIM = "https://purl.imsglobal.org/spec/lti-ags/claim/endpoint"
NRPS_CLAIM = "https://purl.imsglobal.org/spec/lti-nrps/claim/namesroleservice"
PNS_CLAIM = "https://purl.imsglobal.org/spec/lti/claim/platformnotificationservice"
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
SCOPE_NOTICEHANDLERS = "https://purl.imsglobal.org/spec/lti/scope/noticehandlers"  # PNS (Canvas)
AGS_SCOPES = [SCOPE_LINEITEM, SCOPE_LINEITEM_READONLY, SCOPE_RESULT, SCOPE_SCORE]
SUPPORTED_SCOPES = [*AGS_SCOPES, SCOPE_NRPS, SCOPE_NOTICEHANDLERS]

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


def _error(profile: str, status: int, message: str, *, moodle_body: str | None = None) -> ApiError:
    """The shape of an error body per LMS family.

    Moodle puts its reason in the HTTP status line only; `moodle_body` is what the Moodle service
    had set as its body before refusing (its scores endpoint: `[]`)."""
    if profile == Profile.MOODLE:
        body = message if moodle_body is None else moodle_body
        return ApiError(status, body, content_type="text/plain", reason=message)
    if profile == Profile.CANVAS:
        return ApiError(status, {"errors": [{"message": message}]})
    return ApiError(status, {"error": message})


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
