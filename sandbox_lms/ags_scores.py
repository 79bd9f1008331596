"""AGS scores: POST {lineitem}/scores from the bearer token to the answer, every profile's rules,
one upsert statement that takes the score or nothing; shared by the view and the fast path.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from datetime import timezone as dt_timezone
from typing import Any

from django.db import connection
from django.utils import timezone

from .behaviour import answer_at, apply_faults, throttle
from .caches import TokenInfo, _line_item_info, cached_registration
from .models import GRADABLE_ROLES, Profile, SandboxRegistration
from .platform import _suffix, line_item_url
from .protocol import (
    CANVAS_SUBMISSION,
    SCOPE_SCORE,
    SCORE_MEDIA_TYPE,
    ApiError,
    DropConnection,
    _error,
    _number,
    _parse_timestamp,
)
from .tokens import authenticate, check_context, check_moodle_type_id, require_scope


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
    incorrect = _score_error(profile, 400, "Incorrect score received")  # Moodle's one answer for a bad score
    if content_type.split(";")[0].strip() != SCORE_MEDIA_TYPE:
        raise incorrect if profile == Profile.MOODLE else _score_error(
            profile, 415, f"Content-Type must be {SCORE_MEDIA_TYPE}"
        )
    try:
        score = json.loads(body)
        if not isinstance(score, dict):
            raise ValueError
    except ValueError as error:
        raise incorrect if profile == Profile.MOODLE else _score_error(profile, 400, "The body is not a JSON object") from error
    for name in ("userId", "activityProgress", "gradingProgress", "timestamp"):
        if not score.get(name):
            raise incorrect if profile == Profile.MOODLE else _score_error(profile, 400, f"{name} is required")
    timestamp = _parse_timestamp(score["timestamp"])
    if timestamp is None:
        raise incorrect if profile == Profile.MOODLE else _score_error(
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
            raise _score_error(profile, 422 if profile == Profile.CANVAS else 400,
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
            raise _score_error(profile, 422, "User not found in course or is not a student")
        stored = db.execute(_RESULT_SQL, [item.id, rows[0][0]])
        submissions = 0
        if stored:
            _check_timestamp(profile, _as_datetime(stored[0][0]), timestamp, score["timestamp"],
                             f"for item {item.id} and user {score['userId']}")
            submissions = stored[0][1]
        if attempts is not None and submissions >= attempts:
            raise ApiError(422, {"errors": {
                "type": "unprocessable_entity",
                "message": "The maximum number of allowed attempts has been reached for this submission",
            }})
        # Nothing refuses it now: the cell changed between the two statements; take the score again.
    else:
        raise _score_error(profile, 409, "The score conflicted with concurrent changes; send it again")
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
    arrived = time.monotonic()
    try:
        info = authenticate(authorization)
        registration = cached_registration(info.registration_id)
        apply_faults(registration, answer_later=True)
        extra = throttle(registration)
        answer = record_score(line_item_id=line_item_id, info=info, registration=registration,
                              content_type=content_type, body=body, query=query, db=db)
        answer_at(registration, arrived)
        exchange = Exchange(200, _payload(answer))
    except ApiError as error:
        answer_at(registration, arrived)
        exchange = Exchange(error.status, _payload(error.body), error.content_type, dict(error.headers), error.reason)
    except DropConnection:
        return Exchange(499, b"", registration_id=registration.pk, dropped=True)
    if registration is not None:
        exchange.registration_id = registration.pk
        for name, value in extra.items():
            exchange.headers.setdefault(name, value)
    return exchange


def _score_error(profile: str, status: int, message: str) -> ApiError:
    """A refusal of a score: Moodle's scores endpoint sets its body to `[]` first, so it answers `[]`
    with the reason only in the status line (`400 Incorrect score received`)."""
    return _error(profile, status, message, moodle_body="[]")


def _as_datetime(value: Any) -> datetime:
    """A timestamp column read by a raw cursor (SQLite gives text)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=dt_timezone.utc)


def _check_timestamp(profile: str, stored: datetime, incoming: datetime, raw: str, which: str) -> None:
    if profile == Profile.MOODLE:
        if math.floor(stored.timestamp()) >= math.floor(incoming.timestamp()):
            raise _score_error(Profile.MOODLE, 409, f"Refusing score with an earlier timestamp {which}")
    elif profile == Profile.CANVAS:
        if incoming < stored:
            stored_text = stored.astimezone(dt_timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            raise _score_error(Profile.CANVAS, 400, f"Provided timestamp of {raw} before last updated timestamp of {stored_text}")
    elif incoming <= stored:
        raise _score_error(profile, 409, "The score's timestamp is not later than the last one")
