"""Secrets never written out: `redact` masks private keys, bearer tokens and signed assertions in text.

`RedactSecrets` is the logging filter on every handler (config/settings.py LOGGING, and the
Celery worker's own handlers, which replace Django's when a worker starts). The admin uses
`redact` for text that came from an LMS (an exchange's answer) and for audit values.

Plain Python on purpose: logging is configured before Django's apps are loaded.
"""
from __future__ import annotations

import logging
import re
from typing import Any

REDACTED = "[redacted]"

_PATTERNS = [
    # A PEM private key of any kind (RSA, EC, encrypted…), also cut short or with escaped newlines.
    (re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S),
     f"{REDACTED} private key"),
    # Authorization: Bearer <token>
    (re.compile(r"(\bBearer\s+)[A-Za-z0-9\-._~+/]+=*", re.I), rf"\1{REDACTED}"),
    # access_token / refresh_token / id_token / client_assertion / client_secret, as JSON, a Python
    # dict's repr or a form body: "access_token": "…", 'client_assertion': '…', client_assertion=…
    (re.compile(r"""(\b(?:access_token|refresh_token|id_token|client_assertion|client_secret)['"]?\s*[:=]\s*['"]?)"""
                r"""[^'"&\s,;}]+""", re.I), rf"\1{REDACTED}"),
    # Any other signed JWT (a client assertion, an id_token) wherever it appears, glued to a word too
    # ("x_eyJ…": no word boundary there).
    (re.compile(r"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), f"{REDACTED} jwt"),
]


def redact(text: str) -> str:
    """The text with every private key, bearer token and signed assertion masked."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def contains_secret(text: str) -> bool:
    return redact(text) != text


class RedactSecrets(logging.Filter):
    """Masks secrets in a record's message (msg % args), its traceback and its stack; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logging's problem to report, not ours
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def attach_to_handlers(logger: logging.Logger, **_: Any) -> None:
    """Put the filter on every handler of a logger (once each)."""
    for handler in logger.handlers:
        if not any(isinstance(f, RedactSecrets) for f in handler.filters):
            handler.addFilter(RedactSecrets())


try:  # A Celery worker replaces the root logger's handlers with its own: filter those too.
    from celery.signals import after_setup_logger, after_setup_task_logger

    after_setup_logger.connect(attach_to_handlers, weak=False)
    after_setup_task_logger.connect(attach_to_handlers, weak=False)
except ImportError:  # pragma: no cover - Celery is a requirement; this keeps the module plain Python
    pass
