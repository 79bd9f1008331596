"""`{{ text|redact_secrets }}`: text that came from an LMS, shown with any token or key in it masked."""
from __future__ import annotations

from django import template

from institutions.redaction import redact

register = template.Library()


@register.filter
def redact_secrets(value: object) -> str:
    return redact("" if value is None else str(value))
