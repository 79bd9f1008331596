"""Log lines: one JSON object per line in production (LOG_FORMAT=json, the default when DEBUG is off),
plain text in `make run`; each with the ids of what it is about — the request (X-Request-ID, kept or
made), institution, registration, delivery, resync job — bound for the duration of a request or task.
Secrets are masked before formatting (institutions.redaction.RedactSecrets on the same handlers).
"""
from __future__ import annotations

import contextlib
import contextvars
import datetime
import json
import logging
import re
import uuid
from collections.abc import Iterator
from typing import Any

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("log_context", default={})
CONTEXT_FIELDS = ("request_id", "institution", "registration", "delivery", "job")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


@contextlib.contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add ids to every log line written inside the block (in this thread or task)."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Copies the bound ids onto each record (record.request_id, …), for any formatter."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _context.get().items():
            setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the bound ids, and the exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, default=str, ensure_ascii=False)


class RequestIdMiddleware:
    """Binds the request's id for its log lines: the proxy's X-Request-ID when well formed, else a new one;
    sent back in the answer's X-Request-ID so a support ticket can quote it."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        given = request.META.get("HTTP_X_REQUEST_ID", "")
        request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        with bind(request_id=request_id):
            response = self.get_response(request)
        response["X-Request-ID"] = request_id
        return response


def use_log_format(logger: logging.Logger, **_: Any) -> None:
    """A Celery worker replaces the root logger's handlers: give them our format and the bound ids too."""
    from django.conf import settings

    for handler in logger.handlers:
        if settings.LOG_FORMAT == "json":
            handler.setFormatter(JsonFormatter())
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())


try:
    from celery.signals import after_setup_logger, after_setup_task_logger

    after_setup_logger.connect(use_log_format, weak=False)
    after_setup_task_logger.connect(use_log_format, weak=False)
except ImportError:  # pragma: no cover
    pass
