"""The request log: one row per exchange with the tool (headers trimmed, bodies truncated),
written by one raw INSERT; the scores fast path batches the same rows (`sandbox_lms.fast`).
"""
from __future__ import annotations

import json
from typing import Any

from django.db import connection
from django.utils import timezone


LOG_BODY_LIMIT = 4000


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
