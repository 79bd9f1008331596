"""Errors to an error tracker: Sentry, on when SENTRY_DSN is set (nothing is loaded or sent otherwise).

Django and Celery integrations (an exception in a request or a task is one event, with the route or
task name); no personal data (`send_default_pii` off: no cookies, no Authorization header, no user
e-mail or address) and no stack-frame variables (a sender's frames hold bearer tokens); every text an
event carries passes through institutions.redaction, as log lines do.
"""
from __future__ import annotations

from typing import Any


def _redacted(value: Any) -> Any:
    from institutions.redaction import redact

    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: _redacted(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_redacted(item) for item in value]
    return value


def before_send(event: dict, hint: dict) -> dict:
    """Mask private keys, bearer tokens and signed assertions anywhere in the event."""
    return _redacted(event)


def init_sentry(*, dsn: str, environment: str, release: str, traces_sample_rate: float) -> None:
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.django import DjangoIntegration

    sentry_sdk.init(
        dsn=dsn,
        environment=environment,
        release=release or None,
        integrations=[DjangoIntegration(), CeleryIntegration()],
        send_default_pii=False,
        include_local_variables=False,
        max_request_body_size="never",  # LTI launches post signed id_tokens
        before_send=before_send,
        before_send_transaction=before_send,
        traces_sample_rate=traces_sample_rate,
    )
